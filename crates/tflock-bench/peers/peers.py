#!/usr/bin/env python3
"""Drives a Python Redis lock library the way tflock-bench drives tflock, and prints one
JSON object with the raw results (tflock-bench computes every statistic itself, so
peers and tflock go through the same arithmetic).

Libraries (each with its own blocking acquire and a 30 s lock TTL, as
docs/benchmarks.md describes):
  redis-py           redis.Redis.lock(name, timeout=30).acquire(blocking=True)
                     (polls every 0.1 s, its default `sleep`)
  python-redis-lock  redis_lock.Lock(client, name, expire=30).acquire(blocking=True)
                     (SET NX, then BLPOP on a signal list the releaser pushes to)

Measures:
  pairs     N threads, each on its own key: acquire + release in a loop.
  handoff   N threads on one key, each holding 1 ms: release is timestamped just before
            the call, the next holder's acquire return just after; the releaser steps
            back until another thread holds the lock (a polling library would otherwise
            mostly re-take its own lock and hide its polling delay). The short hold
            keeps the stepped-back thread's first retry, which starts at the next grant,
            from landing right on the next release every time.
  fairness  48 threads on one key, each holding for `hold` ms, no stepping back.

Every loop ends by itself: no acquire starts after the end, and each acquire is
bounded by the end plus a grace period.
"""

import argparse
import json
import sys
import threading
import time

import redis

try:
    import redis_lock
except ImportError:  # only needed for python-redis-lock
    redis_lock = None

LOCK_TTL_S = 30
GRACE_S = 20


def make_lock(lib, client, name):
    if lib == "redis-py":
        return client.lock(name, timeout=LOCK_TTL_S)
    return redis_lock.Lock(client, name, expire=LOCK_TTL_S)


def acquire(lib, lock, deadline):
    """The library's own blocking acquire, bounded by `deadline` (perf_counter)."""
    left = deadline - time.perf_counter()
    if left <= 0.001:
        return False
    if lib == "redis-py":
        return lock.acquire(blocking=True, blocking_timeout=left)
    # python-redis-lock takes whole seconds, at most `expire`.
    return lock.acquire(blocking=True, timeout=max(1, min(int(left), LOCK_TTL_S)))


def pairs(lib, client, prefix, clients, seconds):
    counts = [0] * clients
    start = time.perf_counter() + 0.2 + clients * 0.002
    stop = start + seconds
    ends = [start] * clients

    def run(i):
        name = f"{prefix}:pairs:{clients}:{i}"
        lk = make_lock(lib, client, name)  # warm-up: a connection for this thread
        if acquire(lib, lk, time.perf_counter() + 5):
            lk.release()
        time.sleep(max(0.0, start - time.perf_counter()))
        n = 0
        while time.perf_counter() < stop:
            lk = make_lock(lib, client, name)
            if not acquire(lib, lk, stop + GRACE_S):
                break
            lk.release()
            n += 1
        counts[i] = n
        ends[i] = time.perf_counter()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + GRACE_S + 30)
    return {"clients": clients, "pairs_per_s": sum(counts) / (max(ends) - start)}


def contend(lib, client, name, clients, seconds, hold_s, step_back):
    lock = threading.Lock()
    changed = threading.Condition(lock)
    st = {
        "counts": [0] * clients,
        "waits_ms": [[] for _ in range(clients)],
        "handoffs_ms": [],
        "holds_ms": [],
        "self_regrants": 0,
        "timeouts": 0,
        "errors": [],
        "grants": 0,
        "last_release": None,
    }
    start = time.perf_counter() + 0.2 + clients * 0.002
    stop = start + seconds
    deadline = stop + GRACE_S

    def run(i):
        try:
            time.sleep(max(0.0, start - time.perf_counter()))
            while time.perf_counter() < stop:
                lk = make_lock(lib, client, name)
                asked = time.perf_counter()
                if not acquire(lib, lk, deadline):
                    with lock:
                        st["timeouts"] += 1
                    return
                got = time.perf_counter()
                with lock:
                    last = st["last_release"]
                    st["last_release"] = None
                    if got < stop:
                        st["counts"][i] += 1
                        st["waits_ms"][i].append((got - asked) * 1e3)
                        if last is not None:
                            who, at = last
                            if who == i:
                                st["self_regrants"] += 1
                            else:
                                st["handoffs_ms"].append((got - at) * 1e3)
                    st["grants"] += 1
                    mine = st["grants"]
                    changed.notify_all()
                if hold_s > 0 and got < stop:
                    t = time.perf_counter()
                    time.sleep(hold_s)
                    with lock:
                        st["holds_ms"].append((time.perf_counter() - t) * 1e3)
                with lock:
                    st["last_release"] = (i, time.perf_counter())
                lk.release()
                if step_back:
                    with lock:
                        while st["grants"] == mine:
                            left = stop - time.perf_counter()
                            if left <= 0:
                                break
                            changed.wait(min(left, 0.5))
        except Exception as e:  # reported, not fatal to the other threads
            with lock:
                st["errors"].append(f"thread {i}: {e!r}")

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.perf_counter()) + 30)
    elapsed = time.perf_counter() - start
    return {
        "clients": clients,
        "counts": st["counts"],
        "waits_ms": st["waits_ms"],
        "handoffs_ms": st["handoffs_ms"],
        "holds_ms": st["holds_ms"],
        "self_regrants": st["self_regrants"],
        "timeouts": st["timeouts"],
        "errors": st["errors"],
        "elapsed_s": elapsed,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", choices=["redis-py", "python-redis-lock"], required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--prefix", default="bench:peer")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--pairs-clients", default="1,16,64")
    ap.add_argument("--handoff-waiters", default="16,256")
    ap.add_argument("--fairness-clients", type=int, default=48)
    ap.add_argument("--fairness-seconds", type=float, default=20.0)
    ap.add_argument("--hold-ms", type=float, default=1.0)
    ap.add_argument("--handoff-hold-ms", type=float, default=1.0)
    a = ap.parse_args()
    if a.lib == "python-redis-lock" and redis_lock is None:
        sys.exit("python-redis-lock is not installed")

    client = redis.Redis(host="127.0.0.1", port=a.port, max_connections=1024)
    client.ping()
    prefix = f"{a.prefix}:{a.lib}"
    out = {"lib": a.lib, "versions": {"redis-py": redis.__version__}}
    if redis_lock is not None:
        out["versions"]["python-redis-lock"] = getattr(redis_lock, "__version__", "?")
    out["pairs"] = [
        pairs(a.lib, client, prefix, int(c), a.seconds) for c in a.pairs_clients.split(",") if c
    ]
    out["handoff"] = [
        contend(
            a.lib, client, f"{prefix}:handoff:{w}", int(w), a.seconds, a.handoff_hold_ms / 1e3, True
        )
        for w in a.handoff_waiters.split(",")
        if w
    ]
    out["fairness"] = contend(
        a.lib,
        client,
        f"{prefix}:fairness",
        a.fairness_clients,
        a.fairness_seconds,
        a.hold_ms / 1e3,
        False,
    )
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
