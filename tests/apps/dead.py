"""The dead-letter integration tests' app: actors that die while a switch in Redis is on.

``build(env)`` makes a broker, a store and the actors from ``DR_TEST_*`` variables (see
``tests/conftest.py``). ``DR_TEST_DEAD=off`` leaves DeadLetters out (JobState and Idempotency
only), for dead letters the store never sees. Side effects are counted in Redis, under the
test's prefix.
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


class SMTPTimeout(Exception):
    """What the mail server does while the switch is on."""


def quorum_broker(url: str, limit: int) -> dramatiq.Broker:
    """Quorum queues with a delivery limit of ``limit``, the ``.XQ``'s included (as RabbitMQ 4's
    default limit, or an operator's policy, would have it)."""
    from dramatiq.common import xq_name

    class Limited(dr.QuorumRabbitmqBroker):
        def _declare_xq_queue(self, queue_name: str) -> Any:
            arguments = {"x-queue-type": "quorum", "x-message-ttl": 86_400_000, "x-delivery-limit": limit}
            return self.channel.queue_declare(queue=xq_name(queue_name), durable=True, arguments=arguments)

    return Limited(url=url, delivery_limit=limit)


def build(env: Mapping[str, str]) -> Any:
    url = env["DR_TEST_BROKER"]
    prefix = env["DR_TEST_PREFIX"]
    queue = env["DR_TEST_QUEUE"]
    if env.get("DR_TEST_QUORUM"):
        broker: dramatiq.Broker = quorum_broker(url, int(env["DR_TEST_QUORUM"]))
    else:
        broker = broker_from_url(url, **({"namespace": env["DR_TEST_NAMESPACE"]} if url.startswith("redis") else {}))
    store = dr.RedisStore(env["DR_TEST_STORE"], prefix=prefix)
    if env.get("DR_TEST_DEAD", "on") == "on":
        dr.install(broker, store, **json.loads(env.get("DR_TEST_OPTIONS") or "{}"))
    else:
        add(broker, dr.JobState(store))
        add(broker, dr.Idempotency(store))
    effects = redis.Redis.from_url(env["DR_TEST_STORE"], decode_responses=True)

    def fx(name: str) -> str:
        return f"{prefix}:fx:{name}"

    def broken() -> bool:
        return bool(effects.get(fx("broken")))

    def actor(**options: Any) -> Any:
        return dramatiq.actor(broker=broker, queue_name=queue, **options)

    @actor(max_retries=1, min_backoff=100, max_backoff=200)
    def fragile(i: int) -> None:
        """Retried once, then dead-lettered, while the switch is on."""
        job = dr.current_job()
        assert job is not None
        effects.hincrby(fx("fragile"), str(i), 1)
        if broken():
            raise SMTPTimeout(f"SMTP timed out for {i} (attempt {job.attempt})")

    @actor(throws=(SMTPTimeout,))
    def mailer(i: int) -> None:
        """Dead-lettered at once (a ``throws`` error) while the switch is on."""
        effects.hincrby(fx("mailer"), str(i), 1)
        if broken():
            raise SMTPTimeout("SMTP timed out")

    @actor(max_retries=0)
    def slow(seconds: float, tag: str) -> None:
        time.sleep(seconds)
        effects.hincrby(fx("slow"), tag, 1)

    @actor(max_retries=0)
    def ok(i: int) -> None:
        effects.hincrby(fx("ok"), str(i), 1)

    def switch(on: bool) -> None:
        if on:
            effects.set(fx("broken"), "1")
        else:
            effects.delete(fx("broken"))

    def runs(name: str) -> dict[str, int]:
        return {k: int(v) for k, v in effects.hgetall(fx(name)).items()}

    return SimpleNamespace(
        broker=broker,
        store=store,
        effects=effects,
        fx=fx,
        fragile=fragile,
        mailer=mailer,
        slow=slow,
        ok=ok,
        switch=switch,
        runs=runs,
    )


if "DR_TEST_BROKER" in os.environ:  # imported by a `dramatiq` worker process
    app = build(os.environ)
    broker = app.broker
    dramatiq.set_broker(broker)
