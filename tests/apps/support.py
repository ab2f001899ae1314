"""The support page's integration tests' app: invoices that fail, with markup in the error, while an order is broken.

``build(env)`` makes a broker, a store and the actor from ``DR_TEST_*`` variables (see
``tests/conftest.py``). An order id in the set ``<prefix>:fx:broken`` makes its invoice fail
at once (a ``throws`` error: dead-lettered without retries). While ``<prefix>:fx:crm-down``
is set, ``sync_crm`` fails and is retried quickly, then recovers; ``charge`` has an
idempotency key, so a second charge of one order is a skipped duplicate.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import dramatiq
import redis

import dramatiq_reliable as dr
from dramatiq_reliable.brokers import broker_from_url

#: The error text of a broken order: markup the page must show as text.
MARKUP = "<b>card declined</b> <script>document.title='pwned'</script> & <i>more</i>"


class CardDeclined(Exception):
    """What the payment service answers for a broken order."""


class CrmDown(Exception):
    """What the CRM client raises while the CRM does not answer."""


def build(env: Mapping[str, str]) -> Any:
    url = env["DR_TEST_BROKER"]
    prefix = env["DR_TEST_PREFIX"]
    broker = broker_from_url(url, **({"namespace": env["DR_TEST_NAMESPACE"]} if url.startswith("redis") else {}))
    store = dr.RedisStore(env["DR_TEST_STORE"], prefix=prefix)
    dr.install(broker, store)
    effects = redis.Redis.from_url(env["DR_TEST_STORE"], decode_responses=True)
    broken = f"{prefix}:fx:broken"

    @dramatiq.actor(broker=broker, queue_name=env["DR_TEST_QUEUE"], throws=(CardDeclined,), track=("order_id",))
    def invoice(order_id: int, customer: str, card: str = "") -> None:
        if effects.sismember(broken, str(order_id)):
            raise CardDeclined(f"{MARKUP} (order {order_id})")

    crm_down = f"{prefix}:fx:crm-down"

    @dramatiq.actor(broker=broker, queue_name=env["DR_TEST_QUEUE"], max_retries=50, min_backoff=100, max_backoff=300)
    def sync_crm(customer: str) -> None:
        if effects.exists(crm_down):
            raise CrmDown(f"the CRM did not answer for {customer}")

    @dramatiq.actor(broker=broker, queue_name=env["DR_TEST_QUEUE"], idempotency_key="charge:{order_id}")
    def charge(order_id: int) -> None: ...

    def crm(up: bool) -> None:
        if up:
            effects.delete(crm_down)
        else:
            effects.set(crm_down, 1)

    def breaks(order_id: int, on: bool) -> None:
        if on:
            effects.sadd(broken, str(order_id))
        else:
            effects.srem(broken, str(order_id))

    return SimpleNamespace(
        broker=broker, store=store, invoice=invoice, breaks=breaks, sync_crm=sync_crm, charge=charge, crm=crm
    )


if "DR_TEST_BROKER" in os.environ:  # imported by a `dramatiq` worker process
    app = build(os.environ)
    broker = app.broker
    dramatiq.set_broker(broker)
