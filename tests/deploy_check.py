#!/usr/bin/env python3
"""The deployment files' checks (run by tests/deploy_check.sh, which installs the tools).

Each check prints `ok: NAME` or `FAILED: NAME` with why; the last line is
`deploy_check: N passed, N failed`. Processes started here (redis-server, tflock
server) are stopped by pid before the script ends, whatever happens.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILES = sorted((DEPLOY / "compose").glob("*/docker-compose.yml"))
K8S = DEPLOY / "kubernetes"
K8S_VERSION = "1.29"
TFLOCK = os.environ.get("DEPLOY_CHECK_TFLOCK", str(ROOT / "target/release/tflock"))
PROMTOOL = os.environ.get("DEPLOY_CHECK_PROMTOOL", "promtool")
# Values for the secrets the files take from the environment.
DUMMY_ENV = {
    "REDIS_PASSWORD": "deploy-check-redis-password",
    "TFLOCK_API_TOKEN": "deploy-check-api-token",
    "TFLOCK_ADMIN_TOKEN": "deploy-check-admin-token",
}

CHECKS = []
STARTED: list[subprocess.Popen] = []


def check(fn):
    CHECKS.append(fn)
    return fn


def run(cmd, *, env=None, cwd=None, timeout=120, ok=True, input=None):
    """Runs a command; with ok=True a non-zero exit fails the check with its output."""
    p = subprocess.run(
        cmd, env=env, cwd=cwd, timeout=timeout, input=input,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    if ok and p.returncode != 0:
        raise AssertionError(f"`{' '.join(map(str, cmd))}` exited {p.returncode}:\n{p.stdout}")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_port() -> int:
    """A free port for a cluster node: its bus port (+10000) must be free too and at
    below the ephemeral range (32768 and up), where a client connection may hold it."""
    import random
    for _ in range(200):
        port = random.randint(12000, 21999)
        ok = True
        for q in (port, port + 10000):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", q))
                except OSError:
                    ok = False
        if ok:
            return port
    raise AssertionError("no free port pair for a cluster node")


def wait_until(what, pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop(p: subprocess.Popen):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=35)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def start(cmd, *, env=None, cwd=None, log=None) -> subprocess.Popen:
    out = open(log, "w") if log else subprocess.DEVNULL
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                         stderr=subprocess.STDOUT)
    STARTED.append(p)
    return p


# ---------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions(path: Path):
    """(stage index, instruction, arguments) in order, continuation lines joined."""
    lines, cur = [], ""
    for raw in path.read_text().splitlines():
        s = raw.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        lines.append(cur)
        cur = ""
    out, stage = [], -1
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            stage += 1
        out.append((stage, word, rest.strip()))
    return out


def exec_form(args: str):
    """JSON (exec) form of CMD/ENTRYPOINT/HEALTHCHECK CMD as a list, else None."""
    args = args.strip()
    if args.startswith("["):
        return json.loads(args)
    return None


def image_env(ins):
    """The ENV of the last stage as a dict."""
    last = max(s for s, _, _ in ins)
    env = {}
    for stage, word, rest in ins:
        if stage == last and word == "ENV":
            for tok in shlex.split(rest):
                k, _, v = tok.partition("=")
                env[k] = v
    return env


@check
def dockerfile_hadolint():
    p = run(["hadolint", "--no-color", "--failure-threshold", "style", str(ROOT / "Dockerfile")], ok=False)
    assert p.returncode == 0, f"hadolint found problems:\n{p.stdout}"
    return "hadolint: no findings"


@check
def dockerfile_structure():
    ins = dockerfile_instructions(ROOT / "Dockerfile")
    froms = [(s, r) for s, w, r in ins if w == "FROM"]
    assert len(froms) == 2, f"two stages expected, got {froms}"
    assert re.match(r"rust:\$\{RUST_VERSION\}\S* AS build$", froms[0][1]), froms[0]
    assert re.match(r"debian:\$\{DEBIAN_RELEASE\}-slim AS runtime$", froms[1][1]), froms[1]
    args = {r.split("=")[0]: r.split("=")[1] for s, w, r in ins if w == "ARG" and "=" in r}
    # The image's Rust is at least the workspace's rust-version.
    want = re.search(r'rust-version = "([\d.]+)"', (ROOT / "Cargo.toml").read_text()).group(1)
    have = tuple(int(x) for x in args["RUST_VERSION"].split("."))
    assert have >= tuple(int(x) for x in want.split(".")), f"rust {have} < rust-version {want}"
    build = [(w, r) for s, w, r in ins if s == 0]
    runtime = [(w, r) for s, w, r in ins if s == 1]
    assert any(w == "RUN" and "cargo build --release --locked --bin tflock" in r for w, r in build)
    # The runtime stage: the binary from the build stage, a non-root numeric user that
    # the stage creates, and nothing run as root after it.
    assert ("COPY", "--from=build /out/tflock /usr/local/bin/tflock") in runtime, runtime
    users = [r for w, r in runtime if w == "USER"]
    assert len(users) == 1, users
    uid, _, gid = users[0].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0, users
    created = " ".join(r for w, r in runtime if w == "RUN")
    assert f"--uid {uid}" in created and f"--gid {gid}" in created, "USER is not the user the stage creates"
    after_user = [w for w, _ in runtime[[w for w, _ in runtime].index("USER"):]]
    assert "RUN" not in after_user, "RUN after USER"
    # Listens on all interfaces, which tflock allows only with an API token.
    env = image_env(ins)
    assert env.get("ATLANTIS_ENHANCED_LOCKING_SERVER_LISTEN") == "0.0.0.0:4141", env
    assert ("EXPOSE", "4141") in runtime
    assert exec_form(dict(runtime)["ENTRYPOINT"]) == ["tflock"]
    assert exec_form(dict(runtime)["CMD"]) == ["server"]
    # HEALTHCHECK probes /healthz with a program the runtime stage installs.
    hc = dict(runtime)["HEALTHCHECK"]
    assert "CMD " in hc
    probe = exec_form(hc.split("CMD ", 1)[1])
    assert probe and "http://127.0.0.1:4141/healthz" in probe, probe
    assert re.search(rf"apt-get install[^&]*\b{re.escape(probe[0])}\b", created), \
        f"{probe[0]} (the health check's probe) is not installed in the runtime stage"
    return f"2 stages, USER {users[0]}, HEALTHCHECK {probe[0]} /healthz, ENTRYPOINT tflock server"


def dockerignore_rules():
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:] if neg else line
        rules.append((neg, pat.strip("/")))
    return rules


def pattern_regex(pat: str) -> re.Pattern:
    """Docker's .dockerignore patterns (Go filepath.Match plus `**`) as a regex."""
    out, i = "", 0
    while i < len(pat):
        c = pat[i]
        if pat.startswith("**", i):
            out += ".*"
            i += 2
            if i < len(pat) and pat[i] == "/":
                out = out[:-2] + "(.*/)?"
                i += 1
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(out + r"\Z")


def excluded(rel: str, rules) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for neg, pat in rules:
        rx = pattern_regex(pat)
        if any(rx.match(p) for p in prefixes):
            verdict = not neg
    return verdict


@check
def docker_build_context():
    """The context .dockerignore leaves holds every COPY source, nothing local, and a
    workspace cargo loads with the locked dependencies."""
    rules = dockerignore_rules()
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout.split()
    context = [f for f in files if not excluded(f, rules) and (ROOT / f).is_file()]
    for must in ["Cargo.toml", "Cargo.lock", "src/main.rs", "crates/tflock-cli/Cargo.toml"]:
        assert must in context, f"{must} is not in the build context"
    for f in context:
        assert not f.startswith(("target/", ".git/", "docs/", "deploy/", "tests/")), f"{f} is in the context"
    for probe in ["target/release/tflock", "crates/x/target/debug/y", "tflock-data/locks.redb", ".git/HEAD"]:
        assert excluded(probe, rules), f"{probe} would be in the context"
    ins = dockerfile_instructions(ROOT / "Dockerfile")
    for stage, word, rest in ins:
        if word == "COPY" and not rest.startswith("--from"):
            for src in shlex.split(rest)[:-1]:
                assert any(f == src or f.startswith(src.rstrip("/") + "/") for f in context), \
                    f"COPY {src}: not in the build context"
    with tempfile.TemporaryDirectory() as tmp:
        for f in context:
            dst = Path(tmp) / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst)
        # Not --offline: a fresh machine's cargo cache holds only what a build of this
        # host fetched, and a metadata resolve without a platform filter wants every
        # target's crates (Windows ones too). The image builds for the host's kind of
        # platform, so only its crates must resolve; cargo fetches any that are missing.
        host = next(l.split(":", 1)[1].strip() for l in
                    run(["rustc", "-vV"], cwd=tmp).stdout.splitlines() if l.startswith("host:"))
        run(["cargo", "metadata", "--locked", "--format-version", "1", "--filter-platform", host],
            cwd=tmp, timeout=600)
    return f"{len(context)} files; cargo metadata --locked loads the workspace from them"


@check
def dockerfile_refuses_without_tokens():
    """The image's command and environment, run as the image would: without tokens it
    must refuse to listen on 0.0.0.0 and exit 2."""
    env = image_env(dockerfile_instructions(ROOT / "Dockerfile"))
    with tempfile.TemporaryDirectory() as tmp:
        env = {**env, "PATH": "/usr/bin:/bin",
               "ATLANTIS_ENHANCED_LOCKING_EMBEDDED_PATH": f"{tmp}/locks.redb"}
        p = run([TFLOCK, "server"], env=env, cwd=tmp, ok=False, timeout=20)
    assert p.returncode == 2, f"exit {p.returncode}: {p.stdout}"
    assert "refusing to listen on 0.0.0.0:4141 without an API token" in p.stdout, p.stdout
    return "exit 2: " + p.stdout.strip().splitlines()[-1][:110] + "..."


def health_probe_against_server(probe, env_extra=None):
    """Starts `tflock server` (embedded) on a free loopback port with the image's
    environment, and runs the probe command with 4141 replaced by that port."""
    port = free_port()
    env = image_env(dockerfile_instructions(ROOT / "Dockerfile"))
    with tempfile.TemporaryDirectory() as tmp:
        env.update({
            "PATH": "/usr/bin:/bin",
            "ATLANTIS_ENHANCED_LOCKING_SERVER_LISTEN": f"127.0.0.1:{port}",
            "ATLANTIS_ENHANCED_LOCKING_EMBEDDED_PATH": f"{tmp}/locks.redb",
            "ATLANTIS_ENHANCED_LOCKING_SERVER_API_TOKEN": DUMMY_ENV["TFLOCK_API_TOKEN"],
            "ATLANTIS_ENHANCED_LOCKING_SERVER_ADMIN_TOKEN": DUMMY_ENV["TFLOCK_ADMIN_TOKEN"],
            **(env_extra or {}),
        })
        server = start([TFLOCK, "server"], env=env, cwd=tmp, log=f"{tmp}/server.log")
        try:
            cmd = [a.replace("4141", str(port)) for a in probe]
            wait_until("the server's health check", lambda: subprocess.run(cmd, capture_output=True).returncode == 0, 20)
            # And the probe fails once nothing listens.
            stop(server)
            failed = subprocess.run(cmd, capture_output=True).returncode
            assert failed != 0, "the probe passes with no server"
        finally:
            stop(server)
    return " ".join(probe)


@check
def dockerfile_healthcheck_probe():
    ins = dockerfile_instructions(ROOT / "Dockerfile")
    hc = [r for s, w, r in ins if w == "HEALTHCHECK"][0]
    probe = exec_form(hc.split("CMD ", 1)[1])
    return "passes against a real server, fails without: " + health_probe_against_server(probe)


# ---------------------------------------------------------------------------------
# Compose


def compose_config(path: Path, env_extra=None, ok=True):
    env = {**os.environ, **DUMMY_ENV, **(env_extra or {})}
    return run(["docker-compose", "-f", str(path), "config"], env=env, ok=ok, timeout=60)


def compose_resolved(path: Path):
    return yaml.safe_load(compose_config(path).stdout)


def compose_env(service) -> dict:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


@check
def compose_config_v1():
    out = []
    for f in COMPOSE_FILES:
        compose_config(f, ok=True)
        # Without the secrets compose refuses, naming the variable.
        env = {k: v for k, v in os.environ.items() if k not in DUMMY_ENV}
        p = run(["docker-compose", "-f", str(f), "config", "-q"], env=env, ok=False)
        assert p.returncode != 0 and "set REDIS_PASSWORD" in p.stdout, p.stdout
        out.append(f.parent.name)
    assert len(out) == 2, out
    return "docker-compose config: " + ", ".join(out) + " valid; refused without secrets"


@check
def compose_schema():
    p = run(["check-jsonschema", "--builtin-schema", "vendor.compose-spec", *map(str, COMPOSE_FILES)])
    return "Compose specification schema: " + p.stdout.strip().splitlines()[-1]


@check
def compose_redis_semantics():
    c = compose_resolved(DEPLOY / "compose/redis/docker-compose.yml")
    s = c["services"]
    redis, tfl = s["redis"], s["tflock"]
    cmd = redis["command"]
    assert cmd[:1] == ["redis-server"] and "--appendonly" in cmd and cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert tfl["depends_on"]["redis"]["condition"] == "service_healthy"
    env = compose_env(tfl)
    assert env["ATLANTIS_ENHANCED_LOCKING_BACKEND"] == "redis"
    assert env["ATLANTIS_ENHANCED_LOCKING_REDIS_ADDRESSES"] == "redis:6379"
    assert env["ATLANTIS_ENHANCED_LOCKING_REDIS_PASSWORD"] == DUMMY_ENV["REDIS_PASSWORD"]
    assert "ports" not in redis, "Redis must not be published"
    for port in tfl.get("ports", []):
        host = port.get("host_ip", "") if isinstance(port, dict) else str(port).split(":")[0]
        assert host == "127.0.0.1", f"tflock published beyond loopback: {port}"
    assert tfl["build"]["dockerfile"] == "Dockerfile" and Path(tfl["build"]["context"]).resolve() == ROOT
    return "appendonly yes, noeviction, redis-cli ping health check, tflock waits for service_healthy"


@check
def compose_cluster_semantics():
    c = compose_resolved(DEPLOY / "compose/redis-cluster/docker-compose.yml")
    s = c["services"]
    nodes = [n for n in s if n.startswith("redis-node-")]
    assert len(nodes) == 3, nodes
    for n in nodes:
        cmd = s[n]["command"]
        assert cmd[cmd.index("--cluster-enabled") + 1] == "yes"
        assert cmd[cmd.index("--appendonly") + 1] == "yes"
        assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    init = s["redis-cluster-init"]
    script = init["command"][-1]
    assert "--cluster create" in script and all(f"{n}:6379" in script for n in nodes)
    assert all(init["depends_on"][n]["condition"] == "service_healthy" for n in nodes)
    tfl = s["tflock"]
    assert tfl["depends_on"]["redis-cluster-init"]["condition"] == "service_completed_successfully"
    env = compose_env(tfl)
    assert env["ATLANTIS_ENHANCED_LOCKING_REDIS_CLUSTER_MODE"] == "true"
    assert sorted(env["ATLANTIS_ENHANCED_LOCKING_REDIS_ADDRESSES"].split(",")) == [f"{n}:6379" for n in sorted(nodes)]
    return "3 cluster nodes, one-shot --cluster create, tflock waits for it to complete"


def tflock_config_validate(env: dict, what: str):
    with tempfile.TemporaryDirectory() as tmp:
        p = run([TFLOCK, "config", "validate"], env={"PATH": "/usr/bin:/bin", **env}, cwd=tmp, ok=False)
        assert p.returncode == 0, f"{what}: tflock rejects its settings:\n{p.stdout}"
        show = run([TFLOCK, "config", "show"], env={"PATH": "/usr/bin:/bin", **env}, cwd=tmp).stdout
    for k in env:
        if k.startswith("ATLANTIS_ENHANCED_LOCKING_"):
            assert f"environment variable {k}" in show, f"{what}: {k} is not applied:\n{show}"
    return len([k for k in env if k.startswith("ATLANTIS_")])


@check
def compose_tflock_settings():
    n = 0
    for f in COMPOSE_FILES:
        env = compose_env(compose_resolved(f)["services"]["tflock"])
        n += tflock_config_validate(env, str(f.relative_to(ROOT)))
        # Its health check passes against a real server.
        probe = compose_resolved(f)["services"]["tflock"]["healthcheck"]["test"][1:]
        health_probe_against_server(probe)
    return f"tflock config validate accepts all {n} ATLANTIS_* settings; the health checks pass"


# ---------------------------------------------------------------------------------
# The cluster-forming scripts, run against real redis-server processes.


class RedisNodes:
    def __init__(self, n, password):
        self.tmp = tempfile.TemporaryDirectory()
        self.password = password
        self.ports = [cluster_port() for _ in range(n)]
        self.procs = []
        for port in self.ports:
            d = Path(self.tmp.name) / str(port)
            d.mkdir()
            self.procs.append(start([
                "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no",
                "--requirepass", password, "--masterauth", password,
            ], log=str(d / "log")))
        for port in self.ports:
            wait_until(f"redis on {port}", lambda: self.cli(port, "ping").strip() == "PONG", 10)

    def cli(self, port, *args):
        env = {**os.environ, "REDISCLI_AUTH": self.password}
        return run(["redis-cli", "-p", str(port), *args], env=env, timeout=10).stdout

    def reset(self):
        for port in self.ports:
            self.cli(port, "flushall")
            self.cli(port, "cluster", "reset", "hard")

    def state(self):
        return [re.search(r"cluster_state:(\w+)", self.cli(p, "cluster", "info")).group(1) for p in self.ports]

    def close(self):
        for p in self.procs:
            stop(p)
        self.tmp.cleanup()


def run_forming_script(script: str, nodes: RedisNodes):
    env = {"PATH": os.environ["PATH"], "REDISCLI_AUTH": nodes.password}
    return run(["sh", "-c", script], env=env, timeout=120)


@check
def cluster_forming_scripts():
    raw = yaml.safe_load((DEPLOY / "compose/redis-cluster/docker-compose.yml").read_text())
    compose_script = raw["services"]["redis-cluster-init"]["command"][-1].replace("$$", "$")
    job = [d for d in yaml.safe_load_all((K8S / "redis.yaml").read_text()) if d["kind"] == "Job"][0]
    job_script = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    nodes = RedisNodes(3, DUMMY_ENV["REDIS_PASSWORD"])
    try:
        done = []
        for name, script, host in [
            ("compose", compose_script, "redis-node-{}"),
            ("kubernetes", job_script, "redis-cluster-{}.redis-cluster"),
        ]:
            local = script
            for i, port in enumerate(nodes.ports):
                n = i + 1 if name == "compose" else i
                h = host.format(n)
                local = local.replace(f"{h}:6379", f"127.0.0.1:{port}")
                local = local.replace(f"-h {h} ", f"-h 127.0.0.1 -p {port} ")
            assert "6379" not in local, f"{name}: a node address was not mapped:\n{local}"
            first = run_forming_script(local, nodes)
            assert "All 16384 slots covered" in first.stdout, first.stdout
            # The script promises every node is ready when it exits 0 (tflock starts then).
            assert nodes.state() == ["ok"] * 3, f"{name}: cluster_state per node {nodes.state()}:\n{first.stdout}"
            again = run_forming_script(local, nodes)
            assert "already form a cluster" in again.stdout and "cluster_state:ok" in again.stdout, again.stdout
            done.append(name)
            nodes.reset()
        return "created a 3-node cluster, then found it formed: " + ", ".join(done)
    finally:
        nodes.close()


# ---------------------------------------------------------------------------------
# Kubernetes


def k8s_docs():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = kust["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(files) == on_disk, f"kustomization.yaml lists {files}, the directory has {on_disk}"
    docs = []
    for f in files:
        docs += [(f, d) for d in yaml.safe_load_all((K8S / f).read_text()) if d]
    return files, docs


def find(docs, kind, name):
    for _, d in docs:
        if d["kind"] == kind and d["metadata"]["name"] == name:
            return d
    raise AssertionError(f"no {kind}/{name}")


@check
def kubernetes_schemas():
    files, docs = k8s_docs()
    p = run(["kubernetes-validate", "--strict", "-k", K8S_VERSION, *[str(K8S / f) for f in files]])
    passed = p.stdout.count(" passed for resource ")
    assert passed == len(docs), p.stdout
    return f"kubernetes-validate --strict -k {K8S_VERSION}: {passed} resources in {len(files)} files"


def container_env(container, secrets):
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] in secrets, f"{e['name']}: no Secret {ref['name']}"
            assert ref["key"] in secrets[ref["name"]], f"{e['name']}: Secret {ref['name']} has no key {ref['key']}"
            env[e["name"]] = f"dummy-{ref['key']}"
    return env


@check
def kubernetes_semantics():
    _, docs = k8s_docs()
    secrets = {d["metadata"]["name"]: d.get("stringData", d.get("data", {})) for _, d in docs if d["kind"] == "Secret"}
    assert set(secrets["tflock-secrets"]) == {"redis-password", "api-token", "admin-token"}

    sts = find(docs, "StatefulSet", "redis-cluster")
    svc = find(docs, "Service", "redis-cluster")
    assert svc["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == "redis-cluster"
    assert sts["spec"]["replicas"] == 3
    rc = sts["spec"]["template"]["spec"]["containers"][0]
    cmd = rc["command"]
    for flag, want in [("--cluster-enabled", "yes"), ("--appendonly", "yes"), ("--maxmemory-policy", "noeviction")]:
        assert cmd[cmd.index(flag) + 1] == want, flag
    assert rc["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == rc["volumeMounts"][0]["name"]
    container_env(rc, secrets)

    dep = find(docs, "Deployment", "tflock")
    assert dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items())
    ann = pod["metadata"]["annotations"]
    assert ann == {"prometheus.io/scrape": "true", "prometheus.io/port": "4141", "prometheus.io/path": "/metrics"}, ann
    c = pod["spec"]["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind
    # The pod runs as the image's user.
    user = [r for s, w, r in dockerfile_instructions(ROOT / "Dockerfile") if w == "USER"][0]
    assert f"{pod['spec']['securityContext']['runAsUser']}:{pod['spec']['securityContext']['runAsGroup']}" == user
    assert pod["spec"]["terminationGracePeriodSeconds"] > 30, "tflock's shutdown grace is 30 s"
    env = container_env(c, secrets)
    assert env["ATLANTIS_ENHANCED_LOCKING_REDIS_CLUSTER_MODE"] == "true"
    addrs = env["ATLANTIS_ENHANCED_LOCKING_REDIS_ADDRESSES"].split(",")
    assert addrs == [f"redis-cluster-{i}.redis-cluster:6379" for i in range(sts["spec"]["replicas"])], addrs
    n = tflock_config_validate(env, "deploy/kubernetes/tflock.yaml")

    tsvc = find(docs, "Service", "tflock")
    assert all(labels.get(k) == v for k, v in tsvc["spec"]["selector"].items())
    pdb = find(docs, "PodDisruptionBudget", "tflock")
    assert all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
    assert pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]
    return (f"probes /healthz and /readyz, resources, scrape annotations, PDB and Service select the pods, "
            f"secrets exist, tflock accepts its {n} settings")


# ---------------------------------------------------------------------------------
# Monitoring: alert rules and the dashboard against what the server exports.

EXPORTED: set[str] = set()


def exported_metrics() -> set[str]:
    """Metric names a real server exports after some traffic (with a webhook, so the
    webhook series exist)."""
    if EXPORTED:
        return EXPORTED
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "PATH": "/usr/bin:/bin",
            "ATLANTIS_ENHANCED_LOCKING_SERVER_LISTEN": f"127.0.0.1:{port}",
            "ATLANTIS_ENHANCED_LOCKING_EMBEDDED_PATH": f"{tmp}/locks.redb",
            "ATLANTIS_ENHANCED_LOCKING_SERVER_ADMIN_TOKEN": "t",
            "ATLANTIS_ENHANCED_LOCKING_SERVER_WEBHOOKS": f"http://127.0.0.1:{free_port()}/hook",
        }
        server = start([TFLOCK, "server"], env=env, cwd=tmp, log=f"{tmp}/server.log")
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until("the server", lambda: urllib.request.urlopen(url + "/healthz", timeout=2).status == 200, 20)
            run([TFLOCK, "locks", "test", "--server", url, "--token", "t"], env=env, cwd=tmp)
            text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
        finally:
            stop(server)
    for line in text.splitlines():
        m = re.match(r"# TYPE (\w+) (\w+)", line)
        if m:
            EXPORTED.add(m.group(1))
            if m.group(2) == "histogram":
                EXPORTED.update(m.group(1) + s for s in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            EXPORTED.add(re.match(r"[a-zA-Z_:][\w:]*", line).group(0))
    return EXPORTED


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\btflock_[a-z_]+\b", expr))


@check
def alert_rules():
    rules_file = DEPLOY / "prometheus/tflock-alerts.yml"
    run([PROMTOOL, "check", "rules", str(rules_file)])
    test = run([PROMTOOL, "test", "rules", "tflock-alerts.test.yml"], cwd=DEPLOY / "prometheus")
    assert "SUCCESS" in test.stdout, test.stdout
    rules = [r for g in yaml.safe_load(rules_file.read_text())["groups"] for r in g["rules"]]
    tested = set(re.findall(r"alertname: (\w+)", (DEPLOY / "prometheus/tflock-alerts.test.yml").read_text()))
    untested = {r["alert"] for r in rules} - tested
    assert not untested, f"alerts without a promtool test: {untested}"
    unknown = set().union(*(metric_names(r["expr"]) for r in rules)) - exported_metrics()
    assert not unknown, f"alerts use series the server does not export: {unknown}"
    return f"promtool check + test rules: {len(rules)} alerts, each tested, every series exported"


@check
def grafana_dashboard():
    dash = json.loads((DEPLOY / "grafana/tflock.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs, "no queries"
    used = set().union(*(metric_names(e) for e in exprs))
    unknown = used - exported_metrics()
    assert not unknown, f"the dashboard uses series the server does not export: {unknown}"
    # Every query parses as PromQL: promtool checks them as recording rules, with
    # Grafana's variables given values.
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": e.replace("$__rate_interval", "5m").replace("$instance", ".*")}
        for i, e in enumerate(exprs)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump(rules, f)
        f.flush()
        run([PROMTOOL, "check", "rules", f.name])
    return f"{len(dash['panels'])} panels, {len(exprs)} queries parse; series used: {len(used)}, all exported"


@check
def operations_guide():
    """docs/operations.md: its ACL line is the one scripts/local-cluster creates (and
    tests/local_cluster.sh runs tflock with), and every file it names exists."""
    guide = (ROOT / "docs/operations.md").read_text()
    script = (ROOT / "scripts/local-cluster").read_text()
    documented = re.search(r"^ACL SETUSER tflock on >PASSWORD (.+)$", guide, re.M)
    assert documented, "no `ACL SETUSER tflock on >PASSWORD ...` line in the guide"
    scripted = re.search(r'echo "on >\$1 (.+)"', script)
    assert scripted, "no acl_rules in scripts/local-cluster"
    assert documented.group(1).split() == scripted.group(1).split(), \
        f"the guide's ACL rules differ from scripts/local-cluster's:\n{documented.group(1)}\n{scripted.group(1)}"
    named = set(re.findall(r"`((?:deploy|scripts|tests|docs|crates)/[\w./-]+)`", guide))
    missing = [n for n in sorted(named) if not (ROOT / n.rstrip("/")).exists()]
    assert not missing, f"the guide names files that do not exist: {missing}"
    return f"ACL line matches scripts/local-cluster; {len(named)} named files exist"


def main():
    only = sys.argv[1:]
    passed = failed = 0
    try:
        for fn in CHECKS:
            if only and fn.__name__ not in only:
                continue
            t = time.monotonic()
            try:
                detail = fn()
                passed += 1
                print(f"ok: {fn.__name__} ({time.monotonic() - t:.1f}s): {detail}", flush=True)
            except Exception as e:
                failed += 1
                print(f"FAILED: {fn.__name__}: {e}", flush=True)
                if not isinstance(e, AssertionError):
                    traceback.print_exc()
    finally:
        for p in STARTED:
            stop(p)
    print(f"deploy_check: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
