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
  (Redis only; RabbitMQ cannot peek without redelivering);
* ``dramatiq_reliable_exporter_source_up{source}``: 1 if the store (or broker) answered.

The gauges are fleet-wide values: when several hosts each run an exporter, aggregate them
with ``max``, not ``sum``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

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
    "queue_oldest_age_seconds": "Age of the oldest ready message (Redis only).",
    "exporter_source_up": "1 if the source answered this scrape.",
}


def _gauge(name: str, label: str) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(PREFIX + name, GAUGES[name], labels=[label])


@dataclass(frozen=True)
class QueueStats:
    """What a broker says about one queue."""

    queue: str
    depth: int
    delayed: int
    dead: int
    #: Seconds since the oldest ready message was first enqueued (``None`` if unknown or empty).
    oldest_age: float | None = None


class _RedisQueues:
    def __init__(self, broker: Any) -> None:
        self.client = broker.client
        self.namespace = broker.namespace
        self._found: tuple[float, list[str]] = (0.0, [])

    def discover(self) -> list[str]:
        at, names = self._found
        if time.monotonic() - at < DISCOVERY_TTL:
            return names
        prefix = f"{self.namespace}:"
        found = set()
        for key in self.client.scan_iter(match=prefix + "*.msgs", count=1000):
            name = key.decode()[len(prefix) : -len(".msgs")]
            if not name.endswith((".DQ", ".XQ")):
                found.add(name)
        self._found = (time.monotonic(), sorted(found))
        return self._found[1]

    def stats(self, queues: Sequence[str]) -> list[QueueStats]:
        ns = self.namespace
        pipe = self.client.pipeline(transaction=False)
        for q in queues:
            pipe.llen(f"{ns}:{q}")
            pipe.hlen(f"{ns}:{q}.DQ.msgs")
            pipe.zcard(f"{ns}:{q}.XQ")
            pipe.lindex(f"{ns}:{q}", 0)
        raw = pipe.execute()
        out = []
        for i, q in enumerate(queues):
            depth, delayed, dead, first = raw[4 * i : 4 * i + 4]
            out.append(QueueStats(q, int(depth), int(delayed), int(dead), self._age(q, first)))
        return out

    def _age(self, queue: str, first: bytes | None) -> float | None:
        if first is None:
            return None
        data = self.client.hget(f"{self.namespace}:{queue}.msgs", first)
        try:
            timestamp = json.loads(data)["message_timestamp"] if data else None
        except (ValueError, KeyError, TypeError):
            return None
        return max(time.time() - timestamp / 1000, 0.0) if timestamp else None


class _RabbitQueues:
    def __init__(self, broker: Any) -> None:
        self.parameters = broker.parameters
        self._connection: Any = None

    def discover(self) -> list[str]:
        return []  # AMQP has no listing; give --queue

    def _count(self, name: str) -> int:
        import pika

        if self._connection is None or not self._connection.is_open:
            self._connection = pika.BlockingConnection(self.parameters)
        channel = self._connection.channel()
        try:
            return int(channel.queue_declare(name, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker:  # 404: no such queue
            return 0
        finally:
            if channel.is_open:
                channel.close()

    def stats(self, queues: Sequence[str]) -> list[QueueStats]:
        try:
            return [QueueStats(q, self._count(q), self._count(f"{q}.DQ"), self._count(f"{q}.XQ")) for q in queues]
        except Exception:
            if self._connection is not None and self._connection.is_open:
                self._connection.close()
            self._connection = None
            raise


class StateCollector:
    """A prometheus-client collector of gauges read from the store and the broker at scrape time.

    Parameters:
      store(Store | None): where job records are counted by status.
      broker(Broker | None): a RedisBroker or RabbitmqBroker, for queue gauges.
      queues(Sequence[str]): the queues to report. Defaults to those found on a Redis broker
        (none on RabbitMQ, which cannot list queues).
    """

    def __init__(self, store: Store | None = None, broker: Any = None, queues: Sequence[str] = ()) -> None:
        self.store = store
        self.queues = list(queues)
        self._lock = threading.Lock()
        self._broker: _RedisQueues | _RabbitQueues | None = None
        if broker is not None:
            self._broker = _RedisQueues(broker) if hasattr(broker, "namespace") else _RabbitQueues(broker)

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

    def _queue_gauges(self, broker: _RedisQueues | _RabbitQueues) -> Iterator[Any]:
        stats = broker.stats(self.queues or broker.discover())
        families = {
            "depth": _gauge("queue_depth", "queue"),
            "delayed": _gauge("queue_delayed", "queue"),
            "dead": _gauge("queue_dead_letters", "queue"),
            "oldest_age": _gauge("queue_oldest_age_seconds", "queue"),
        }
        for s in stats:
            families["depth"].add_metric([s.queue], s.depth)
            families["delayed"].add_metric([s.queue], s.delayed)
            families["dead"].add_metric([s.queue], s.dead)
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
