"""The cron integration tests' app: the bundle, one ``@dr.cron`` actor, ticks counted in Redis.

Configured by the ``DR_TEST_*`` variables of ``tests/conftest.py``, plus:

* ``DR_TEST_CRON_EXPR`` / ``DR_TEST_CRON_TZ``: the schedule (default: every second, UTC);
* ``DR_TEST_CRON_COUNT=1``: count every enqueue of a tick in this process
  (``<prefix>:fx:enq:<fire ms>``), as a scheduler process sees it;
* ``DR_TEST_CRON_DIE=1``: SIGKILL this process at its first enqueue of a tick, after the
  claim and before the message is published (a scheduler dying at the worst moment);
* ``DR_TEST_CRON_UNIQUE=1``: the actor is ``unique=True``.

The actor counts its runs per fire time (``<prefix>:fx:ran:<fire ms>``).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import dramatiq
import redis

import dramatiq_reliable as dr
from dramatiq_reliable.actors.cron import FIRE_OPTION
from dramatiq_reliable.brokers import broker_from_url


class TickProbe(dramatiq.Middleware):
    """Counts (or dies at) the enqueues of cron ticks in a scheduler process."""

    def __init__(self, effects: redis.Redis, prefix: str, *, count: bool, die: bool) -> None:
        self.effects, self.prefix, self.count, self.die = effects, prefix, count, die

    def before_enqueue(self, broker: dramatiq.Broker, message: Any, delay: Any) -> None:
        if self.die and FIRE_OPTION in message.options:
            os.kill(os.getpid(), signal.SIGKILL)

    def after_enqueue(self, broker: dramatiq.Broker, message: Any, delay: Any) -> None:
        if self.count and FIRE_OPTION in message.options and delay is None:
            self.effects.incr(f"{self.prefix}:fx:enq:{message.options[FIRE_OPTION]}")


def build(env: Mapping[str, str]) -> Any:
    url = env["DR_TEST_BROKER"]
    prefix = env["DR_TEST_PREFIX"]
    broker = broker_from_url(url, **({"namespace": env["DR_TEST_NAMESPACE"]} if url.startswith("redis") else {}))
    store = dr.RedisStore(env["DR_TEST_STORE"], prefix=prefix)
    effects = redis.Redis.from_url(env["DR_TEST_STORE"], decode_responses=True)
    count, die = env.get("DR_TEST_CRON_COUNT") == "1", env.get("DR_TEST_CRON_DIE") == "1"
    probe = TickProbe(effects, prefix, count=count, die=die)
    broker.add_middleware(probe)
    dr.install(broker, store)

    unique = env.get("DR_TEST_CRON_UNIQUE") == "1"

    @dr.cron(env.get("DR_TEST_CRON_EXPR", "* * * * * *"), timezone=env.get("DR_TEST_CRON_TZ", "UTC"), args=(7,))
    @dramatiq.actor(broker=broker, queue_name=env["DR_TEST_QUEUE"], max_retries=0, unique=unique)
    def tick(n: int) -> None:
        job = dr.current_job()
        assert job is not None and n == 7
        effects.incr(f"{prefix}:fx:ran:{job.message.options[FIRE_OPTION]}")

    return SimpleNamespace(broker=broker, store=store, effects=effects, tick=tick)


if "DR_TEST_BROKER" in os.environ:  # imported by a `dramatiq` worker or a scheduler process
    app = build(os.environ)
    broker = app.broker
    dramatiq.set_broker(broker)
