"""Redis memory per retained finished job and per dead letter.

The jobs run through the real middlewares in this process: a ``StubBroker``, the variant's
middlewares on the real ``RedisStore`` (the harness's private ``redis-server``), and an
in-process ``dramatiq.Worker`` with 8 threads. So the records, indexes and keys are exactly
those a worker writes, through the same Lua script and group commit; only the broker is not
a real one, and the broker does not write to the store.

A warm-up batch runs first (script loaded, indexes created); the figure is the growth of
``used_memory`` over the next ``count`` jobs, divided by ``count``. A breakdown by key family
(``MEMORY USAGE`` of every key under the prefix) says where the bytes go.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import QueueJoinTimeout

import dramatiq_reliable as dr

from . import variants

QUEUE = "bench_memory"


@dataclass(frozen=True)
class Profile:
    name: str
    #: ``"job"`` (a retained finished job) or ``"dead"`` (a dead letter).
    kind: str
    variant: str
    description: str
    actor_options: dict[str, Any] = field(default_factory=dict)


PROFILES = {
    p.name: p
    for p in [
        Profile("plain", "job", "bundle", "noop(i): one int argument, no business key, no idempotency key"),
        Profile(
            "tracked",
            "job",
            "bundle",
            'invoice(order_id, customer_id), track=("order_id", "customer_id"), '
            'idempotency_key="invoice:{order_id}" (every order_id distinct, 1,000 customers)',
            {"track": ("order_id", "customer_id"), "idempotency_key": "invoice:{order_id}"},
        ),
        Profile("dead", "dead", "deadletters", "doomed(i) raises at once (max_retries=0); DeadLetters alone"),
        Profile(
            "dead+record",
            "dead",
            "bundle",
            "doomed(i) raises at once (max_retries=0); the bundle: the dead letter and its failed job record",
        ),
    ]
}
DEFAULT = ["plain", "tracked", "dead"]


def _declare(broker: dramatiq.Broker, profile: Profile) -> tuple[dramatiq.Actor[Any, Any], Callable[[int], Any]]:
    options = {"broker": broker, "queue_name": QUEUE, **profile.actor_options}
    if profile.kind == "dead":

        def doomed(i: int) -> None:
            raise RuntimeError(f"job {i} cannot succeed: the remote service answered 503")

        actor = dramatiq.actor(max_retries=0, **options)(doomed)
        return actor, actor.send
    if profile.name == "tracked":

        def invoice(order_id: int, customer_id: int) -> None:
            pass

        actor = dramatiq.actor(**options)(invoice)
        return actor, lambda i: actor.send(order_id=i, customer_id=i % 1000)

    def noop(i: int) -> None:
        pass

    actor = dramatiq.actor(**options)(noop)
    return actor, actor.send


def _send_all(send: Callable[[int], Any], first: int, count: int, threads: int = 8) -> None:
    """Send ``count`` jobs from ``threads`` threads (their store writes share group commits)."""

    def part(k: int) -> None:
        for i in range(first + k, first + count, threads):
            send(i)

    pool = [threading.Thread(target=part, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def _drain(broker: StubBroker, worker: dramatiq.Worker, store: dr.Store) -> None:
    """Wait until every job ran and its writes reached the store."""
    while True:
        try:
            broker.join(QUEUE, timeout=1000, fail_fast=False)
            break
        except QueueJoinTimeout:
            for dead in broker.dead_letters_by_queue.values():
                dead.clear()  # the stub keeps every dead letter (and its traceback) in memory
    worker.join()
    for dead in broker.dead_letters_by_queue.values():
        dead.clear()
    store.journal.flush(timeout=30)


def _used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def family(key: str, prefix: str) -> str:
    """With ``prefix="dr:"``: ``dr:jobs:s:done:noop`` → ``jobs:s``; ``dr:job:<id>`` → ``job``."""
    parts = key[len(prefix) :].split(":")
    return ":".join(parts[:2]) if len(parts) > 2 else parts[0]


def breakdown(client: redis.Redis, prefix: str) -> dict[str, dict[str, int]]:
    """Keys and bytes (``MEMORY USAGE``) of each key family under the store prefix ``prefix``."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"keys": 0, "bytes": 0})
    batch: list[str] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key, samples=0)
        for key, size in zip(batch, pipe.execute(), strict=True):
            row = out[family(key, prefix)]
            row["keys"] += 1
            row["bytes"] += int(size or 0)
        batch.clear()

    prefix += ":"
    for raw in client.scan_iter(match=prefix + "*", count=2000):
        batch.append(raw.decode() if isinstance(raw, bytes) else raw)
        if len(batch) >= 1000:
            flush()
    if batch:
        flush()
    return dict(sorted(out.items()))


def measure(
    store_url: str,
    prefix: str,
    name: str,
    count: int,
    *,
    warmup: int = 1000,
    threads: int = 8,
) -> dict[str, Any]:
    """Run ``count`` jobs of profile ``name`` through the real middlewares; Redis bytes per job.

    The records stay under ``prefix`` afterwards (the listing benchmark reads them); the
    caller deletes them.
    """
    profile = PROFILES[name]
    result: dict[str, Any] = {
        "profile": name,
        "kind": profile.kind,
        "variant": profile.variant,
        "description": profile.description,
        "count": count,
        "prefix": prefix,
    }
    why = variants.missing(profile.variant)
    if why:
        result.update(status="skipped", error=why)
        return result
    client = redis.Redis.from_url(store_url)
    store = dr.RedisStore(store_url, prefix=prefix)
    broker = StubBroker(fail_fast_default=False)
    broker.emit_after("process_boot")
    quiet = [logging.getLogger(n) for n in ("dramatiq", "dramatiq_reliable")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    worker = None
    try:
        result["middlewares"] = variants.apply(profile.variant, broker, store)
        actor, send = _declare(broker, profile)
        result["actor"] = actor.actor_name
        worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=threads)
        worker.start()
        _send_all(send, 0, warmup, threads)
        _drain(broker, worker, store)
        before = _used_memory(client)
        started = time.perf_counter()
        _send_all(send, warmup, count, threads)
        _drain(broker, worker, store)
        result["seconds"] = time.perf_counter() - started
        after = _used_memory(client)
        result["used_memory_delta"] = after - before
        result["bytes_per_item"] = (after - before) / count
        result["items_in_store"] = warmup + count
        result["keys"] = breakdown(client, prefix)
        result["keys_bytes_per_item"] = {k: v["bytes"] / (count + warmup) for k, v in result["keys"].items()}
        status = "done" if profile.kind == "job" else "failed"
        result["records"] = store.count_jobs([status])
        result["status"] = "ok"
    except Exception as exc:
        result.update(status="error", error=f"{type(exc).__name__}: {exc}")
    finally:
        if worker is not None:
            worker.stop()
        broker.close()
        store.close()
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    return result
