"""Run the benchmark: bare Dramatiq and the middlewares, same run, interleaved, on each broker.

    python -m bench.run                 # the full run (about 20 minutes on 2 cores)
    python -m bench.run --quick         # a smoke check (a minute or two)
    python -m bench.run --help

See ``bench/README.md`` for what each figure means and how it is measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import redis

from . import machine, memory, report, variants
from .harness import Setup
from .latency import run_latency
from .listing import run_dead_listing, run_jobs_listing
from .servers import RedisServer
from .throughput import run_cell

HERE = Path(__file__).resolve().parent
PARTS = ["throughput", "latency", "memory", "listing"]

#: Settings of the full run and of ``--quick``; options given on the command line win.
PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "jobs": 20_000,
        "rounds": 3,
        "variants": variants.DEFAULT,
        "memory_count": 100_000,
        "memory_profiles": memory.DEFAULT,
        "latency_jobs": 2_000,
        "latency_rounds": 1,
        "latency_variants": ["bare", "bundle"],
        "listing_reps": 20,
    },
    "quick": {
        "jobs": 2_000,
        "rounds": 1,
        "variants": ["bare", "jobstate", "bundle"],
        "memory_count": 5_000,
        "memory_profiles": ["tracked", "dead"],
        "latency_jobs": 300,
        "latency_rounds": 1,
        "latency_variants": ["bare", "bundle"],
        "listing_reps": 5,
    },
}


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark bare Dramatiq against dramatiq-reliable's middlewares, same run, interleaved.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke check (a minute or two)")
    p.add_argument("--parts", type=_list, default=PARTS, help=f"what to run, among {','.join(PARTS)}")
    p.add_argument("--brokers", type=_list, default=["redis", "rabbitmq"], help="redis, rabbitmq or both")
    p.add_argument("--variants", type=_list, help=f"among {','.join(variants.VARIANTS)} [full: all]")
    p.add_argument("--jobs", type=int, help="no-op jobs per throughput measurement [full: 20000]")
    p.add_argument("--rounds", type=int, help="rounds of every variant on every broker [full: 3]")
    p.add_argument("--processes", type=int, default=2, help="dramatiq --processes")
    p.add_argument("--threads", type=int, default=8, help="dramatiq --threads")
    p.add_argument("--memory-count", type=int, help="jobs (or dead letters) per memory profile [full: 100000]")
    p.add_argument(
        "--memory-profiles", type=_list, help=f"among {','.join(memory.PROFILES)} [full: {','.join(memory.DEFAULT)}]"
    )
    p.add_argument("--latency-jobs", type=int, help="measured jobs per latency measurement [full: 2000]")
    p.add_argument("--latency-interval-ms", type=float, default=10.0, help="one job every this many ms")
    p.add_argument("--latency-warmup", type=int, default=200, help="jobs sent first and not measured")
    p.add_argument("--latency-rounds", type=int, help="rounds of the latency measurement [full: 1]")
    p.add_argument("--latency-variants", type=_list, help="variants measured for latency [bare,bundle]")
    p.add_argument("--listing-reps", type=int, help="timed calls per listing query [full: 20]")
    p.add_argument(
        "--redis",
        default="redis://127.0.0.1:6379/0",
        help="Redis of the Redis broker and the job counters, or 'spawn' for a private redis-server",
    )
    p.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/%2F", help="RabbitMQ broker")
    p.add_argument(
        "--store-url",
        help="use this Redis for the store, not a private redis-server (its counters then include others' traffic)",
    )
    p.add_argument("--redis-server", default="redis-server", help="redis-server binary for the private servers")
    p.add_argument("--out", type=Path, default=HERE / "out", help="where each run gets its folder")
    p.add_argument(
        "--write-results", type=Path, metavar="PATH", help="also write the Markdown report here (bench/RESULTS.md)"
    )
    p.add_argument("--banner", default="", help="a line shown at the top of the report (e.g. the machine's state)")
    args = p.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "full"]
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in [*args.variants, *args.latency_variants]:
        if name not in variants.VARIANTS:
            p.error(f"unknown variant {name!r} (known: {', '.join(variants.VARIANTS)})")
    for name in args.memory_profiles:
        if name not in memory.PROFILES:
            p.error(f"unknown memory profile {name!r} (known: {', '.join(memory.PROFILES)})")
    for name in args.parts:
        if name not in PARTS:
            p.error(f"unknown part {name!r} (known: {', '.join(PARTS)})")
    for name in args.brokers:
        if name not in ("redis", "rabbitmq"):
            p.error(f"unknown broker {name!r} (redis or rabbitmq)")
    if "bare" not in args.variants and "throughput" in args.parts:
        args.variants.insert(0, "bare")  # every ratio is to bare Dramatiq of the same round
    return args


def say(text: str) -> None:
    print(text, flush=True)


def _reachable(args: argparse.Namespace) -> list[str]:
    """The brokers that answer; a broker that does not is dropped with a message."""
    brokers = []
    for kind in args.brokers:
        if kind == "rabbitmq" and machine.rabbitmq_version(args.amqp) is None:
            say(f"! RabbitMQ does not answer at {args.amqp}: skipping the RabbitMQ broker")
            continue
        brokers.append(kind)
    return brokers


def rotate(items: list[str], k: int) -> list[str]:
    """``items`` starting at position ``k``: each round runs the variants in another order."""
    k %= max(len(items), 1)
    return items[k:] + items[:k]


def _progress(cell: dict[str, Any], done: list[dict[str, Any]]) -> str:
    head = f"round {cell['round']} {cell['broker']:8} {cell['variant']:21}"
    if cell.get("status") != "ok":
        return f"{head} {cell.get('status')}: {cell.get('error')}"
    proc = cell["process"]
    bare = next(
        (c for c in done if c.get("status") == "ok" and c["variant"] == "bare"
         and c["broker"] == cell["broker"] and c["round"] == cell["round"]),
        None,
    )  # fmt: skip
    versus = f" ({proc['jobs_per_s'] / bare['process']['jobs_per_s']:.2f}x bare)" if bare and bare is not cell else ""
    store = cell.get("store") or {}
    rt = f", store {store['round_trips']:.2f} round trips/job" if store else ""
    return (
        f"{head} {proc['jobs_per_s']:7,.0f} jobs/s{versus}, {proc['worker_cpu_us_per_job']:4.0f} µs CPU/job, "
        f"enqueue {cell['enqueue']['jobs_per_s']:6,.0f}/s{rt}"
    )


class Run:
    """One run: its settings, servers and results, saved after every measurement."""

    def __init__(self, args: argparse.Namespace, setup: Setup, brokers: list[str], results: dict[str, Any]) -> None:
        self.args = args
        self.setup = setup
        self.brokers = brokers
        self.results = results
        self.path = setup.out / "results.json"

    def save(self) -> None:
        self.path.write_text(json.dumps(self.results, indent=1, default=str))

    def throughput(self, runnable: list[str]) -> None:
        args = self.args
        total = args.rounds * len(self.brokers) * len(runnable)
        say(f"\n== throughput: {args.jobs:,} jobs x {total} measurements")
        done = self.results["throughput"]
        for r in range(args.rounds):
            for kind in self.brokers:
                for name in rotate(runnable, r):
                    cell = run_cell(self.setup, kind, name, r + 1, args.jobs)
                    done.append(cell)
                    say(f"[{len(done)}/{total}] {_progress(cell, done)}")
                    self.save()

    def latency(self, runnable: list[str]) -> None:
        args = self.args
        say(f"\n== latency: one job every {args.latency_interval_ms:g} ms, {args.latency_jobs:,} measured")
        for r in range(args.latency_rounds):
            for kind in self.brokers:
                for name in rotate(runnable, r):
                    cell = run_latency(
                        self.setup, kind, name, r + 1, args.latency_jobs,
                        interval_ms=args.latency_interval_ms, warmup=args.latency_warmup,
                    )  # fmt: skip
                    self.results["latency"].append(cell)
                    head = f"round {r + 1} {kind:8} {name:21}"
                    if cell.get("status") == "ok":
                        lat = cell["latency"]
                        say(f"{head} p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms")
                    else:
                        say(f"{head} {cell.get('status')}: {cell.get('error')}")
                    self.save()

    def memory_and_listing(self) -> None:
        args, setup = self.args, self.setup
        say(f"\n== memory and listing: {args.memory_count:,} items per profile")
        private = setup.store_server is not None
        for name in args.memory_profiles:
            # The CLI reads the default prefix: use it only on the harness's own server.
            prefix = "dr" if private else f"m{setup.run_id}{name}"
            profile = memory.measure(setup.store_url, prefix, name, args.memory_count)
            if "memory" in args.parts:
                self.results["memory"].append(profile)
            if profile.get("status") == "ok":
                say(f"{name:12} {profile['bytes_per_item']:,.0f} bytes per item ({profile['seconds']:.0f} s)")
            else:
                say(f"{name:12} {profile.get('status')}: {profile.get('error')}")
            if "listing" in args.parts and profile.get("status") == "ok":
                listing = None
                if name == _listing_profile(args.memory_profiles, "job"):
                    key = ("customer_id", "7") if name == "tracked" else None
                    listing = run_jobs_listing(
                        setup.store_url, prefix, actor=profile["actor"], key=key, reps=args.listing_reps, cli=private
                    )
                elif name == _listing_profile(args.memory_profiles, "dead"):
                    listing = run_dead_listing(
                        setup.store_url, prefix, actor=profile["actor"], reps=args.listing_reps, cli=private
                    )
                if listing is not None:
                    listing["records"] = profile["items_in_store"]
                    self.results["listing"].append(listing)
                    say(f"{'':12} {listing['what']} over {listing['records']:,} items timed")
            setup.reset_store(prefix)
            self.save()


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.monotonic()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    brokers = _reachable(args)
    if args.redis != "spawn":
        try:
            redis.Redis.from_url(args.redis, socket_connect_timeout=2).ping()
        except redis.RedisError as exc:
            say(f"error: Redis does not answer at {args.redis}: {exc}")
            return 3

    store_server = None if args.store_url else RedisServer(args.redis_server, name="store").start()
    broker_server = RedisServer(args.redis_server, name="broker").start() if args.redis == "spawn" else None
    try:
        setup = Setup(
            out=args.out,
            redis_url=broker_server.url if broker_server else args.redis,
            amqp_url=args.amqp,
            store_url=store_server.url if store_server else args.store_url,
            store_server=store_server,
            broker_server=broker_server,
            processes=args.processes,
            threads=args.threads,
        )
        setup.out = args.out / f"{stamp}-{setup.run_id}"
        setup.out.mkdir(parents=True, exist_ok=True)
        results: dict[str, Any] = {
            "banner": args.banner,
            "meta": machine.describe(
                store_url=setup.store_url,
                redis_url=setup.redis_url,
                amqp_url=args.amqp if "rabbitmq" in brokers else None,
            ),
            "settings": {
                "run_id": setup.run_id,
                "parts": args.parts,
                "command": "python -m bench.run " + shlex.join(argv if argv is not None else sys.argv[1:]),
                "brokers": brokers,
                "variants": args.variants,
                "bundle": variants.bundle_members(),
                "jobs": args.jobs,
                "rounds": args.rounds,
                "processes": args.processes,
                "threads": args.threads,
                "store": "private redis-server" if store_server else args.store_url,
                "broker_redis": "private redis-server" if broker_server else args.redis,
            },
            "skipped": [],
            "throughput": [],
            "latency": [],
            "memory": [],
            "listing": [],
        }
        run = Run(args, setup, brokers, results)
        wanted = (args.variants if "throughput" in args.parts else []) + (
            args.latency_variants if "latency" in args.parts else []
        )
        for name in dict.fromkeys(wanted):
            why = variants.missing(name)
            if why:
                results["skipped"].append({"variant": name, "reason": why})
                say(f"- skipping variant {name}: {why}")
        say(f"run {setup.run_id}: output in {setup.out}; the bundle is {' + '.join(variants.bundle_members())}")

        if "throughput" in args.parts:
            run.throughput([v for v in args.variants if not variants.missing(v)])
        if "latency" in args.parts:
            run.latency([v for v in args.latency_variants if not variants.missing(v)])
        if "memory" in args.parts or "listing" in args.parts:
            run.memory_and_listing()

        results["duration_s"] = time.monotonic() - started
        results["meta"]["machine"]["loadavg_end"] = machine.loadavg()
        report.finish(results)
        run.save()
        text = report.render(results)
        (setup.out / "results.md").write_text(text + "\n")
        say("\n" + text)
        if args.write_results:
            args.write_results.write_text(text + "\n")
            say(f"\nwritten: {args.write_results}")
        say(f"\nresults: {run.path} ({results['duration_s'] / 60:.1f} min)")
        return 0
    finally:
        if broker_server is not None:
            broker_server.stop()
        if store_server is not None:
            store_server.stop()


def _listing_profile(profiles: list[str], kind: str) -> str | None:
    """The profile whose records the listing reads: ``tracked`` for jobs (it has business keys)."""
    mine = [p for p in profiles if memory.PROFILES[p].kind == kind]
    if kind == "job" and "tracked" in mine:
        return "tracked"
    return mine[0] if mine else None


if __name__ == "__main__":
    sys.exit(main())
