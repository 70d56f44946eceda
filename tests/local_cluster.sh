#!/usr/bin/env bash
# scripts/local-cluster end to end, from nothing (a fresh state directory and free
# ports, so a developer's own local cluster is left alone):
#   up; status; `tflock cluster status` shows three nodes and a leader;
#   `tflock locks test --backend=redis` passes; a second `up` starts nothing;
#   a lock survives down + up (the AOF); down leaves no process behind (pid files,
#   pgrep on the ports, the ports closed); status says down.
set -euo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "local_cluster: ok: $*"; }
bad() { failed=$((failed + 1)); echo "local_cluster: FAILED: $*"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# A base port whose next three ports, and their cluster bus ports (+10000), are free.
free_base() {
  local lo="$1" hi="$2" base i busy
  for _ in $(seq 1 50); do
    base=$((lo + RANDOM % (hi - lo)))
    busy=0
    for ((i = 0; i < 3; i++)); do
      if port_open $((base + i)) || port_open $((base + i + 10000)); then busy=1; fi
    done
    [ "$busy" = 0 ] && { echo "$base"; return 0; }
  done
  return 1
}

work="$(mktemp -d)"
export LOCAL_CLUSTER_DIR="$work/state"
LOCAL_CLUSTER_REDIS_PORT="$(free_base 12000 22000)"
LOCAL_CLUSTER_TFLOCK_PORT="$(free_base 22000 32000)"
export LOCAL_CLUSTER_REDIS_PORT LOCAL_CLUSTER_TFLOCK_PORT
redis_ports=("$LOCAL_CLUSTER_REDIS_PORT" $((LOCAL_CLUSTER_REDIS_PORT + 1)) $((LOCAL_CLUSTER_REDIS_PORT + 2)))
tflock_ports=("$LOCAL_CLUSTER_TFLOCK_PORT" $((LOCAL_CLUSTER_TFLOCK_PORT + 1)) $((LOCAL_CLUSTER_TFLOCK_PORT + 2)))
bin="$PWD/target/release/tflock"

# Whatever happens, nothing is left running: down, then any pid still recorded.
pids_seen="$work/pids"
: >"$pids_seen"
cleanup() {
  scripts/local-cluster down --purge >/dev/null 2>&1 || true
  local pid
  while read -r pid; do
    if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
  done <"$pids_seen"
  rm -rf "$work"
}
trap cleanup EXIT

record_pids() { cat "$LOCAL_CLUSTER_DIR"/*/pid >>"$pids_seen" 2>/dev/null || true; }

# 1. up from nothing (builds the release binary when it is not fresh), its output
#    read through a pipe as by `up 2>&1 | tee up.log`, with one more descriptor open
#    (fd 4) as a caller may pass: the reader sees the end of the output once up
#    returns, because no daemon keeps up's stderr, fd 3 or fd 4.
start=$SECONDS
mkfifo "$work/up.pipe"
cat "$work/up.pipe" >"$work/up.log" &
reader=$!
up_rc=0
scripts/local-cluster up >"$work/up.pipe" 2>&1 4>"$work/extra-fd" || up_rc=$?
for _ in $(seq 1 100); do
  kill -0 "$reader" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$reader" 2>/dev/null; then
  record_pids
  bad "up returned but its output pipe is still open 10s later (a daemon inherited it)"
  kill "$reader" 2>/dev/null || true
fi
wait "$reader" 2>/dev/null || true
if [ "$up_rc" = 0 ]; then
  record_pids
  ok "up in $((SECONDS - start))s: redis ${redis_ports[*]}, tflock ${tflock_ports[*]}"
  held=""
  for pid in $(cat "$LOCAL_CLUSTER_DIR"/*/pid); do
    for fd in /proc/"$pid"/fd/*; do
      case "$(readlink "$fd" 2>/dev/null)" in
        "$work/up.pipe" | "$work/extra-fd") held="$held $pid:${fd##*/}" ;;
      esac
    done
  done
  if [ -z "$held" ]; then
    ok "no daemon holds a descriptor of the caller (up's output pipe, fd 4)"
  else
    bad "daemons hold the caller's descriptors:$held"
  fi
else
  record_pids
  cat "$work/up.log"
  bad "up failed"
  echo "local_cluster: $passed passed, $failed failed"
  exit 1
fi

# 2. status: every process listed, alive.
if scripts/local-cluster status >"$work/status.log" 2>&1 \
  && [ "$(grep -c '^redis-server .* master, cluster_state:ok' "$work/status.log")" = 3 ] \
  && [ "$(grep -c '^tflock .* readyz 200' "$work/status.log")" = 3 ]; then
  ok "status: 3 Redis primaries cluster_state:ok, 3 tflock servers ready"
else
  cat "$work/status.log"
  bad "status"
fi

# shellcheck disable=SC1091
. "$LOCAL_CLUSTER_DIR/env"

# 3. tflock cluster status: three nodes and a leader (the first election may take a
#    heartbeat: bounded wait).
cluster_ok=0
for _ in $(seq 1 100); do
  if "$bin" cluster status --json >"$work/cluster.json" 2>"$work/cluster.err" \
    && python3 - "$work/cluster.json" "${tflock_ports[@]}" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
addresses = sorted(n["address"] for n in c["nodes"])
want = sorted(f"127.0.0.1:{p}" for p in sys.argv[2:])
ids = {n["id"] for n in c["nodes"]}
sys.exit(0 if addresses == want and c["leader"] in ids and c["epoch"] else 1)
EOF
  then
    cluster_ok=1
    break
  fi
  sleep 0.1
done
if [ "$cluster_ok" = 1 ]; then
  "$bin" cluster status >"$work/cluster.txt"
  ok "tflock cluster status: 3 nodes, $(head -n 1 "$work/cluster.txt")"
else
  cat "$work/cluster.json" "$work/cluster.err" 2>/dev/null || true
  bad "tflock cluster status does not show the three servers and a leader"
fi

# 4. The self-test, on Redis opened directly, and through each server.
if "$bin" locks test --backend=redis >"$work/selftest.log" 2>&1 && grep -q '^PASS: all 7 steps passed on redis cluster' "$work/selftest.log"; then
  ok "tflock locks test --backend=redis: $(tail -n 1 "$work/selftest.log")"
else
  cat "$work/selftest.log"
  bad "tflock locks test --backend=redis"
fi
through=0
for p in "${tflock_ports[@]}"; do
  "$bin" --server "http://127.0.0.1:$p" locks list >/dev/null 2>&1 && through=$((through + 1))
done
if [ "$through" = 3 ]; then ok "tflock locks list through each of the three servers"; else bad "locks list through the servers: $through of 3"; fi

# 5. A second up starts nothing.
before="$(cat "$LOCAL_CLUSTER_DIR"/*/pid | sort)"
if scripts/local-cluster up >"$work/up2.log" 2>&1 && grep -q "already up" "$work/up2.log" \
  && [ "$(cat "$LOCAL_CLUSTER_DIR"/*/pid | sort)" = "$before" ]; then
  ok "a second up starts nothing"
else
  cat "$work/up2.log"
  bad "a second up"
fi

# 5b. A server that died is started again by up, and only it.
victim="$(cat "$LOCAL_CLUSTER_DIR/tflock-${tflock_ports[1]}/pid")"
kill -KILL "$victim"
others="$(cat "$LOCAL_CLUSTER_DIR"/redis-*/pid "$LOCAL_CLUSTER_DIR/tflock-${tflock_ports[0]}/pid" "$LOCAL_CLUSTER_DIR/tflock-${tflock_ports[2]}/pid" | sort)"
if scripts/local-cluster up >"$work/up-partial.log" 2>&1 && grep -q "5 of 6 processes run" "$work/up-partial.log" \
  && [ "$(cat "$LOCAL_CLUSTER_DIR"/redis-*/pid "$LOCAL_CLUSTER_DIR/tflock-${tflock_ports[0]}/pid" "$LOCAL_CLUSTER_DIR/tflock-${tflock_ports[2]}/pid" | sort)" = "$others" ] \
  && [ "$(cat "$LOCAL_CLUSTER_DIR/tflock-${tflock_ports[1]}/pid")" != "$victim" ] \
  && curl -sf -o /dev/null "http://127.0.0.1:${tflock_ports[1]}/readyz"; then
  record_pids
  ok "up after a server was SIGKILLed starts only that server"
else
  record_pids
  cat "$work/up-partial.log"
  bad "up after a SIGKILLed server"
fi

# 6. A held lock survives down and up (the nodes' AOF and nodes.conf are kept).
"$bin" locks acquire --project=local/cluster --workspace=persist --pull=1 --ttl=1h >"$work/acquire.log" 2>&1 || true
token_before="$("$bin" locks get --project=local/cluster --workspace=persist --json 2>/dev/null | python3 -c 'import json,sys; l = json.load(sys.stdin)["lock"]; print(l["owner"] + ", fencing token", l["fencing_token"])' || echo none)"

# 7. down: nothing left.
pids="$(cat "$LOCAL_CLUSTER_DIR"/*/pid)"
start=$SECONDS
if scripts/local-cluster down >"$work/down.log" 2>&1; then
  ok "down in $((SECONDS - start))s"
else
  cat "$work/down.log"
  bad "down failed"
fi
check_gone() {
  local left=() pid p
  for pid in $pids; do
    if [ -e "/proc/$pid" ] && [ "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]; then left+=("pid $pid"); fi
  done
  for p in "${redis_ports[@]}"; do
    pgrep -f "redis-server 127.0.0.1:$p" >/dev/null && left+=("pgrep redis-server 127.0.0.1:$p")
    port_open "$p" && left+=("port $p open")
  done
  for p in "${tflock_ports[@]}"; do
    pgrep -f "server --listen 127.0.0.1:$p" >/dev/null && left+=("pgrep tflock server 127.0.0.1:$p")
    port_open "$p" && left+=("port $p open")
  done
  compgen -G "$LOCAL_CLUSTER_DIR/*/pid" >/dev/null && left+=("pid files: $(echo "$LOCAL_CLUSTER_DIR"/*/pid)")
  if [ "${#left[@]}" -eq 0 ]; then
    ok "$1: no process left (6 pids gone, pgrep finds nothing on the 6 ports, ports closed, no pid file)"
  else
    bad "$1: left behind: ${left[*]}"
  fi
}
check_gone "down"
rc=0
scripts/local-cluster status >"$work/status-down.log" 2>&1 || rc=$?
if [ "$rc" = 3 ]; then
  ok "status after down: exit 3, $(tail -n 1 "$work/status-down.log")"
else
  bad "status after down: exit $rc"
fi

# 8. up again on the kept data: the cluster is reused and the lock is still there.
if scripts/local-cluster up >"$work/up3.log" 2>&1 && grep -q "reusing it" "$work/up3.log"; then
  record_pids
  token_after="$("$bin" locks get --project=local/cluster --workspace=persist --json 2>/dev/null | python3 -c 'import json,sys; l = json.load(sys.stdin)["lock"]; print(l["owner"] + ", fencing token", l["fencing_token"])' || echo none)"
  if [ "$token_before" != none ] && [ "$token_before" = "$token_after" ]; then
    ok "up again reuses the cluster; the lock held before down is still held ($token_after)"
  else
    cat "$work/acquire.log"
    bad "the lock did not survive down + up (token before $token_before, after $token_after)"
  fi
else
  record_pids
  cat "$work/up3.log"
  bad "up on kept data"
fi
pids="$(cat "$LOCAL_CLUSTER_DIR"/*/pid 2>/dev/null || true)"
scripts/local-cluster down --purge >"$work/down2.log" 2>&1 || bad "down --purge failed"
check_gone "down --purge"
if [ -e "$LOCAL_CLUSTER_DIR" ]; then
  bad "down --purge left $LOCAL_CLUSTER_DIR"
else
  ok "down --purge removed the state directory"
fi

echo "local_cluster: $passed passed, $failed failed"
[ "$failed" = 0 ]
