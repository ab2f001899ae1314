"""CPU the bundle's hooks cost per job, in process, without a broker or worker threads.

``python -m bench.hook_cpu [--jobs N] [--threads T] [--variants bare,bundle] [--profile]``

Drives the hooks the way a Dramatiq worker does (``before_process_message``, the actor,
``after_process_message``, ``before_ack``, ``after_ack``) on a ``StubBroker``, for ``N``
messages built in memory (no enqueue), from ``T`` threads (8 by default: the group commit then
shares store calls as in a worker), against a ``RedisStore`` on a private ``redis-server``.
Prints the process CPU (every thread: the hooks, the journal's threads, the store's socket) per
job, and the store calls per job. It leaves out what the broker client costs, so the difference
bundle - bare is the bundle's own CPU; with ``--profile``, the functions where it goes
(``cProfile``, one thread, which inflates every figure but keeps their proportions).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import threading
import time
import uuid
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker

import dramatiq_reliable as dr

from .servers import RedisServer, read_counters


def _drive(broker: dramatiq.Broker, actor: Any, messages: list[dramatiq.Message[Any]]) -> None:
    for msg in messages:
        proxy = MessageProxy(msg)
        broker.emit_before("process_message", proxy)
        actor.fn(*proxy.args, **proxy.kwargs)
        broker.emit_after("process_message", proxy, result=None)
        broker.emit_before("ack", proxy)
        broker.emit_after("ack", proxy)


def measure(variant: str, jobs: int, threads: int, url: str, *, profile: bool = False) -> tuple[float, float]:
    """``(CPU µs per job, store calls per job)`` of ``variant`` over ``jobs`` messages."""
    broker = StubBroker()
    broker.emit_after("process_boot")
    store = None
    if variant == "bundle":
        store = dr.RedisStore(url, prefix=f"hc{uuid.uuid4().hex[:6]}")
        dr.install(broker, store, notifiers=[dr.LogNotifier()])

    @dramatiq.actor(broker=broker, queue_name="hc")
    def noop(i: int) -> None:
        pass

    worker = dramatiq.Worker(broker, worker_threads=1)
    broker.emit_before("worker_boot", worker)
    broker.emit_after("worker_boot", worker)
    # As sent by the harness with the bundle on the sending broker: the record is written at send.
    options = {"dr_recorded": 1} if store is not None else {}
    warm = [noop.message_with_options(args=(i,), **options) for i in range(200)]
    _drive(broker, noop, warm)
    if store is not None:
        store.journal.flush()
    messages = [noop.message_with_options(args=(i,), **options) for i in range(jobs)]
    chunks = [messages[i::threads] for i in range(threads)]
    client = store.client if store is not None else None
    before = read_counters(client).reads if client is not None else 0
    profiler = cProfile.Profile() if profile else None
    cpu0 = time.process_time()
    if profiler is not None:
        profiler.enable()
        _drive(broker, noop, messages)
        profiler.disable()
    else:
        pool = [threading.Thread(target=_drive, args=(broker, noop, chunk)) for chunk in chunks]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    if store is not None:
        store.journal.flush()
    cpu = time.process_time() - cpu0
    calls = (read_counters(client).reads - before - 1) / jobs if client is not None else 0.0
    broker.emit_before("worker_shutdown", worker)
    broker.emit_after("worker_shutdown", worker)
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(35)
    return cpu * 1e6 / jobs, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="bare,bundle")
    parser.add_argument("--profile", action="store_true", help="cProfile the bundle, one thread")
    args = parser.parse_args()
    server = RedisServer().start()
    url = f"redis://127.0.0.1:{server.port}/0"
    try:
        if args.profile:
            measure("bundle", args.jobs, 1, url, profile=True)
            return
        for r in range(args.rounds):
            row = []
            for variant in args.variants.split(","):
                us, calls = measure(variant, args.jobs, args.threads, url)
                row.append(f"{variant} {us:6.1f} µs/job, {calls:.2f} store calls/job")
            print(f"round {r + 1}: " + " | ".join(row), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
