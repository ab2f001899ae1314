"""Dead-letter queues of a ``RabbitmqBroker``: the queue ``<q>.XQ``, read without disturbing it.

AMQP has no peek: a session consumes the messages and keeps them unacked; closing its
connection puts back, in their order, all it did not remove. It reads in windows of
:data:`WINDOW` messages, one channel each (RabbitMQ finds an ack's delivery by walking the
channel's unacked messages, so acks stay cheap however long the queue). Replays publish the
messages to the live queue and ack their dead-letter deliveries in one AMQP transaction per
channel, so a connection lost before the commit changes nothing, and a committed replay cannot
be replayed again. Queues are declared passively only (a non-passive declare with other
arguments than the app's would fail with 406, and would create queues that do not exist).
A dead-letter queue that is a quorum queue is never handed back (that would spend a delivery of
each message, see :mod:`._rabbitmq_quorum`): a session replaces what it held by copies.
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import datetime, timezone
from typing import Any

import pika
import pika.exceptions
from dramatiq import Message
from dramatiq.common import xq_name

from ..errors import BrokerUnavailable, NotFound
from . import _rabbitmq_quorum
from .xq import DeadQueue, PartialMove, Session, XEntry

logger = logging.getLogger("dramatiq_reliable.dead")

_ERRORS = (pika.exceptions.AMQPError, OSError)

#: Messages held per channel while reading a dead-letter queue.
WINDOW = 2_000
#: Seconds without a delivery after which a read counts the queue as exhausted.
IDLE = 0.5
#: Seconds a closing session waits for the server to put back the messages it held.
REQUEUE_WAIT = 10.0


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
        if when.tzinfo is None:  # AMQP timestamps are UTC
            when = when.replace(tzinfo=timezone.utc)
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
        self.windows: list[Any] = []
        self.entries: list[XEntry] = []
        self.exhausted = False
        self.expected: int | None = None
        #: True when the dead-letter queue is a quorum queue (known at the first scan).
        self.quorum = False
        #: The AMQP properties of each entry held (quorum queues: for its copy).
        self.properties: dict[str, Any] = {}

    def _lost(self) -> None:
        """A channel closed: the server put back what it held; this session cannot go on."""
        self.entries = []
        self.windows = []
        self.exhausted = True
        try:
            self.connection.close()
        except _ERRORS:
            pass

    def _fail(self, exc: BaseException, what: str) -> BrokerUnavailable:
        self._lost()
        return BrokerUnavailable(f"broker unreachable while {what}: {_reason(exc)}")

    def _probe(self, name: str) -> int | None:
        """Messages ready in ``name``, or ``None`` if it does not exist (on a channel of its own)."""
        channel = self.connection.channel()
        try:
            count: int = channel.queue_declare(name, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker as exc:
            if not _not_found(exc):
                raise
            return None
        channel.close()
        return count

    def scan(self, want: set[str] | None = None) -> list[XEntry]:
        missing = set(want or ()) - {e.key for e in self.entries}
        if self.exhausted or (want is not None and not missing):
            return list(self.entries)
        try:
            if self.expected is None:
                ready = self._probe(xq_name(self.queue))
                self.expected = ready or 0
                self.quorum = ready is not None and _rabbitmq_quorum.is_quorum(
                    self.owner.parameters, xq_name(self.queue)
                )
            while not self.exhausted and (want is None or missing):
                self._read_window(missing if want is not None else None)
        except _ERRORS as exc:
            raise self._fail(exc, "reading the dead-letter queue") from exc
        return list(self.entries)

    def _read_window(self, missing: set[str] | None) -> None:
        assert self.expected is not None
        if len(self.entries) >= self.expected and self._drained():
            return
        channel = self.connection.channel()
        channel.basic_qos(prefetch_count=WINDOW)
        channel.tx_select()
        index = len(self.windows)
        self.windows.append(channel)
        deliveries = channel.consume(xq_name(self.queue), inactivity_timeout=IDLE)
        for got, (method, properties, body) in enumerate(deliveries, start=1):
            if method is None:
                self.exhausted = True
                break
            entry = XEntry(
                self.queue,
                f"{index}:{method.delivery_tag}",
                dead_at=_death_ms(properties),
                priority=getattr(properties, "priority", None),
                ident=hashlib.sha1(body).hexdigest()[:16],
            ).fill(body)
            self.entries.append(entry)
            if self.quorum:
                self.properties[entry.ref] = properties
            if missing is not None:
                missing.discard(entry.key)
            if got >= WINDOW or len(self.entries) >= self.expected or (missing is not None and not missing):
                break
        channel.cancel()

    def _drained(self) -> bool:
        """Read as many as the queue had: is it empty now (nothing came back or arrived)?"""
        ready = self._probe(xq_name(self.queue)) or 0
        if ready == 0:
            self.exhausted = True
            return True
        assert self.expected is not None
        self.expected += ready
        return False

    def _by_window(self, entries: list[XEntry]) -> dict[int, list[tuple[int, XEntry]]]:
        groups: dict[int, list[tuple[int, XEntry]]] = {}
        for position, entry in enumerate(entries):
            window, _, _tag = entry.ref.partition(":")
            groups.setdefault(int(window), []).append((position, entry))
        return groups

    def move(self, items: list[tuple[XEntry, Message[Any]]], drop: list[XEntry]) -> list[bool]:
        moved = [False] * len(items)
        if not items and not drop:
            return moved
        try:
            if self._probe(self.queue) is None:
                raise NotFound(f"queue {self.queue!r} does not exist on the broker; nothing was replayed")
        except _ERRORS as exc:
            raise self._fail(exc, "replaying (nothing was committed)") from exc
        messages = {id(entry): message for entry, message in items}
        groups = self._by_window([e for e, _ in items] + drop)
        done: list[XEntry] = []
        for window, members in sorted(groups.items()):
            channel = self.windows[window]
            stage = "replaying (this batch was not committed)"
            try:
                for _position, entry in members:
                    message = messages.get(id(entry))
                    if message is not None:
                        channel.basic_publish(
                            exchange="",
                            routing_key=self.queue,
                            body=message.encode(),
                            properties=pika.BasicProperties(
                                delivery_mode=2,
                                priority=message.options.get("broker_priority", entry.priority),
                            ),
                        )
                    channel.basic_ack(int(entry.ref.partition(":")[2]))
                stage = "committing a replay (it may or may not have been committed; list again to see)"
                channel.tx_commit()
            except _ERRORS as exc:
                error = self._fail(exc, stage)
                raise PartialMove(str(error), moved) from exc
            for position, entry in members:
                if position < len(items):
                    moved[position] = True
                done.append(entry)
        self._forget(done)
        return moved

    def remove(self, entries: list[XEntry]) -> list[bool]:
        removed = [False] * len(entries)
        done: list[XEntry] = []
        for window, members in sorted(self._by_window(entries).items()):
            channel = self.windows[window]
            try:
                for _position, entry in members:
                    channel.basic_ack(int(entry.ref.partition(":")[2]))
                channel.tx_commit()
            except _ERRORS as exc:
                error = self._fail(exc, "removing (this batch was not committed)")
                raise PartialMove(str(error), removed) from exc
            for position, entry in members:
                removed[position] = True
                done.append(entry)
        self._forget(done)
        return removed

    def _forget(self, entries: list[XEntry]) -> None:
        gone = {id(e) for e in entries}
        self.entries = [e for e in self.entries if id(e) not in gone]
        if self.expected is not None:
            self.expected -= len(gone)

    def close(self) -> None:
        held = len(self.entries)
        if self.quorum and held and self.connection.is_open:
            self._put_back_copies()
            held = 0
        try:
            if not self.connection.is_open:
                return
            unread = (self._probe(xq_name(self.queue)) or 0) if held else 0
            self.connection.close()  # unacked deliveries go back to the queue, in order
        except _ERRORS:
            return
        # The server puts them back asynchronously: wait until they are, so the next reader
        # (after this session's lock is released) sees the whole queue.
        deadline = time.monotonic() + REQUEUE_WAIT
        while held and time.monotonic() < deadline:
            try:
                counts = self.owner.counts([self.queue])
            except BrokerUnavailable:
                return
            if counts[self.queue] >= unread + held:
                return
            time.sleep(0.05)

    def _put_back_copies(self) -> None:
        """Quorum queue: replace the messages held by copies instead of handing them back."""
        try:
            _rabbitmq_quorum.put_back_as_copies(self.windows, self.entries, self.properties, xq_name(self.queue))
        except _ERRORS as exc:
            logger.warning(
                "Connection lost while putting back %d dead letter(s) of %r: the server hands them back, "
                "each counting one delivery against the queue's delivery limit (%s).",
                len(self.entries),
                xq_name(self.queue),
                _reason(exc),
            )
        self.entries = []
        self.properties = {}
