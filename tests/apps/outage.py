"""The store-outage test's app: keyed and keyless jobs that note, outside the store, when they ran.

``build(env)`` reads the ``DR_TEST_*`` variables of ``tests/conftest.py``, plus:

* ``DR_TEST_EFFECTS``: the Redis URL where side effects and alerts are noted (the shared test
  Redis, which stays up while the test stops the store's own server);
* ``DR_TEST_MAX_BACKLOG``: the writes each worker process buffers while the store is down
  (small, so that a test of a few seconds fills it as a long outage fills the default).

Keyed jobs whose key cannot be checked are put back every :data:`PUT_BACK_S` second (instead
of 10), so that a short outage makes as much put-back churn as a long one.

Side effects, in hashes under the test's prefix, field = message id, value = milliseconds:
``fx:ran`` (the job's body began) and ``fx:ended`` (it returned). Every alert is pushed, as
JSON, to the list ``fx:alerts``.
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
from dramatiq_reliable.middleware import idempotency

#: Seconds before a keyed job whose key could not be checked is delivered again.
PUT_BACK_S = 1


class SmallBuffer(dramatiq.Middleware):
    """Gives each worker process's journal a buffer of ``size`` writes."""

    def __init__(self, store: dr.Store, size: int) -> None:
        self.store = store
        self.size = size

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.store.journal.max_backlog = self.size


def build(env: Mapping[str, str]) -> Any:
    url = env["DR_TEST_BROKER"]
    prefix = env["DR_TEST_PREFIX"]
    queue = env["DR_TEST_QUEUE"]
    broker = broker_from_url(url, **({"namespace": env["DR_TEST_NAMESPACE"]} if url.startswith("redis") else {}))
    store = dr.RedisStore(env["DR_TEST_STORE"], prefix=prefix, socket_timeout=1, socket_connect_timeout=1)
    effects = redis.Redis.from_url(env.get("DR_TEST_EFFECTS") or env["DR_TEST_STORE"], decode_responses=True)

    def fx(name: str) -> str:
        return f"{prefix}:fx:{name}"

    def count_alert(alert: dr.Alert) -> None:
        effects.rpush(fx("alerts"), json.dumps(alert.to_json(), default=str))

    dr.install(broker, store, notifiers=[count_alert])
    if env.get("DR_TEST_MAX_BACKLOG"):
        broker.add_middleware(SmallBuffer(store, int(env["DR_TEST_MAX_BACKLOG"])))
    idempotency.STORE_ERROR_DELAY = PUT_BACK_S

    def note(name: str) -> None:
        job = dr.current_job()
        assert job is not None
        effects.hset(fx(name), job.id, int(time.time() * 1000))

    def actor(**options: Any) -> Any:
        return dramatiq.actor(broker=broker, queue_name=queue, max_retries=3, **options)

    @actor()
    def plain(i: int, work: float = 0.0) -> None:
        note("ran")
        time.sleep(work)
        note("ended")

    @actor(idempotency_key="keyed:{i}")
    def keyed(i: int) -> None:
        note("ran")
        note("ended")

    return SimpleNamespace(broker=broker, store=store, effects=effects, fx=fx, plain=plain, keyed=keyed)


if "DR_TEST_BROKER" in os.environ:  # imported by a `dramatiq` worker process
    app = build(os.environ)
    broker = app.broker
    dramatiq.set_broker(broker)
