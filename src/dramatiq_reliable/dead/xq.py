"""Native access to a broker's dead-letter queues (``<queue>.XQ``), the same way on every broker.

Live workers never read a dead-letter queue, so reading and changing one does not disturb
them; what must never be touched is the live queue, its delay queue and their in-flight
messages (``broker.flush`` wipes them all, so it is never used). Per broker:

* Redis: ``<ns>:<q>.XQ`` (zset of Redis message ids scored by the time of death) and
  ``<ns>:<q>.XQ.msgs`` (hash of payloads). Reads are plain reads; a replay moves an entry to
  the live queue in one Lua script (no window where the message is in neither place).
* RabbitMQ: the queue ``<q>.XQ``. AMQP cannot peek, so a session takes its messages with
  ``basic_get`` (unacked), then closes its channel, which puts back, in order, every one it
  did not remove. Replays publish and ack in one AMQP transaction. Queues are only ever
  declared passively; a missing queue (404) closes the channel, which is reopened.
* StubBroker: ``broker.dead_letters_by_queue``, for tests and the demo.

Use :func:`dramatiq_reliable.brokers.dead_queue` to get the one for a broker.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from dramatiq import Message
from dramatiq.errors import DecodeError

from ..errors import BrokerUnavailable

#: Prefix of the ids given to entries that cannot be decoded (they have no message id).
MALFORMED = "malformed:"


@dataclass
class XEntry:
    """One entry of a dead-letter queue.

    ``ref`` is the broker's handle on it (the Redis message id; a delivery tag within one
    RabbitMQ session). ``raw``/``message`` are filled once loaded; ``problem`` says why a
    loaded entry cannot be decoded.
    """

    queue: str
    ref: str
    dead_at: int | None = None
    raw: bytes | None = None
    loaded: bool = False
    message: Message[Any] | None = None
    problem: str | None = None
    #: Stable part of a malformed entry's id (the Redis id, or a digest of the payload).
    ident: str = ""
    #: RabbitMQ: the delivery's priority, kept on replay.
    priority: int | None = None
    #: True when ``ref`` names the entry beyond this session (Redis message ids).
    stable: bool = False

    def fill(self, raw: bytes | str | None) -> XEntry:
        """Decode ``raw`` into ``message`` (or record the ``problem``)."""
        if isinstance(raw, str):
            raw = raw.encode()
        self.loaded = True
        self.raw = raw
        if raw is None:
            self.problem = "the dead-letter queue has no payload for this entry"
        else:
            try:
                self.message = Message.decode(raw)
            except DecodeError as exc:
                cause = exc.__cause__ or exc
                self.problem = f"cannot decode the message: {type(cause).__name__}: {str(cause)[:200]}"
        if self.problem is not None and not self.ident:
            self.ident = hashlib.sha1(raw or self.ref.encode()).hexdigest()[:16]
        return self

    @property
    def key(self) -> str:
        """The job id of the entry, or ``malformed:<queue>:<ident>`` for one that cannot be decoded."""
        if self.message is not None:
            return self.message.message_id
        return f"{MALFORMED}{self.queue}:{self.ident or self.ref}"


class PartialMove(BrokerUnavailable):
    """The connection was lost after some windows were committed: ``moved`` says which items."""

    def __init__(self, message: str, moved: list[bool]) -> None:
        super().__init__(message)
        self.moved = moved


class Session(abc.ABC):
    """Access to one queue's dead-letter queue, for the time of a ``with`` block."""

    queue: str

    @abc.abstractmethod
    def scan(self, want: set[str] | None = None) -> list[XEntry]:
        """The entries of the queue, oldest first. On Redis they are not loaded yet
        (:meth:`load`); on RabbitMQ they are, and the scan stops once every key in ``want`` was
        seen (the others stay in the queue)."""

    def load(self, entries: list[XEntry]) -> None:  # noqa: B027 - nothing to do where scans load
        """Fetch and decode the payloads of entries not loaded yet."""

    def fetch(self, refs: list[str]) -> list[XEntry]:
        """The loaded entries with these broker refs that are still there (others are left out)."""
        wanted = set(refs)
        entries = [e for e in self.scan() if e.ref in wanted]
        self.load(entries)
        return entries

    def prepare(self, message: Message[Any]) -> Message[Any]:
        """The message as this broker enqueues it (Redis adds a fresh ``redis_message_id``)."""
        return message

    @abc.abstractmethod
    def move(self, items: list[tuple[XEntry, Message[Any]]], drop: list[XEntry]) -> list[bool]:
        """Put each item's message on the live queue and remove its entry, atomically per item;
        remove the ``drop`` entries (other copies). Returns, per item, whether it was moved
        (``False``: the entry was no longer there).

        Raises:
          BrokerUnavailable: the broker could not be reached; nothing was moved, or, as
            :class:`PartialMove`, only the items its ``moved`` says.
        """

    @abc.abstractmethod
    def remove(self, entries: list[XEntry]) -> list[bool]:
        """Remove entries; per entry whether it was still there.

        Raises:
          BrokerUnavailable: as :meth:`move` (``PartialMove.moved``: the entries removed).
        """


class DeadQueue(abc.ABC):
    """Dead-letter queues of one broker."""

    #: "redis", "rabbitmq" or "stub".
    kind: str = ""
    #: True when reading a queue takes its messages out for a while (RabbitMQ), so tools must
    #: not read the same queue at the same time (see ``dramatiq_reliable.dead.reconcile``).
    exclusive_reads: bool = False

    @abc.abstractmethod
    def discover(self) -> set[str]:
        """Queue names with a dead-letter queue that the broker can list by itself (not RabbitMQ)."""

    @abc.abstractmethod
    def counts(self, queues: list[str]) -> dict[str, int]:
        """Entries in each queue's dead-letter queue (0 when it does not exist).

        Raises:
          BrokerUnavailable: the broker could not be reached.
        """

    @abc.abstractmethod
    def open(self, queue: str) -> Session:
        """A session on one queue's dead-letter queue; close it with :meth:`end`."""

    def end(self, session: Session) -> None:  # noqa: B027 - only sessions holding resources need it
        """Close a session (RabbitMQ: its channel, which puts back the messages it still holds)."""

    @contextmanager
    def session(self, queue: str) -> Iterator[Session]:
        session = self.open(queue)
        try:
            yield session
        finally:
            self.end(session)

    def close(self) -> None:  # noqa: B027
        """Release connections."""
