"""The Watchdog's integration app: the bundle with small intervals, and jobs that hang or hold on.

``build(env)`` reads the ``DR_TEST_*`` variables of ``tests/conftest.py``; ``DR_TEST_OPTIONS``
(JSON) holds extra keywords for ``dr.install``, and ``DR_TEST_WATCHDOG=0`` installs JobState and
Idempotency without the Watchdog (to measure Dramatiq's own recovery).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import dramatiq
import redis

import dramatiq_reliable as dr
from dramatiq_reliable.brokers import broker_from_url
from dramatiq_reliable.install import add

#: Small intervals so that the tests take seconds.
FAST = {"heartbeat_interval": 0.5, "abandon_after": 3, "sweep_interval": 0.5}


def build(env: Mapping[str, str]) -> Any:
    if env.get("DR_TEST_CLOCK_OFFSET"):
        # A host whose clock is off: the bundle's clock, shifted by this many seconds.
        from dramatiq_reliable import _clock

        offset = float(env["DR_TEST_CLOCK_OFFSET"])
        _clock.clock = lambda: time.time() + offset
    url = env["DR_TEST_BROKER"]
    prefix = env["DR_TEST_PREFIX"]
    queue = env["DR_TEST_QUEUE"]
    broker = broker_from_url(url, **({"namespace": env["DR_TEST_NAMESPACE"]} if url.startswith("redis") else {}))
    store = dr.RedisStore(env["DR_TEST_STORE"], prefix=prefix)
    options = {**FAST, **json.loads(env.get("DR_TEST_OPTIONS") or "{}")}
    watchdog = env.get("DR_TEST_WATCHDOG") != "0"
    if not watchdog:
        for middleware in (dr.JobState(store), dr.Idempotency(store)):
            add(broker, middleware)
    else:
        dr.install(broker, store, **options)

    effects = redis.Redis.from_url(env.get("DR_TEST_EFFECTS") or env["DR_TEST_STORE"], decode_responses=True)

    def fx(name: str) -> str:
        return f"{prefix}:fx:{name}"

    def actor(**opts: Any) -> Any:
        return dramatiq.actor(broker=broker, queue_name=queue, **opts)

    @actor(max_retries=0)
    def hold(tag: str, limit: float = 60.0) -> None:
        """Runs until the test sets ``fx:release:<tag>`` (or ``limit`` seconds pass)."""
        effects.incr(fx(f"hold:{tag}:runs"))
        deadline = time.monotonic() + limit
        while not effects.get(fx(f"release:{tag}")) and time.monotonic() < deadline:
            time.sleep(0.1)
        effects.incr(fx(f"hold:{tag}:done"))

    @actor(max_retries=0, **({"stuck_after": 1.5} if watchdog else {}))
    def stall(seconds: float) -> None:
        time.sleep(seconds)

    @actor(max_retries=0)
    def busy(seconds: float, spin: bool = False) -> None:
        """Runs ``seconds``, asleep or holding the CPU (the GIL, between switches)."""
        deadline = time.monotonic() + seconds
        if spin:
            while time.monotonic() < deadline:
                sum(range(1000))
        else:
            time.sleep(seconds)
        effects.incr(fx("busy:done"))

    @actor(max_retries=3, idempotency_key="charge:{order_id}", min_backoff=100, max_backoff=300)
    def charge(order_id: int, tag: str) -> None:
        effects.incr(fx(f"charge:{order_id}:runs"))
        while not effects.get(fx(f"release:{tag}")):
            time.sleep(0.1)

    return SimpleNamespace(
        broker=broker, store=store, effects=effects, fx=fx, hold=hold, stall=stall, busy=busy, charge=charge
    )


if "DR_TEST_BROKER" in os.environ:  # imported by a `dramatiq` worker process
    app = build(os.environ)
    broker = app.broker
    dramatiq.set_broker(broker)
