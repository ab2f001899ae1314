"""Queue backlog on both brokers: how many messages wait, and how long the oldest has waited.

One reader for the ``queues`` command, the exporter's gauges and the support page. Read
without disturbing consumers: this never flushes, consumes, requeues or declares anything.

* **Redis**: ``LLEN``/``HLEN``/``ZCARD`` of Dramatiq's keys, and the head of the queue's list
  for the oldest waiting message. Queues are discovered by a ``SCAN`` of the namespace (a
  queue that only holds dead letters included; one without any message has no key).
* **RabbitMQ**: exact counts by passive declares of ``q``, ``q.DQ`` and ``q.XQ``; the queue
  list and the head message's age from the management HTTP API when the plugin is enabled
  (see :mod:`._backlog_rabbitmq`). Without it, queues must be named and ages are unknown.

A message's wait is counted from when it became ready: the latest of its send
(``message_timestamp``), its last failure (Retries' ``requeue_timestamp``) and the moment a
consumer moved it out of its delay queue (:data:`READY_OPTION`, stamped by the Watchdog). On
RabbitMQ, the AMQP ``timestamp`` the Watchdog stamps when a message is published (sent,
retried or moved out of its delay queue) stands for the same moment.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ._clock import format_duration, now_ms
from .errors import BrokerUnavailable, ConfigurationError, DramatiqReliableError

#: Message option: when a delayed message was moved to its queue (ms), stamped by the Watchdog.
READY_OPTION = "dr_ready_at"
#: Suffixes of Dramatiq's per-queue Redis keys.
_REDIS_SUFFIXES = (".XQ.msgs", ".DQ.msgs", ".msgs", ".XQ", ".DQ")


@dataclass(frozen=True)
class QueueStats:
    """The backlog of one queue. ``None`` means unknown on this broker."""

    queue: str
    #: Messages waiting to be run.
    depth: int | None = None
    #: Messages delayed (``delay=``, retries' backoff). On RabbitMQ, only those no worker holds yet.
    delayed: int | None = None
    #: Messages in the dead-letter queue.
    dead: int | None = None
    #: Messages fetched by workers and not yet acked (Redis).
    in_flight: int | None = None
    #: Consumers attached (RabbitMQ).
    consumers: int | None = None
    #: Seconds the oldest waiting message has waited; ``None`` if none waits or unknown.
    oldest_age: float | None = None
    #: False if the queue does not exist on the broker (RabbitMQ).
    exists: bool = True

    def problems(self, *, max_age: float | None = None, max_depth: int | None = None) -> list[str]:
        """What crosses the limits: ``["depth 12000 > 10000", ...]``."""
        out = []
        if not self.exists:
            out.append("queue does not exist")
        if max_depth is not None and self.depth is not None and self.depth > max_depth:
            out.append(f"depth {self.depth} > {max_depth}")
        if max_age is not None and self.oldest_age is not None and self.oldest_age > max_age:
            out.append(f"oldest waiting {format_duration(self.oldest_age)} > {format_duration(max_age)}")
        elif max_age is not None and self.exists and self.depth and self.oldest_age is None:
            out.append("age of the oldest waiting message unknown")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "exists": self.exists,
            "depth": self.depth,
            "delayed": self.delayed,
            "dead": self.dead,
            "in_flight": self.in_flight,
            "consumers": self.consumers,
            "oldest_age_seconds": None if self.oldest_age is None else round(self.oldest_age, 3),
        }


def ready_since(data: bytes | str | None) -> int | None:
    """When an encoded Dramatiq message became ready to run (ms), or ``None`` if unreadable."""
    if data is None:
        return None
    try:
        message = json.loads(data)
        options = message.get("options") or {}
        times = [message.get("message_timestamp"), options.get("requeue_timestamp"), options.get(READY_OPTION)]
        return max(int(t) for t in times if isinstance(t, (int, float)))
    except (ValueError, TypeError, AttributeError):
        return None


def discover_queues(broker: Any) -> list[str]:
    """The queues of ``broker``, found without an app.

    On Redis, those holding anything (ready, delayed, in flight or dead-lettered messages). On
    RabbitMQ, every queue of the virtual host the management API lists (canonical names).

    Raises:
      ConfigurationError: on RabbitMQ without the management API, or on a StubBroker.
      BrokerUnavailable: the broker cannot be reached.
    """
    kind = _kind(broker)
    if kind == "rabbitmq":
        from ._backlog_rabbitmq import ManagementUnavailable, management_queues

        try:
            listed = management_queues(broker)
        except ManagementUnavailable as exc:
            raise ConfigurationError(
                f"cannot list RabbitMQ's queues ({exc}): enable the management plugin "
                "(rabbitmq-plugins enable rabbitmq_management), name them with --queue, or give --app"
            ) from None
        return sorted({_canonical(name) for name in listed if not name.startswith("amq.")})
    if kind != "redis":
        raise ConfigurationError("name the queues: only Redis and RabbitMQ brokers can list them")
    prefix = broker.namespace + ":"
    names: set[str] = set()
    with _broker_errors():
        for key in broker.client.scan_iter(match=_glob_escape(prefix) + "*", count=1000):
            name = (key.decode() if isinstance(key, bytes) else key)[len(prefix) :]
            if name.startswith("__"):
                continue  # __acks__.*, __heartbeats__
            for suffix in _REDIS_SUFFIXES:
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
                    break
            names.add(name)
    return sorted(names)


def _canonical(name: str) -> str:
    return name[:-3] if name.endswith((".DQ", ".XQ")) else name


def queue_stats(broker: Any, queues: list[str], *, known: Iterable[str] = ()) -> list[QueueStats]:
    """The backlog of each of ``queues`` (canonical names) on ``broker``.

    Parameters:
      broker(Broker): a RedisBroker, RabbitmqBroker or StubBroker.
      queues(list[str]): the queues to look at.
      known(Iterable[str]): queues known to exist (an app declares them, a worker consumes
        them). Redis deletes an empty queue's keys: a queue without keys that is not known
        is reported as not existing.

    Raises:
      BrokerUnavailable: the broker cannot be reached.
    """
    kind = _kind(broker)
    if kind == "redis":
        return _redis_stats(broker, queues, set(known))
    if kind == "rabbitmq":
        from ._backlog_rabbitmq import stats

        return stats(broker, queues, QueueStats)
    return _stub_stats(broker, queues)


def _kind(broker: Any) -> str:
    name = type(broker).__name__
    if hasattr(broker, "namespace") and hasattr(broker, "client") and hasattr(broker, "broker_id"):
        return "redis"
    if name == "RabbitmqBroker" or hasattr(broker, "parameters"):
        return "rabbitmq"
    if hasattr(broker, "queues") and hasattr(broker, "dead_letters_by_queue"):
        return "stub"
    raise ConfigurationError(f"cannot read the backlog of a {name}")


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class _broker_errors:
    """Turn connection errors into BrokerUnavailable, other broker errors into one clear error."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None or isinstance(exc, DramatiqReliableError):
            return
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if isinstance(exc, _connection_errors()):
            raise BrokerUnavailable(f"broker unreachable: {text}") from exc
        if isinstance(exc, Exception):
            raise DramatiqReliableError(f"could not read the backlog: {text}") from exc


def _connection_errors() -> tuple[type[BaseException], ...]:
    import redis
    from pika.exceptions import AMQPConnectionError

    return (redis.ConnectionError, redis.TimeoutError, AMQPConnectionError, OSError)


def _redis_stats(broker: Any, queues: list[str], known: set[str]) -> list[QueueStats]:
    client = broker.client
    ns = broker.namespace
    out = []
    with _broker_errors():
        pipe = client.pipeline(transaction=False)
        for q in queues:
            pipe.llen(f"{ns}:{q}")
            pipe.hlen(f"{ns}:{q}.msgs")
            pipe.hlen(f"{ns}:{q}.DQ.msgs")
            pipe.zcard(f"{ns}:{q}.XQ")
            pipe.exists(f"{ns}:{q}.DQ", f"{ns}:{q}.XQ.msgs")
        counts = pipe.execute()
        now = now_ms()
        for i, q in enumerate(queues):
            depth, stored, delayed, dead, others = counts[5 * i : 5 * i + 5]
            if not (depth or stored or delayed or dead or others) and q not in known:
                out.append(QueueStats(queue=q, exists=False))
                continue
            out.append(
                QueueStats(
                    queue=q,
                    depth=depth,
                    delayed=delayed,
                    dead=dead,
                    in_flight=max(stored - depth, 0),
                    oldest_age=_redis_oldest(client, ns, q, now) if depth else None,
                )
            )
    return out


def _redis_oldest(client: Any, ns: str, queue: str, now: int) -> float | None:
    """Age (s) of the message at the head of the list; retried if a worker took it meanwhile."""
    for _ in range(3):
        head = client.lindex(f"{ns}:{queue}", 0)
        if head is None:
            return None
        since = ready_since(client.hget(f"{ns}:{queue}.msgs", head))
        if since is not None:
            return max(now - since, 0) / 1000
    return None


def _stub_stats(broker: Any, queues: list[str]) -> list[QueueStats]:
    out = []
    now = now_ms()
    for q in queues:
        main = broker.queues.get(q)
        if main is None:
            out.append(QueueStats(queue=q, exists=False))
            continue
        delayed = broker.queues.get(f"{q}.DQ")
        head = list(main.queue)[:1]
        since = ready_since(head[0]) if head else None
        out.append(
            QueueStats(
                queue=q,
                depth=main.qsize(),
                delayed=delayed.qsize() if delayed is not None else 0,
                dead=len(broker.dead_letters_by_queue.get(q, [])),
                oldest_age=None if since is None else max(now - since, 0) / 1000,
            )
        )
    return out
