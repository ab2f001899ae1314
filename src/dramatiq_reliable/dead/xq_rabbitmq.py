"""Dead-letter queues of a ``RabbitmqBroker``: the queue ``<q>.XQ``, read without disturbing it.

AMQP has no peek: a session takes messages with ``basic_get`` and keeps them unacked; closing
its channel puts back, in their order, all it did not remove. Replays publish the messages to
the live queue and ack their dead-letter deliveries in one AMQP transaction, so a connection
lost before the commit changes nothing, and a committed replay cannot be replayed again.
Queues are declared passively only (a non-passive declare with other arguments than the
app's would fail with 406, and would create queues that do not exist).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import pika
import pika.exceptions
from dramatiq import Message
from dramatiq.common import xq_name

from ..errors import BrokerUnavailable, NotFound
from .xq import DeadQueue, Session, XEntry

_ERRORS = (pika.exceptions.AMQPError, OSError)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _not_found(exc: BaseException) -> bool:
    return isinstance(exc, pika.exceptions.ChannelClosedByBroker) and exc.reply_code == 404


def _death_ms(properties: Any) -> int | None:
    """When RabbitMQ dead-lettered the message, from its ``x-death`` header."""
    deaths = (getattr(properties, "headers", None) or {}).get("x-death")
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], dict):
        return None
    when = deaths[0].get("time")
    if isinstance(when, datetime):
        return int(when.timestamp() * 1000)
    if isinstance(when, (int, float)):
        return int(when * 1000)
    return None


class RabbitmqDeadQueue(DeadQueue):
    """Dead-letter queues of a ``RabbitmqBroker`` (its connection parameters)."""

    kind = "rabbitmq"
    exclusive_reads = True

    def __init__(self, broker: Any) -> None:
        self.parameters = broker.parameters
        self._connection: pika.BlockingConnection | None = None

    def connect(self) -> pika.BlockingConnection:
        try:
            return pika.BlockingConnection(self.parameters)
        except _ERRORS as exc:
            raise BrokerUnavailable(f"broker unreachable: {_reason(exc)}") from exc

    def _shared(self) -> pika.BlockingConnection:
        if self._connection is None or not self._connection.is_open:
            self._connection = self.connect()
        return self._connection

    def discover(self) -> set[str]:
        return set()  # AMQP cannot list queues; the store knows the app's queues

    def counts(self, queues: list[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        try:
            channel = self._shared().channel()
            for q in queues:
                try:
                    out[q] = channel.queue_declare(xq_name(q), passive=True).method.message_count
                except pika.exceptions.ChannelClosedByBroker as exc:
                    if not _not_found(exc):
                        raise
                    out[q] = 0
                    channel = self._shared().channel()  # a 404 closes the channel
            if channel.is_open:
                channel.close()
        except _ERRORS as exc:
            self._connection = None
            raise BrokerUnavailable(f"broker unreachable: {_reason(exc)}") from exc
        return out

    def open(self, queue: str) -> Session:
        return _RabbitmqSession(self, queue)

    def end(self, session: Session) -> None:
        assert isinstance(session, _RabbitmqSession)
        session.close()

    def close(self) -> None:
        if self._connection is not None and self._connection.is_open:
            try:
                self._connection.close()
            except _ERRORS:
                pass
        self._connection = None


class _RabbitmqSession(Session):
    def __init__(self, owner: RabbitmqDeadQueue, queue: str) -> None:
        self.owner = owner
        self.queue = queue
        self.connection = owner.connect()
        self.channel: Any = None
        self.entries: list[XEntry] = []
        self.exhausted = False

    def _channel(self) -> Any:
        if self.channel is None:
            self.channel = self.connection.channel()
            self.channel.tx_select()
        return self.channel

    def _lost(self) -> None:
        """The channel closed: the server put back every delivery it held."""
        self.channel = None
        self.entries = []
        self.exhausted = False

    def _fail(self, exc: BaseException, what: str) -> BrokerUnavailable:
        self._lost()
        return BrokerUnavailable(f"broker unreachable while {what}: {_reason(exc)}")

    def scan(self, want: set[str] | None = None) -> list[XEntry]:
        missing = set(want or ())
        missing -= {e.key for e in self.entries}
        if self.exhausted or (want is not None and not missing):
            return list(self.entries)
        try:
            channel = self._channel()
            while True:
                method, properties, body = channel.basic_get(xq_name(self.queue), auto_ack=False)
                if method is None:
                    self.exhausted = True
                    break
                entry = XEntry(
                    self.queue,
                    str(method.delivery_tag),
                    dead_at=_death_ms(properties),
                    priority=getattr(properties, "priority", None),
                    ident=hashlib.sha1(body).hexdigest()[:16],
                ).fill(body)
                self.entries.append(entry)
                missing.discard(entry.key)
                if want is not None and not missing:
                    break
        except pika.exceptions.ChannelClosedByBroker as exc:
            if not _not_found(exc):
                raise self._fail(exc, "reading the dead-letter queue") from exc
            self._lost()
            self.exhausted = True  # no dead-letter queue: nothing was ever dead-lettered here
        except _ERRORS as exc:
            raise self._fail(exc, "reading the dead-letter queue") from exc
        return list(self.entries)

    def move(self, items: list[tuple[XEntry, Message[Any]]], drop: list[XEntry]) -> list[bool]:
        stage = "replaying (nothing was committed)"
        try:
            channel = self._channel()
            try:
                channel.queue_declare(self.queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if not _not_found(exc):
                    raise
                self._lost()
                raise NotFound(f"queue {self.queue!r} does not exist on the broker; nothing was replayed") from None
            for entry, message in items:
                channel.basic_publish(
                    exchange="",
                    routing_key=self.queue,
                    body=message.encode(),
                    properties=pika.BasicProperties(
                        delivery_mode=2,
                        priority=message.options.get("broker_priority", entry.priority),
                    ),
                )
                channel.basic_ack(int(entry.ref))
            for entry in drop:
                channel.basic_ack(int(entry.ref))
            stage = "committing a replay (it may or may not have been committed; list again to see)"
            channel.tx_commit()
        except _ERRORS as exc:
            raise self._fail(exc, stage) from exc
        self._forget([e for e, _ in items] + drop)
        return [True] * len(items)

    def remove(self, entries: list[XEntry]) -> list[bool]:
        if not entries:
            return []
        try:
            channel = self._channel()
            for entry in entries:
                channel.basic_ack(int(entry.ref))
            channel.tx_commit()
        except _ERRORS as exc:
            raise self._fail(exc, "removing (nothing was committed)") from exc
        self._forget(entries)
        return [True] * len(entries)

    def _forget(self, entries: list[XEntry]) -> None:
        gone = {id(e) for e in entries}
        self.entries = [e for e in self.entries if id(e) not in gone]

    def close(self) -> None:
        try:
            if self.connection.is_open:
                self.connection.close()  # unacked deliveries go back to the queue, in order
        except _ERRORS:
            pass
