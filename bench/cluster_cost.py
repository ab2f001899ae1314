"""What the store costs on a Redis Cluster, against one Redis: calls, round trips, server CPU per job.

``python -m bench.cluster_cost [--jobs N] [--shards N]`` starts a private ``redis-server`` and
a private 3-primary Redis Cluster (``tests/servers.py``), and runs jobs of the memory
benchmark's ``plain`` and ``tracked`` profiles (the bundle, an in-process ``dramatiq.Worker``
with 8 threads on a ``StubBroker``, group commit) on each. Per job, from ``INFO commandstats``
of every server: the store's ``FCALL``s and the microseconds the servers spent in them; and,
counted in the process, the store's round trips (one per batch on one Redis; one per phase of
a batch on the Cluster, each phase a pipeline sent to every primary at once). Per primary: its
share of that CPU, and the job rate at which the busiest primary's one core would be saturated
by the store's work alone (``1e6 / µs per job on it``).

Figures move with the machine's load: compare them within one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.stub import StubBroker

import dramatiq_reliable as dr

from .memory import PROFILES, _declare, _drain, _send_all
from .servers import RedisServer


def _fcall(client: redis.Redis) -> tuple[int, int]:
    stats: dict[str, Any] = client.info("commandstats")
    found = stats.get("cmdstat_fcall") or {"calls": 0, "usec": 0}
    return int(found["calls"]), int(found["usec"])


class _Count:
    """Counts calls of one method of an object (the store's round trips)."""

    def __init__(self, owner: Any, name: str) -> None:
        self.n = 0
        self.lock = threading.Lock()
        inner = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                self.n += 1
            return inner(*args, **kwargs)

        setattr(owner, name, counted)


def run(url: str, clients: list[redis.Redis], profile: str, jobs: int, prefix: str) -> dict[str, Any]:
    store = dr.RedisStore(url, prefix=prefix)
    cluster = hasattr(store, "shards")
    trips = _Count(store, "_fcalls") if cluster else _Count(store, "_fcall")
    pooled = None if cluster else _Count(store, "_apply_pooled")
    broker = StubBroker(fail_fast_default=False)
    broker.emit_after("process_boot")
    dr.install(broker, store, notifiers=[])
    _, send = _declare(broker, PROFILES[profile])
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=8)
    worker.start()
    try:
        _send_all(send, 0, 200, 8)
        _drain(broker, worker, store)
        # Steady state: the Watchdog's first beat has registered the process (before it, each
        # start registers it, an extra call to the fleet's slot).
        watchdog = next(m for m in broker.middleware if isinstance(m, dr.Watchdog))
        deadline = time.monotonic() + 30
        while watchdog._registered != os.getpid() and time.monotonic() < deadline:
            time.sleep(0.1)
        before = [_fcall(c) for c in clients]
        trips.n = 0
        if pooled is not None:
            pooled.n = 0
        started = time.perf_counter()
        _send_all(send, 200, jobs, 8)
        _drain(broker, worker, store)
        seconds = time.perf_counter() - started
        after = [_fcall(c) for c in clients]
    finally:
        worker.stop()
        broker.close()
        store.close()
    calls = [(a[0] - b[0]) / jobs for a, b in zip(after, before, strict=True)]
    usec = [(a[1] - b[1]) / jobs for a, b in zip(after, before, strict=True)]
    busiest = max(usec)
    return {
        "profile": profile,
        "jobs": jobs,
        "fcalls_per_job": round(sum(calls), 2),
        "round_trips_per_job": round((trips.n + (pooled.n if pooled else 0)) / jobs, 2),
        "server_us_per_job": round(sum(usec), 1),
        "per_primary": [
            {"fcalls_per_job": round(c, 2), "us_per_job": round(u, 1)} for c, u in zip(calls, usec, strict=True)
        ],
        "busiest_primary_saturates_at_jobs_per_s": round(1e6 / busiest) if busiest else None,
        "one_process_jobs_per_s": round(jobs / seconds),
    }


def main() -> None:
    from tests.servers import RedisCluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--shards", type=int, default=16)
    args = parser.parse_args()
    for name in ("dramatiq", "dramatiq_reliable"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder, RedisServer() as server:
        cluster = RedisCluster(Path(folder)).start()
        try:
            nodes = [node.client() for node in cluster.nodes]
            url = f"{cluster.url}?shards={args.shards}"
            for profile in ("plain", "tracked"):
                out[f"one_redis_{profile}"] = run(server.url, [server.client()], profile, args.jobs, f"one{profile}")
                out[f"cluster_{profile}"] = run(url, nodes, profile, args.jobs, f"cl{profile}")
        finally:
            cluster.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
