"""The integration tests' app: the whole bundle, actors for every path, side effects counted in Redis.

``build(env)`` makes a broker, a store and the actors from ``DR_TEST_*`` variables (see
``tests/conftest.py``): the ``dramatiq`` worker processes run it at import, with their
environment; a test calls it with its ``server_env`` to get the same actors for sending.
``DR_TEST_OPTIONS`` (JSON) holds extra keywords for ``dr.install``.
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

FAST = {"min_backoff": 100, "max_backoff": 300}


def build(env: Mapping[str, str]) -> Any:
    url = env["DR_TEST_BROKER"]
    prefix = env["DR_TEST_PREFIX"]
    queue = env["DR_TEST_QUEUE"]
    broker = broker_from_url(url, **({"namespace": env["DR_TEST_NAMESPACE"]} if url.startswith("redis") else {}))
    store = dr.RedisStore(env["DR_TEST_STORE"], prefix=prefix, socket_timeout=1, socket_connect_timeout=1)
    options = json.loads(env.get("DR_TEST_OPTIONS") or "{}")
    only = env.get("DR_TEST_MIDDLEWARE")
    if only:  # a subset of the bundle, e.g. "JobState" or "JobState,Idempotency"
        for name in only.split(","):
            dr.install_one(broker, getattr(dr, name)(store, **options.get(name, {})))
    else:
        dr.install(broker, store, **options)

    # Side effects are counted here, outside the worker, under the test's prefix (on the shared
    # test Redis even when the store is a private server that a test stops).
    effects = redis.Redis.from_url(env.get("DR_TEST_EFFECTS") or env["DR_TEST_STORE"], decode_responses=True)

    def fx(name: str) -> str:
        return f"{prefix}:fx:{name}"

    def actor(**options: Any) -> Any:
        # With a subset of the bundle, options of the middlewares left out are dropped.
        known = {k: v for k, v in options.items() if k in broker.actor_options}
        return dramatiq.actor(broker=broker, queue_name=queue, **known)

    @actor(max_retries=0)
    def ok(i: int) -> None:
        effects.incr(fx("ok"))

    @actor(max_retries=3, **FAST)
    def flaky(i: int, fails: int = 1) -> None:
        job = dr.current_job()
        assert job is not None
        effects.incr(fx(f"flaky:{i}"))
        if job.attempt <= fails:
            raise ValueError(f"flaky {i} fails attempt {job.attempt}")

    @actor(max_retries=1, **FAST)
    def doomed(i: int) -> None:
        effects.incr(fx("doomed"))
        raise RuntimeError(f"doomed {i} cannot succeed")

    @actor(max_retries=0)
    def sleepy(seconds: float, tag: str = "") -> None:
        time.sleep(seconds)
        effects.incr(fx(f"sleepy:{tag}"))

    def charge(order_id: int) -> dict[str, str]:
        effects.incr(fx(f"charge:{order_id}"))
        return {"receipt": f"r-{order_id}"}

    def email(customer_id: int, receipt: dict[str, str]) -> bool:
        effects.incr(fx(f"email:{customer_id}"))
        return True

    @actor(max_retries=5, track=("order_id", "customer_id"), idempotency_key="invoice:{order_id}", **FAST)
    def invoice(order_id: int, customer_id: int, work: float = 0.0) -> None:
        effects.rpush(fx("starts"), f"{order_id} {time.time()}")
        receipt = dr.once("charge", charge, order_id) if "idempotency_key" in broker.actor_options else {}
        if work:
            # Between the two steps: a marker tells a test this process is safely mid-job.
            effects.set(fx(f"mid:{os.getpid()}"), order_id)
            time.sleep(work)
            effects.delete(fx(f"mid:{os.getpid()}"))
        if effects.get(fx("break_email")):
            raise ConnectionError("SMTP server timed out")
        if "idempotency_key" in broker.actor_options:
            dr.once("email", email, customer_id, receipt)
        effects.rpush(fx("ends"), f"{order_id} {time.time()}")

    @actor(max_retries=0, idempotency_key="ping:{key}", idempotency_ttl=1)
    def ping(key: str) -> None:
        effects.incr(fx(f"ping:{key}"))

    @actor(max_retries=0, unique=True, idempotency_key="report:{day}")
    def report(day: str, seconds: float = 0.5) -> None:
        time.sleep(seconds)
        effects.incr(fx(f"report:{day}"))

    return SimpleNamespace(
        broker=broker,
        store=store,
        effects=effects,
        fx=fx,
        ok=ok,
        flaky=flaky,
        doomed=doomed,
        sleepy=sleepy,
        invoice=invoice,
        ping=ping,
        report=report,
    )


if "DR_TEST_BROKER" in os.environ:  # imported by a `dramatiq` worker process
    app = build(os.environ)
    broker = app.broker
    dramatiq.set_broker(broker)
