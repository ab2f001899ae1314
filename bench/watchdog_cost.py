"""What the Watchdog costs the store with 1,000 running jobs: heartbeats, sweeps, per-job sections.

The fleet is simulated on a real RedisStore: 125 worker processes x 8 threads, each thread
running a job (1,000 running jobs), registered by the same ops the middleware sends. Then:

* a heartbeat of one process (one Lua call, whatever the number of jobs it runs);
* a heartbeat that wins the lock and sweeps, with nobody dead, and with one dead process;
* the extra cost of the ``wd`` section in a job's start and finish ops (no extra round trip);
* the fleet's round trips per second at the default intervals.

Usage::

    python bench/watchdog_cost.py [--processes 125] [--threads 8] [--rounds 2000]

Needs Redis at ``DR_TEST_REDIS`` (default redis://127.0.0.1:6379); uses database 15 under a
unique prefix, removed afterwards. Times are wall clock from this client (round trip
included), on whatever load the machine has.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from typing import Any

import redis

import dramatiq_reliable as dr
from dramatiq_reliable._clock import now_ms

REDIS = os.getenv("DR_TEST_REDIS", "redis://127.0.0.1:6379")
AB = 30_000  # abandon_after (ms), the default
SWEEP = 5_000  # sweep_interval (ms), the default
HB = 5_000  # heartbeat_interval (ms), the default


def beat_op(proc: str, *, sweep: bool) -> dict[str, Any]:
    info = {"host": "bench", "pid": 1, "bid": f"bid-{proc}", "broker": "x", "ns": "dramatiq", "queues": ["q", "q.DQ"]}
    section: dict[str, Any] = {"proc": proc, "ab": AB, "hist": 50, "info": info}
    if sweep:
        section.update(sweep=SWEEP, keep=3_600_000)
    return {"k": "beat", "id": "-", "wd": section}


def start_op(job: str, proc: str, *, wd: bool) -> dict[str, Any]:
    op: dict[str, Any] = {
        "k": "start",
        "id": job,
        "job": {"actor": "a", "queue": "q", "maxr": 3, "enq": now_ms(), "att": 1, "worker": f"{proc}:T", "hist": 50},
    }
    if wd:
        op["wd"] = {"proc": proc, "ab": AB, "a": "a", "q": "q"}
    return op


def finish_op(job: str, proc: str, *, wd: bool) -> dict[str, Any]:
    op: dict[str, Any] = {"k": "finish", "id": job, "job": {"outcome": "done", "att": 1, "detail": "done", "hist": 50}}
    if wd:
        op["wd"] = {"proc": proc}
    return op


def timed(fn: Any, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e6)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "median_us": round(statistics.median(samples), 1),
        "p95_us": round(samples[int(len(samples) * 0.95) - 1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=125)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()

    prefix = "bench" + uuid.uuid4().hex[:8]
    store = dr.RedisStore(f"{REDIS}/15", prefix=prefix)
    client = redis.Redis.from_url(f"{REDIS}/15")
    procs = [f"bench:{i}:{uuid.uuid4().hex[:6]}" for i in range(args.processes)]
    results: dict[str, Any] = {"processes": args.processes, "running_jobs": args.processes * args.threads}
    try:
        # The fleet: every process beats, every thread runs a job.
        store.apply({"now": now_ms(), "ops": [beat_op(p, sweep=False) for p in procs]})
        for p in procs:
            ops = [start_op(f"{p}-{t}", p, wd=True) for t in range(args.threads)]
            store.apply({"now": now_ms(), "ops": ops})
        assert sum(w.running for w in store.worker_processes()) == results["running_jobs"]

        one = procs[0]
        results["beat"] = summary(
            timed(lambda: store.apply({"now": now_ms(), "ops": [beat_op(one, sweep=False)]}), args.rounds)
        )

        sweeps = []
        for _ in range(args.rounds):
            client.delete(f"{prefix}:wd:lock")  # so that this beat wins the lock (not timed)
            t = time.perf_counter()
            [res] = store.apply({"now": now_ms(), "ops": [beat_op(one, sweep=True)]})
            sweeps.append((time.perf_counter() - t) * 1e6)
            assert "sweep" in res
        results["beat_and_sweep_nobody_dead"] = summary(sweeps)

        # One process dies (its deadline passes) with its 8 jobs: the sweep that finds it.
        dead_samples = []
        for i in range(min(args.rounds, 50)):
            victim = procs[1 + i % (len(procs) - 1)]
            later = now_ms() + AB + 1
            store.apply({"now": now_ms(), "ops": [beat_op(p, sweep=False) for p in procs if p != victim]})
            client.zadd(f"{prefix}:wd:procs", {victim: 0})
            client.delete(f"{prefix}:wd:lock")
            t = time.perf_counter()
            [res] = store.apply({"now": later - AB, "ops": [beat_op(one, sweep=True)]})
            dead_samples.append((time.perf_counter() - t) * 1e6)
            assert len(res["sweep"]["abandoned"]) in (0, args.threads), res  # 0 once already abandoned
            # Bring it back for the next round: it beats again (revival) and runs its jobs again.
            store.apply({"now": now_ms(), "ops": [beat_op(victim, sweep=False)]})
        results["beat_and_sweep_one_dead_process"] = summary(dead_samples)

        # The per-job cost of the wd sections: 100 start+finish ops per call, with and without.
        def jobs(wd: bool) -> None:
            ids = [uuid.uuid4().hex for _ in range(100)]
            store.apply({"now": now_ms(), "ops": [start_op(j, one, wd=wd) for j in ids]})
            store.apply({"now": now_ms(), "ops": [finish_op(j, one, wd=wd) for j in ids]})

        rounds = max(args.rounds // 20, 20)
        without = statistics.median(timed(lambda: jobs(False), rounds)) / 100
        with_wd = statistics.median(timed(lambda: jobs(True), rounds)) / 100
        results["per_job_start_and_finish_us"] = {
            "without_wd": round(without, 1),
            "with_wd": round(with_wd, 1),
            "extra_round_trips": 0,
        }

        # Each process beats every min(heartbeat_interval, sweep_interval); one beat per sweep interval sweeps.
        beats_per_second = args.processes / (min(HB, SWEEP) / 1000)
        sweep_us = results["beat_and_sweep_nobody_dead"]["median_us"] - results["beat"]["median_us"]
        wall_us = beats_per_second * results["beat"]["median_us"] + sweep_us / (SWEEP / 1000)
        results["fleet_at_default_intervals"] = {
            "store_calls_per_second": round(beats_per_second, 1),
            "store_wall_ms_per_second": round(wall_us / 1000, 2),
            "one_heartbeat_per_job_would_be_calls_per_second": round(results["running_jobs"] / (HB / 1000), 1),
        }
    finally:
        keys = list(client.scan_iter(match=prefix + ":*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        store.close()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
