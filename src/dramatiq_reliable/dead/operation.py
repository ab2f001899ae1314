"""What replay and purge share: look the ids up, lock each queue, find their broker entries.

The store's copy says where each dead letter is (its queue, and on Redis its broker ids); the
broker's entry is looked up before anything is done, and an id whose entry is gone is reported
``gone`` and forgotten, never replayed.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Sequence

import dramatiq

from .._clock import iso, now_ms
from ..brokers import dead_queue
from ..errors import BrokerUnavailable, ConfigurationError, StoreUnavailable
from ..records import DeadLetter, DeadResult
from ..store.base import Store
from . import reconcile as _rec
from .xq import DeadQueue, Session, XEntry

#: Dead letters handled per broker call and per store call.
BATCH = 500


def who() -> str:
    """``user@host`` of the operator, for the job's history."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "?"
    return f"{user}@{socket.gethostname()}"


class Operation:
    """One ``replay`` or ``purge`` call: find each id's entries, then act per batch of a queue."""

    #: "replay" or "purge", for messages.
    action = ""

    def __init__(self, store: Store, broker: dramatiq.Broker, dry_run: bool, by: str | None = None) -> None:
        if not isinstance(store, Store):
            raise ConfigurationError(f"{self.action}() needs a store, not {store!r}")
        self.store = store
        self.broker = broker
        self.dry_run = dry_run
        self.dq: DeadQueue = dead_queue(broker)
        self.results: dict[str, DeadResult] = {}
        if by is not None and (not isinstance(by, str) or not by.strip() or len(by) > 200):
            raise ConfigurationError(f"by must be a short non-empty text, not {by!r}")
        self.who = by.strip() if by is not None else who()

    def run(self, ids: Sequence[str]) -> list[DeadResult]:
        if isinstance(ids, str) or not all(isinstance(i, str) and i for i in ids):
            raise ConfigurationError(f"{self.action}() takes a list of job ids, not {ids!r}")
        order = list(dict.fromkeys(ids))
        try:
            letters = self._lookup(order)
            groups: dict[str, list[DeadLetter]] = {}
            for job_id, letter in zip(order, letters, strict=True):
                if letter is None:
                    self._missing(job_id)
                else:
                    groups.setdefault(letter.queue, []).append(letter)
            for queue, group in sorted(groups.items()):
                self._queue(queue, group)
        finally:
            self.dq.close()
        return [self.results[i] for i in order]

    def _lookup(self, ids: list[str]) -> list[DeadLetter | None]:
        letters = self.store.get_dead_letters(ids)
        if any(letter is None for letter in letters):
            try:
                _rec.sync(self.store, self.dq)  # entries the store has not seen yet
            except BrokerUnavailable:
                pass  # the queues are reached again below, with a result per id
            letters = self.store.get_dead_letters(ids)
        return letters

    def _missing(self, job_id: str) -> None:
        record = self.store.get_job(job_id)
        if record is None:
            self._result(job_id, "not found", "no dead letter and no job with this id")
            return
        replays = [e for e in record.events if e.detail.startswith("replayed")]
        since = f", replayed at {iso(replays[-1].at)}" if replays else ""
        self._result(job_id, "not dead", f"not a dead letter: the job is {record.status.value}{since}", record.queue)

    def _result(self, job_id: str, outcome: str, detail: str = "", queue: str | None = None) -> None:
        self.results[job_id] = DeadResult(job_id, outcome, detail, queue)

    def _queue(self, queue: str, group: list[DeadLetter]) -> None:
        try:
            with _rec.queue_lock(self.store, queue), self.dq.session(queue) as session:
                found = self._locate(session, group)
                for i in range(0, len(group), BATCH):
                    self.batch(session, group[i : i + BATCH], found)
        except (BrokerUnavailable, StoreUnavailable) as exc:
            for letter in group:
                if letter.id not in self.results:
                    self._result(letter.id, "unreachable", f"{exc}; it was left as it was", queue)
        except _rec.QueueBusy as exc:
            for letter in group:
                if letter.id not in self.results:
                    self._result(letter.id, "failed", str(exc), queue)

    def _locate(self, session: Session, group: list[DeadLetter]) -> dict[str, list[XEntry]]:
        """The broker entries of each dead letter, by job id."""
        refs = [ref for letter in group for ref in letter.broker_ids]
        if refs and all(letter.broker_ids for letter in group):
            entries = session.fetch(refs)
        else:
            entries = session.scan(want={letter.id for letter in group})
            session.load(entries)
        found: dict[str, list[XEntry]] = {}
        for entry in entries:
            found.setdefault(entry.key, []).append(entry)
        return found

    def _gone(self, letters: list[DeadLetter]) -> None:
        """Dead letters the broker no longer has: not replayable; forget the store's copy.

        One captured a moment ago may not have reached the broker yet: it is left alone.
        """
        detail = "no longer in the broker's dead-letter queue (replayed, purged or expired elsewhere)"
        recent = now_ms() - _rec.GRACE_MS
        young = {x.id for x in letters if x.dead_at.timestamp() * 1000 > recent}
        wait = "dead-lettered a moment ago and not in the broker's dead-letter queue yet; try again shortly"
        for letter in letters:
            if letter.id in young:
                self._result(letter.id, "failed", wait, letter.queue)
        letters = [x for x in letters if x.id not in young]
        for letter in letters:
            self._result(letter.id, "gone", detail, letter.queue)
        if letters and not self.dry_run:
            forget, job = {"older_than_ms": 0}, {"detail": detail}
            _rec.apply(self.store, [{"k": "dead_forget", "id": x.id, "dead": forget, "job": job} for x in letters])

    def batch(self, session: Session, chunk: list[DeadLetter], found: dict[str, list[XEntry]]) -> None:
        """Act on up to :data:`BATCH` dead letters of one queue (``found``: their broker entries)."""
        raise NotImplementedError
