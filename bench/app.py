"""The benchmark's Dramatiq app: no-op jobs, configured from the environment.

``dramatiq bench.app`` builds it from ``BENCH_*`` variables in each worker process; the
harness calls :func:`build` with the same mapping to send the jobs with the same middlewares.

``BENCH_BROKER_URL``   ``redis://…`` or ``amqp://…``
``BENCH_NAMESPACE``    the Dramatiq namespace on a Redis broker (unique per measurement)
``BENCH_QUEUE``        the queue name (unique per measurement)
``BENCH_VARIANT``      a name of :data:`bench.variants.VARIANTS`
``BENCH_STORE_URL``    the store's Redis (when the variant has a middleware of ours)
``BENCH_PREFIX``       the store's key prefix
``BENCH_COUNTER_URL``  the Redis where jobs count themselves
``BENCH_COUNTER_KEY``  the key ``noop`` increments; ``latency`` appends to ``<key>:lat``
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from types import SimpleNamespace

import dramatiq
import redis

import dramatiq_reliable as dr
from dramatiq_reliable.brokers import broker_from_url

from . import variants


def build(env: Mapping[str, str]) -> SimpleNamespace:
    """A broker with the variant's middlewares and the benchmark's actors."""
    url = env["BENCH_BROKER_URL"]
    options = {"namespace": env["BENCH_NAMESPACE"]} if url.startswith(("redis", "unix")) else {}
    broker = broker_from_url(url, **options)
    variant = env["BENCH_VARIANT"]
    store = None
    if variants.get(variant).uses_store:
        store = dr.RedisStore(env["BENCH_STORE_URL"], prefix=env["BENCH_PREFIX"])
    middlewares = variants.apply(variant, broker, store)

    # One client, created at import: shared safely by every worker thread of the process.
    counter = redis.Redis.from_url(env["BENCH_COUNTER_URL"])
    key = env["BENCH_COUNTER_KEY"]
    queue = env["BENCH_QUEUE"]

    @dramatiq.actor(broker=broker, queue_name=queue)
    def noop(i: int) -> None:
        """The job under test: one INCR, so the harness can count processed jobs."""
        counter.incr(key)

    @dramatiq.actor(broker=broker, queue_name=queue)
    def latency(i: int, sent_at: float) -> None:
        """Record how long after ``send()`` was called this job started (ms)."""
        waited_ms = (time.time() - sent_at) * 1000
        counter.rpush(key + ":lat", f"{i} {waited_ms:.3f}")

    return SimpleNamespace(
        broker=broker, store=store, middlewares=middlewares, counter=counter, noop=noop, latency=latency
    )


if "BENCH_BROKER_URL" in os.environ:  # imported by a `dramatiq` worker process
    app = build(os.environ)
    broker = app.broker
    dramatiq.set_broker(broker)
