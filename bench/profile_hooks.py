"""Where a worker's CPU goes per job: py-spy samples of one worker process, grouped by hook.

``python -m bench.profile_hooks [--jobs N] [--brokers redis,rabbitmq] [--variants bare,bundle]``
(needs ``py-spy`` on the PATH or in the venv, and permission to attach to a child process).
For each broker and variant it queues ``N`` no-op jobs, starts ``dramatiq bench.app`` with one
process of 8 threads, samples that process (the thread holding the GIL only, so a sample is CPU spent in Python,
not a thread waiting, 250 Hz) until
the jobs are done, and prints the CPU microseconds per job of each group: a middleware hook
(``file:function``, the outermost frame of ours under Dramatiq's call of the hook), the store's
committer and heartbeat threads, the broker client (consumer, ack, enqueue), the rest.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import redis

from .app import build
from .workers import Fleet, children

RATE = 250
OURS = "dramatiq_reliable/"


def group(stack: list[str]) -> str:
    """The group of one sampled stack (outermost frame first; frames are ``Class.fn (file:line)``)."""
    names = [frame.split(" (")[0] for frame in stack]
    for i, name in enumerate(names):
        if name.startswith("Broker.emit_"):
            return f"hook {names[i + 1]}" if i + 1 < len(names) else "dramatiq's emit loop"
    joined = ";".join(stack)
    if "noop (bench/app.py" in joined:
        return "the job itself (one INCR)"
    if OURS in joined:
        if "journal" in joined or "_commit" in joined or "_buffer" in joined:
            return "store committer thread"
        if "_heartbeat" in joined or "_watcher" in joined:
            return "heartbeat / watcher threads"
        return "other dramatiq_reliable"
    if "pika/" in joined or "dramatiq/brokers/" in joined or "ConsumerThread" in joined:
        return "broker client and consumer thread"
    return "other (worker loop, decoding)"


def profile(kind: str, variant: str, jobs: int, redis_url: str, amqp_url: str, out: Path) -> Counter[str]:
    base = f"prof{uuid.uuid4().hex[:6]}"
    env = {
        "BENCH_BROKER_URL": redis_url if kind == "redis" else amqp_url,
        "BENCH_NAMESPACE": f"dramatiq-{base}",
        "BENCH_QUEUE": base,
        "BENCH_VARIANT": variant,
        "BENCH_STORE_URL": redis_url,
        "BENCH_PREFIX": base,
        "BENCH_COUNTER_URL": redis_url,
        "BENCH_COUNTER_KEY": f"{base}:count",
    }
    app = build(env)
    for i in range(jobs):
        app.noop.send(i)
    counter = redis.Redis.from_url(redis_url)
    fleet = Fleet("bench.app", env, out / f"{kind}-{variant}.log", processes=1, threads=8).start()
    raw = out / f"{kind}-{variant}.txt"
    try:
        assert fleet.proc is not None
        deadline = time.monotonic() + 60
        while not children(fleet.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = children(fleet.proc.pid)[0]
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        sampler = subprocess.Popen(
            [spy, "record", "-p", str(pid), "-r", str(RATE), "-f", "raw", "-o", str(raw), "--nonblocking", "--gil"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while int(counter.get(env["BENCH_COUNTER_KEY"]) or 0) < jobs and time.monotonic() < deadline + 300:
            time.sleep(0.1)
        sampler.send_signal(signal.SIGINT)
        sampler.wait(timeout=60)
    finally:
        fleet.stop()
        for key in counter.scan_iter(f"{base}*"):
            counter.delete(key)
    groups: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            groups[group(stack.split(";"))] += int(count)
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--brokers", default="redis,rabbitmq")
    parser.add_argument("--variants", default="bare,bundle")
    parser.add_argument("--redis", default=os.getenv("DR_TEST_REDIS", "redis://127.0.0.1:6379/14"))
    parser.add_argument("--amqp", default=os.getenv("DR_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/profile"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for kind in args.brokers.split(","):
        for variant in args.variants.split(","):
            groups = profile(kind, variant, args.jobs, args.redis, args.amqp, args.out)
            total = sum(groups.values())
            per_job = 1e6 / RATE / args.jobs
            print(f"\n{kind} / {variant}: {total * per_job:.0f} µs CPU per job ({total} samples)", flush=True)
            for name, n in groups.most_common():
                if n * per_job >= 2:
                    print(f"  {n * per_job:7.1f} µs  {name}", flush=True)


if __name__ == "__main__":
    main()
