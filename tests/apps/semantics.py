"""The idempotency semantics' app: actors whose keys collide across actors, and unique actors.

``build(env)`` reads the ``DR_TEST_*`` variables of ``tests/conftest.py``. Every run is counted
in Redis under the test's prefix (``fx:<actor>:<argument>``), outside the worker.
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


def build(env: Mapping[str, str]) -> Any:
    url = env["DR_TEST_BROKER"]
    prefix = env["DR_TEST_PREFIX"]
    broker = broker_from_url(url, **({"namespace": env["DR_TEST_NAMESPACE"]} if url.startswith("redis") else {}))
    store = dr.RedisStore(env["DR_TEST_STORE"], prefix=prefix)
    dr.install(broker, store)
    effects = redis.Redis.from_url(env["DR_TEST_STORE"], decode_responses=True)

    def ran(name: str) -> None:
        effects.incr(f"{prefix}:fx:{name}")

    def actor(**options: Any) -> Any:
        return dramatiq.actor(broker=broker, queue_name=env["DR_TEST_QUEUE"], max_retries=0, **options)

    # Two actors whose templates render the same string for the same order.
    @actor(track=("order_id",), idempotency_key="{order_id}")
    def invoice(order_id: int) -> None:
        ran(f"invoice:{order_id}")

    @actor(track=("order_id",), idempotency_key="{order_id}")
    def ship(order_id: int) -> None:
        ran(f"ship:{order_id}")

    # unique without a key: a reservation while pending, then a new job for the same send.
    @actor(unique=True)
    def refresh(account: str, seconds: float = 0.0) -> None:
        time.sleep(seconds)
        ran(f"refresh:{account}")

    # unique with a key: the reservation, and the key's idempotency once completed.
    @actor(unique=True, idempotency_key="sync:{account}")
    def sync(account: str, seconds: float = 0.0) -> None:
        time.sleep(seconds)
        ran(f"sync:{account}")

    return SimpleNamespace(
        broker=broker, store=store, effects=effects, invoice=invoice, ship=ship, refresh=refresh, sync=sync
    )


if "DR_TEST_BROKER" in os.environ:  # imported by a `dramatiq` worker process
    app = build(os.environ)
    broker = app.broker
    dramatiq.set_broker(broker)
