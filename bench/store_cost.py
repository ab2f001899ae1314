"""What the store costs its Redis: server CPU per job, and the fixed cost of one store call.

``python -m bench.store_cost [--jobs N]`` starts a private ``redis-server`` and measures:

- **per job**: jobs of the memory benchmark's ``plain`` and ``tracked`` profiles (bundle, an
  in-process ``dramatiq.Worker`` with 8 threads on a ``StubBroker``, the real middlewares and
  group commit on a ``RedisStore``) run through the store; from ``INFO commandstats`` the
  microseconds Redis spent in the store's script calls (``EVALSHA``/``FCALL``: the calls'
  whole run, the commands inside included), every call's microseconds, the commands (those
  run inside the script included) and the script calls, each per job;
- **per call**: ``calls`` store calls that carry one op doing nothing (``renew`` of no
  leases), against a trivial script (``return 1``), in microseconds per call.

Figures move with the machine's load: compare them within one run.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import redis

import dramatiq_reliable as dr

from . import memory
from .servers import SCRIPT_COMMANDS, RedisServer


def _stats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    info: dict[str, Any] = client.info("commandstats")
    return {
        name[len("cmdstat_") :].lower(): (int(v["calls"]), int(v["usec"]))
        for name, v in info.items()
        if name.startswith("cmdstat_") and isinstance(v, dict)
    }


def _delta(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], n: int) -> dict[str, Any]:
    calls = {k: c - before.get(k, (0, 0))[0] for k, (c, _) in after.items()}
    usec = {k: u - before.get(k, (0, 0))[1] for k, (_, u) in after.items()}
    for k in ("info", "memory|usage", "scan", "hello", "zcard", "flushall", "client|setinfo", "script|load"):
        calls.pop(k, None)
        usec.pop(k, None)
    script = [k for k in calls if k in SCRIPT_COMMANDS]
    return {
        "script_us": sum(usec[k] for k in script) / n,
        "script_calls": sum(calls[k] for k in script) / n,
        "commands": sum(v for k, v in calls.items() if k not in SCRIPT_COMMANDS) / n,
        "by_command": {k: round(v / n, 3) for k, v in sorted(calls.items()) if v > 0},
    }


def per_job(server: RedisServer, profile: str, jobs: int) -> dict[str, Any]:
    client = server.client()
    before = _stats(client)
    result = memory.measure(server.url, f"cost{profile}", profile, jobs, warmup=200)
    after = _stats(client)
    out = _delta(before, after, jobs + 200)
    out["bytes_per_job"] = result.get("bytes_per_item")
    out["status"] = result.get("status"), result.get("error")
    out["keys_bytes_per_item"] = result.get("keys_bytes_per_item")
    server.flush()
    return out


def per_call(server: RedisServer, calls: int) -> dict[str, Any]:
    client = server.client()
    store = dr.RedisStore(server.url, prefix="costcall")
    noop = {"k": "renew", "id": "-", "idem": {"leases": {}, "lease_ms": 1000, "lease": 1000}}
    store.apply_serial({"now": int(time.time() * 1000), "ops": [noop]})
    before = _stats(client)
    for _ in range(calls):
        store.apply_serial({"now": int(time.time() * 1000), "ops": [noop]})
    store_figures = _delta(before, _stats(client), calls)
    trivial = client.register_script("return 1")
    trivial()
    before = _stats(client)
    for _ in range(calls):
        trivial()
    trivial_figures = _delta(before, _stats(client), calls)
    store.close()
    server.flush()
    return {"store_call_us": store_figures["script_us"], "trivial_script_us": trivial_figures["script_us"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--redis-server", default="redis-server")
    args = parser.parse_args()
    with RedisServer(args.redis_server) as server:
        out = {
            "per_call": per_call(server, args.calls),
            "plain": per_job(server, "plain", args.jobs),
            "tracked": per_job(server, "tracked", args.jobs),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
