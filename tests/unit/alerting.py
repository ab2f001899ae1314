"""Helpers for the Alerts unit tests: a StubBroker with the bundle, a clock, a collecting notifier."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

import dramatiq_reliable as dr
from dramatiq_reliable._clock import now_ms
from tests.helpers import wait_until

#: Modules whose ``now_ms`` the clock replaces (decisions, occurrence times, alert times).
CLOCKED = (
    "dramatiq_reliable.store.journal",
    "dramatiq_reliable.middleware._throttle",
    "dramatiq_reliable.middleware.alerts",
)


class Clock:
    """A settable clock in milliseconds, starting now."""

    def __init__(self) -> None:
        self.now = now_ms()

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


def install_clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A :class:`Clock` in place of ``now_ms`` wherever alerts are decided and dated."""
    c = Clock()
    for module in CLOCKED:
        monkeypatch.setattr(f"{module}.now_ms", c)
    # The store judges time by its own clock: the embedded one follows this clock instead.
    monkeypatch.setattr(f"{__name__}.store_clock", c)
    return c


#: The clock a bundle's MemoryStore runs at (``install_clock``); None: the store's own.
store_clock: Clock | None = None


class Collector:
    """A notifier that keeps what it gets."""

    name = "collector"

    def __init__(self) -> None:
        self.alerts: list[dr.Alert] = []
        self.lock = threading.Lock()

    def __call__(self, alert: dr.Alert) -> None:
        with self.lock:
            self.alerts.append(alert)

    def wait(self, n: int, timeout: float = 10.0) -> list[dr.Alert]:
        wait_until(lambda: len(self.alerts) >= n, timeout=timeout, what=f"{n} alert(s)")
        return list(self.alerts)


@dataclass
class Bundle:
    broker: StubBroker
    store: dr.Store
    alerts: dr.Alerts
    collector: Collector
    worker: dramatiq.Worker | None = None
    actors: dict[str, Any] = field(default_factory=dict)

    def start(self) -> dramatiq.Worker:
        self.worker = dramatiq.Worker(self.broker, worker_timeout=50, worker_threads=4)
        self.worker.start()
        return self.worker

    def join(self) -> None:
        for queue in self.broker.get_declared_queues():
            self.broker.join(queue, fail_fast=False)
        assert self.worker is not None
        self.worker.join()

    def settle(self) -> None:
        """Every job done, every alert handed to the notifiers."""
        self.join()
        assert self.alerts.outbox.drain(10.0)


def make_bundle(store: dr.Store | None = None, **options: Any) -> Iterator[Bundle]:
    broker = StubBroker(fail_fast_default=False)
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    store = store or dr.MemoryStore(clock=store_clock)
    collector = Collector()
    options.setdefault("notifiers", [collector])
    middlewares = dr.install(broker, store, **options)
    alerts = next(m for m in middlewares if isinstance(m, dr.Alerts))
    bundle = Bundle(broker, store, alerts, collector)
    yield bundle
    if bundle.worker is not None:
        bundle.worker.stop()
    alerts.close()
    broker.flush_all()
    broker.close()


#: ``with bundle_of(window=10) as bundle: ...``
bundle_of = contextlib.contextmanager(make_bundle)
