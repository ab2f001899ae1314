"""The Prometheus exporter: the workers' counters, and gauges read from the store and broker.

``dramatiq-reliable metrics`` serves what :func:`registry` builds: the sums of the counters
and histograms the worker processes write (multiprocess folder, see
:func:`~dramatiq_reliable.enable_metrics`), and gauges read at scrape time:

* ``dramatiq_reliable_jobs_in_status{status}``: job records per status (``stuck``,
  ``abandoned``, ``failed``, …), from the store's status indexes;
* ``dramatiq_reliable_queue_depth{queue}``: messages ready in each queue,
  ``dramatiq_reliable_queue_delayed{queue}``: delayed or retrying ones,
  ``dramatiq_reliable_queue_dead_letters{queue}``: dead-lettered ones (the broker's ``.XQ``),
  ``dramatiq_reliable_queue_oldest_age_seconds{queue}``: age of the oldest ready message
  (on RabbitMQ from the management API; left out while unknown);
* ``dramatiq_reliable_exporter_source_up{source}``: 1 if the store (or broker) answered.

The gauges are fleet-wide values: when several hosts each run an exporter, aggregate them
with ``max``, not ``sum``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from .backlog import QueueStats, discover_queues, queue_stats
from .errors import ConfigurationError, DramatiqReliableError
from .metrics import PREFIX
from .store.base import Store

logger = logging.getLogger("dramatiq_reliable.exporter")

#: Seconds a Redis queue discovery (SCAN) is reused.
DISCOVERY_TTL = 60.0

#: The gauges served, by name without :data:`~dramatiq_reliable.metrics.PREFIX`, with their help texts.
GAUGES: dict[str, str] = {
    "jobs_in_status": "Job records in each status (from the store).",
    "queue_depth": "Messages ready in the queue.",
    "queue_delayed": "Messages waiting for their delay (retries included).",
    "queue_dead_letters": "Messages in the broker's dead-letter queue.",
    "queue_oldest_age_seconds": "Age of the oldest ready message (left out while unknown).",
    "exporter_source_up": "1 if the source answered this scrape.",
}


def _gauge(name: str, label: str) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(PREFIX + name, GAUGES[name], labels=[label])


class _Queues:
    """The broker's queues for the gauges: named ones, or those discovered (kept :data:`DISCOVERY_TTL`)."""

    def __init__(self, broker: Any, queues: Sequence[str]) -> None:
        self.broker = broker
        self.named = list(queues)
        self._found: tuple[float, list[str]] = (-DISCOVERY_TTL, [])

    def names(self) -> list[str]:
        if self.named:
            return self.named
        at, names = self._found
        if time.monotonic() - at >= DISCOVERY_TTL:
            try:
                names = discover_queues(self.broker)
            except ConfigurationError as exc:  # RabbitMQ without its management API
                logger.warning("No queue gauges: %s", exc)
                names = []
            self._found = (time.monotonic(), names)
        return names

    def stats(self) -> list[QueueStats]:
        names = self.names()
        return queue_stats(self.broker, names) if names else []


class StateCollector:
    """A prometheus-client collector of gauges read from the store and the broker at scrape time.

    Parameters:
      store(Store | None): where job records are counted by status.
      broker(Broker | None): a RedisBroker or RabbitmqBroker, for queue gauges.
      queues(Sequence[str]): the queues to report. Defaults to those the broker lists (every
        queue holding messages or dead letters on Redis; every queue the management API
        lists on RabbitMQ, none without it).
    """

    def __init__(self, store: Store | None = None, broker: Any = None, queues: Sequence[str] = ()) -> None:
        self.store = store
        self.queues = list(queues)
        self._lock = threading.Lock()
        self._broker = _Queues(broker, queues) if broker is not None else None

    def describe(self) -> list[Any]:
        return []  # collected at scrape time only

    def collect(self) -> Iterator[Any]:
        up = _gauge("exporter_source_up", "source")
        with self._lock:
            if self.store is not None:
                jobs = _gauge("jobs_in_status", "status")
                try:
                    for status, count in self.store.count_jobs().items():
                        jobs.add_metric([status], count)
                    up.add_metric(["store"], 1)
                    yield jobs
                except DramatiqReliableError as exc:
                    logger.warning("Could not read the store: %s", exc)
                    up.add_metric(["store"], 0)
            if self._broker is not None:
                try:
                    yield from self._queue_gauges(self._broker)
                    up.add_metric(["broker"], 1)
                except Exception as exc:
                    logger.warning("Could not read the broker: %s", exc)
                    up.add_metric(["broker"], 0)
        yield up

    def _queue_gauges(self, broker: _Queues) -> Iterator[Any]:
        stats = [s for s in broker.stats() if s.exists]
        families = {
            "depth": _gauge("queue_depth", "queue"),
            "delayed": _gauge("queue_delayed", "queue"),
            "dead": _gauge("queue_dead_letters", "queue"),
            "oldest_age": _gauge("queue_oldest_age_seconds", "queue"),
        }
        for s in stats:
            for field in ("depth", "delayed", "dead"):
                value = getattr(s, field)
                if value is not None:
                    families[field].add_metric([s.queue], value)
            if s.oldest_age is not None or not s.depth:  # unknown: no sample rather than a false 0
                families["oldest_age"].add_metric([s.queue], s.oldest_age or 0.0)
        yield from families.values()


def registry(
    store: Store | None = None,
    broker: Any = None,
    *,
    queues: Sequence[str] = (),
    multiproc_dir: str | None = None,
) -> Any:
    """A ``CollectorRegistry`` with the workers' metrics (from ``multiproc_dir``) and the gauges.

    Raises:
      ConfigurationError: prometheus-client is missing, or ``multiproc_dir`` is not a folder.
    """
    try:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector
    except ImportError:
        raise ConfigurationError(
            "the exporter needs prometheus-client: pip install 'dramatiq-reliable[prometheus]'"
        ) from None
    reg = CollectorRegistry(auto_describe=True)
    if multiproc_dir is not None:
        try:
            MultiProcessCollector(reg, path=multiproc_dir)  # type: ignore[no-untyped-call]
        except ValueError:
            raise ConfigurationError(f"--multiproc-dir {multiproc_dir!r} is not a folder") from None
    reg.register(StateCollector(store, broker, queues))
    return reg


def serve(reg: Any, *, host: str = "127.0.0.1", port: int = 9191) -> tuple[Any, threading.Thread]:
    """Serve ``reg`` on ``http://host:port/metrics`` from a daemon thread; returns (server, thread).

    ``host`` defaults to loopback, as the support page does: metrics name actors, queues and
    error types, so listening on every interface (``"0.0.0.0"``) is a choice to make explicitly.

    Raises:
      ConfigurationError: the address cannot be listened on (in use, not permitted).
    """
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(port, addr=host, registry=reg)
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return server, thread
