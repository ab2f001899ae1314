"""The operator controls' integration tests' app: jobs that wait, loop in steps, or retry late.

``build(env)`` makes a broker, a store and the actors from ``DR_TEST_*`` variables (see
``tests/conftest.py``), with a fast heartbeat (0.5 s) so that controls reach workers quickly.
Side effects are counted in Redis under the test's prefix.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import dramatiq
import redis

import dramatiq_reliable as dr
from dramatiq_reliable.brokers import broker_from_url

#: The heartbeat interval of the workers (seconds): controls reach them within it.
BEAT = 0.5


def build(env: Mapping[str, str]) -> Any:
    url = env["DR_TEST_BROKER"]
    prefix = env["DR_TEST_PREFIX"]
    queue = env["DR_TEST_QUEUE"]
    broker = broker_from_url(url, **({"namespace": env["DR_TEST_NAMESPACE"]} if url.startswith("redis") else {}))
    store = dr.RedisStore(env["DR_TEST_STORE"], prefix=prefix, socket_timeout=2, socket_connect_timeout=2)
    dr.install(broker, store, heartbeat_interval=BEAT, abandon_after=5, sweep_interval=BEAT)
    effects = redis.Redis.from_url(env["DR_TEST_STORE"], decode_responses=True)

    def fx(name: str) -> str:
        return f"{prefix}:fx:{name}"

    def actor(**options: Any) -> Any:
        return dramatiq.actor(broker=broker, queue_name=queue, **options)

    @actor(max_retries=0)
    def ok(i: int) -> None:
        effects.incr(fx("ok"))
        effects.sadd(fx("ok:ids"), i)

    def step(i: int) -> int:
        effects.incr(fx("steps"))
        return i

    @actor(max_retries=3, min_backoff=100, max_backoff=200, idempotency_key="steps:{tag}")
    def steps(tag: str, n: int) -> None:
        effects.set(fx(f"started:{tag}"), 1)
        for i in range(n):
            dr.once(f"s{i}", step, i)
            time.sleep(0.05)
        effects.incr(fx(f"finished:{tag}"))

    @actor(max_retries=3, min_backoff=100, max_backoff=200, cancellable="interrupt")
    def spin(tag: str, seconds: float) -> None:
        effects.set(fx(f"started:{tag}"), os.getpid())
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.01)
        effects.incr(fx(f"finished:{tag}"))

    @actor(max_retries=3, min_backoff=120_000, max_backoff=120_000)
    def late(tag: str) -> None:
        n = effects.incr(fx(f"late:{tag}"))
        if n == 1:
            raise ValueError("the first attempt fails; the next is two minutes later")

    return SimpleNamespace(broker=broker, store=store, effects=effects, fx=fx, ok=ok, steps=steps, spin=spin, late=late)


if "DR_TEST_BROKER" in os.environ:  # imported by a `dramatiq` worker process
    app = build(os.environ)
    broker = app.broker
    dramatiq.set_broker(broker)
