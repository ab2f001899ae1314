"""The fault-injection suite's app: the whole bundle, jobs whose side effects are counted outside.

``build(env)`` reads the ``DR_TEST_*`` variables of ``tests/conftest.py``, plus:

* ``DR_TEST_EFFECTS``: the Redis URL where side effects and alerts are counted (default: the
  store's), so that they stay countable while a test stops the store's server;
* ``DR_TEST_OPTIONS`` (JSON): keywords for ``dr.install``, on top of :data:`FAST`.

Side effects, in hashes under the test's prefix (one ``HINCRBY`` per call, field = order id):
``fx:charge`` and ``fx:email`` (the two ``dr.once`` steps of ``order``), ``fx:poison`` (each
attempt of ``poison``). Every alert is pushed, as JSON, to the list ``fx:alerts``; every run of
``order`` pushes ``[order id, time.time()]`` to the list ``fx:runs``.

``SIGUSR2`` to a worker process makes it ``SIGKILL`` itself at once, except while one of its
threads is between a ``dr.once`` step's side effect and the checkpoint of its result: there it
waits for those to end, holding back threads about to start a step. That window (a round trip
to the store) is the one no library can close (see ``dr.once``); anywhere else is fair game.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

import dramatiq
import redis

import dramatiq_reliable as dr
from dramatiq_reliable.brokers import broker_from_url

#: Small Watchdog intervals, so that a killed process's jobs come back within seconds.
FAST = {"heartbeat_interval": 0.5, "abandon_after": 3, "sweep_interval": 0.5, "lease": 10}
#: Retry backoff of the actors, in milliseconds.
BACKOFF = {"min_backoff": 100, "max_backoff": 1000}


class KillSwitch:
    """Kills this process (SIGKILL) on SIGUSR2, outside the windows of ``dr.once`` steps."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.in_step = 0
        self.dying = False
        self.local = threading.local()

    def install(self) -> None:
        signal.signal(signal.SIGUSR2, lambda *_: self.die())

    def die(self) -> None:
        with self.cond:
            self.dying = True  # no thread starts a step from now on
            self.cond.wait_for(lambda: self.in_step == 0, timeout=30)
            os.kill(os.getpid(), signal.SIGKILL)

    def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``dr.once(name, fn, *args)``, the process never killed between ``fn`` and its checkpoint."""

        def guarded(*a: Any) -> Any:
            with self.cond:
                self.cond.wait_for(lambda: not self.dying)
                self.in_step += 1
            self.local.entered = True
            return fn(*a)

        self.local.entered = False
        try:
            return dr.once(name, guarded, *args)
        finally:
            if self.local.entered:
                with self.cond:
                    self.in_step -= 1
                    self.cond.notify_all()


def build(env: Mapping[str, str]) -> Any:
    url = env["DR_TEST_BROKER"]
    prefix = env["DR_TEST_PREFIX"]
    queue = env["DR_TEST_QUEUE"]
    broker = broker_from_url(url, **({"namespace": env["DR_TEST_NAMESPACE"]} if url.startswith("redis") else {}))
    store = dr.RedisStore(env["DR_TEST_STORE"], prefix=prefix, socket_timeout=2, socket_connect_timeout=1)
    effects = redis.Redis.from_url(env.get("DR_TEST_EFFECTS") or env["DR_TEST_STORE"], decode_responses=True)

    def fx(name: str) -> str:
        return f"{prefix}:fx:{name}"

    def count_alert(alert: dr.Alert) -> None:
        effects.rpush(fx("alerts"), json.dumps(alert.to_json(), default=str))

    options = {**FAST, **json.loads(env.get("DR_TEST_OPTIONS") or "{}")}
    dr.install(broker, store, notifiers=[count_alert], **options)
    switch = KillSwitch()

    def actor(**opts: Any) -> Any:
        return dramatiq.actor(broker=broker, queue_name=queue, **opts)

    def charge(order_id: int) -> dict[str, str]:
        effects.hincrby(fx("charge"), str(order_id), 1)
        return {"receipt": f"r-{order_id}"}

    def email(order_id: int, receipt: dict[str, str]) -> bool:
        effects.hincrby(fx("email"), str(order_id), 1)
        return True

    @actor(max_retries=10, track=("order_id",), idempotency_key="order:{order_id}", **BACKOFF)
    def order(order_id: int, work: float = 0.0) -> None:
        """Charge, work a while, then email: each step once per order, across attempts."""
        effects.rpush(fx("runs"), json.dumps([order_id, time.time()]))  # when each run began
        receipt = switch.step("charge", charge, order_id)
        if work:
            time.sleep(work)
        switch.step("email", email, order_id, receipt)

    @actor(max_retries=3, track=("order_id",), idempotency_key="poison:{order_id}", min_backoff=100, max_backoff=200)
    def poison(order_id: int) -> None:
        """Fails on every attempt: a payload no retry can fix."""
        effects.hincrby(fx("poison"), str(order_id), 1)
        raise ValueError(f"order {order_id}: the payload has no line items")

    return SimpleNamespace(
        broker=broker, store=store, effects=effects, fx=fx, switch=switch, order=order, poison=poison
    )


if "DR_TEST_BROKER" in os.environ:  # imported by a `dramatiq` worker process
    app = build(os.environ)
    app.switch.install()
    broker = app.broker
    dramatiq.set_broker(broker)
