"""Queue backlog on both brokers: how many messages wait, and how long the oldest has waited.

Read without disturbing consumers: this never flushes, consumes or declares anything new.

* **Redis**: ``LLEN``/``HLEN``/``ZCARD`` of Dramatiq's keys, and the head of the queue's list
  for the oldest waiting message. Queues are discovered by a ``SCAN`` of the namespace (a
  queue without any message has no key, and is not listed).
* **RabbitMQ**: passive declares of ``q``, ``q.DQ`` and ``q.XQ`` (a missing queue is reported
  as such). AMQP has no queue listing (that needs the management plugin), so queues are
  named by the caller or taken from an app's declared queues. AMQP has no peek either: the
  oldest message's age is unknown unless ``peek=True``, which takes the head message with
  ``basic_get`` and puts it straight back (``basic_nack(requeue=True)``): it keeps its place,
  but is flagged ``redelivered``.

A message's wait is counted from when it became ready: the latest of its send
(``message_timestamp``), its last failure (Retries' ``requeue_timestamp``) and the moment a
consumer moved it out of its delay queue (:data:`READY_OPTION`, stamped by the Watchdog).
"""

from __future__ import annotations

import json
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
    """The queues of ``broker`` that hold anything, found without an app (Redis only).

    Raises:
      ConfigurationError: on RabbitMQ, which cannot list queues over AMQP.
      BrokerUnavailable: the broker cannot be reached.
    """
    if _kind(broker) != "redis":
        raise ConfigurationError(
            "RabbitMQ cannot list queues over AMQP (that needs the management plugin): name them with --queue"
        )
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


def queue_stats(broker: Any, queues: list[str], *, peek: bool = False) -> list[QueueStats]:
    """The backlog of each of ``queues`` (canonical names) on ``broker``.

    Parameters:
      broker(Broker): a RedisBroker, RabbitmqBroker or StubBroker.
      queues(list[str]): the queues to look at.
      peek(bool): RabbitMQ: read the oldest message's age by taking it and putting it straight
        back (it is flagged ``redelivered``). Without it the age is unknown on RabbitMQ.

    Raises:
      BrokerUnavailable: the broker cannot be reached.
    """
    kind = _kind(broker)
    if kind == "redis":
        return _redis_stats(broker, queues)
    if kind == "rabbitmq":
        return _rabbitmq_stats(broker, queues, peek=peek)
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


def _redis_stats(broker: Any, queues: list[str]) -> list[QueueStats]:
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
        counts = pipe.execute()
        now = now_ms()
        for i, q in enumerate(queues):
            depth, stored, delayed, dead = counts[4 * i : 4 * i + 4]
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


def _rabbitmq_stats(broker: Any, queues: list[str], *, peek: bool) -> list[QueueStats]:
    import pika
    from pika.exceptions import AMQPConnectionError, ChannelClosedByBroker

    try:
        connection = pika.BlockingConnection(broker.parameters)
    except (AMQPConnectionError, OSError) as exc:
        raise BrokerUnavailable(f"broker unreachable: {exc or type(exc).__name__}") from exc
    channel = connection.channel()

    def declare(name: str) -> Any:
        nonlocal channel
        try:
            return channel.queue_declare(name, passive=True).method
        except ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
            channel = connection.channel()  # a 404 closes the channel
            return None

    out = []
    try:
        with _broker_errors():
            for q in queues:
                main, dq, xq = declare(q), declare(f"{q}.DQ"), declare(f"{q}.XQ")
                if main is None:
                    out.append(QueueStats(queue=q, exists=False))
                    continue
                age = _rabbitmq_oldest(channel, q) if peek and main.message_count else None
                out.append(
                    QueueStats(
                        queue=q,
                        depth=main.message_count,
                        delayed=dq.message_count if dq else None,
                        dead=xq.message_count if xq else None,
                        consumers=main.consumer_count,
                        oldest_age=age,
                    )
                )
    finally:
        try:
            connection.close()
        except Exception:  # pragma: no cover - already closed by the server
            pass
    return out


def _rabbitmq_oldest(channel: Any, queue: str) -> float | None:
    """Take the head message without acking it, read its age, and put it back at once."""
    method, _properties, body = channel.basic_get(queue, auto_ack=False)
    if method is None:
        return None
    channel.basic_nack(method.delivery_tag, requeue=True)
    since = ready_since(body)
    return None if since is None else max(now_ms() - since, 0) / 1000


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
