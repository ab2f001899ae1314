"""The Alerts integration tests' app: the bundle with notifiers, metrics and Sentry from ``DR_TEST_*``.

Like ``apps.basic``: ``build(env)`` makes the broker, store and actors; ``dramatiq`` worker
processes run it at import with their environment. Extra variables:

* ``DR_TEST_WEBHOOK``: a webhook URL (``DR_TEST_WEBHOOK_TIMEOUT`` s, ``DR_TEST_WEBHOOK_RETRIES``);
* ``DR_TEST_LOG_NOTIFIER``: add a ``LogNotifier``;
* ``DR_TEST_SENTRY``: ``sentry_sdk.init`` with the Dramatiq integration and a transport that
  pushes each event (JSON) to the Redis list ``<prefix>:fx:sentry``, plus a ``SentryNotifier``;
* ``DR_TEST_METRICS_DIR``: ``dr.enable_metrics(DIR)``;
* ``DR_TEST_OPTIONS`` (JSON): more keywords for ``dr.install`` (``window``, ``queue_size``, …).
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


class SMTPError(Exception):
    """The invoice mail server refused the connection."""


#: A DSN with a password, which the ``login`` actor's error quotes (its password must never show).
DSN = "postgresql://app:dbpa55word-9f3@db.internal:5432/shop"


def init_sentry(effects: redis.Redis, key: str) -> None:
    import sentry_sdk
    from sentry_sdk.integrations.dramatiq import DramatiqIntegration
    from sentry_sdk.transport import Transport

    class ToRedis(Transport):
        def capture_envelope(self, envelope: Any) -> None:
            event = envelope.get_event()
            if event is not None:
                effects.rpush(key, json.dumps(event, default=str))

    sentry_sdk.init(
        dsn="http://public@127.0.0.1:9/1",
        transport=ToRedis,
        default_integrations=False,
        integrations=[DramatiqIntegration()],
    )


def build(env: Mapping[str, str], *, worker: bool = False) -> Any:
    """The app; ``worker=True`` in a worker process (Sentry and metrics are set up only there)."""
    url = env["DR_TEST_BROKER"]
    prefix = env["DR_TEST_PREFIX"]
    queue = env["DR_TEST_QUEUE"]
    effects = redis.Redis.from_url(env["DR_TEST_STORE"], decode_responses=True)
    notifiers: list[Any] = []
    if worker and env.get("DR_TEST_SENTRY"):
        init_sentry(effects, f"{prefix}:fx:sentry")  # before the broker: the integration patches it
        notifiers.append(dr.SentryNotifier())
    if worker and env.get("DR_TEST_METRICS_DIR"):
        dr.enable_metrics(env["DR_TEST_METRICS_DIR"])
    if env.get("DR_TEST_WEBHOOK"):
        timeout = float(env.get("DR_TEST_WEBHOOK_TIMEOUT", "5"))
        retries = int(env.get("DR_TEST_WEBHOOK_RETRIES", "0"))
        notifiers.append(dr.WebhookNotifier(env["DR_TEST_WEBHOOK"], timeout=timeout, retries=retries, backoff=0.05))
    if env.get("DR_TEST_LOG_NOTIFIER"):
        notifiers.append(dr.LogNotifier())
    broker = broker_from_url(url, **({"namespace": env["DR_TEST_NAMESPACE"]} if url.startswith("redis") else {}))
    store = dr.RedisStore(env["DR_TEST_STORE"], prefix=prefix)
    dr.install(broker, store, notifiers=notifiers, **json.loads(env.get("DR_TEST_OPTIONS") or "{}"))

    def actor(**options: Any) -> Any:
        return dramatiq.actor(broker=broker, queue_name=queue, **options)

    @actor(max_retries=0)
    def ok(i: int) -> None:
        pass

    @actor(max_retries=0)
    def nap(seconds: float) -> None:
        time.sleep(seconds)

    @actor(max_retries=0, track=("order_id",))
    def send_invoice(order_id: int) -> None:
        raise SMTPError(f"smtp.example.com:25 refused the connection (order {order_id})")

    @actor(max_retries=0)
    def parse(i: int) -> None:
        raise KeyError(f"field {i} missing")

    @actor(max_retries=0)
    def distinct(i: int) -> None:
        raise type(f"Error{i}", (Exception,), {})(f"failure {i}")  # a new error type: never throttled

    @actor(max_retries=0, track=("order_id",))
    def charge(order_id: int) -> None:
        raise ValueError(f"card declined for order {order_id}")

    @actor(max_retries=1, min_backoff=10, max_backoff=20)
    def login(order_id: int, password: str) -> None:
        raise ConnectionError(f"login with password {password!r} refused by {DSN} (order {order_id})")

    @actor(max_retries=0)
    def walk(tree: Any, token: str) -> None:
        pass

    return SimpleNamespace(
        broker=broker,
        store=store,
        effects=effects,
        ok=ok,
        nap=nap,
        send_invoice=send_invoice,
        parse=parse,
        distinct=distinct,
        charge=charge,
        login=login,
        walk=walk,
    )


if "DR_TEST_BROKER" in os.environ:  # imported by a `dramatiq` worker process
    app = build(os.environ, worker=True)
    broker = app.broker
    dramatiq.set_broker(broker)
