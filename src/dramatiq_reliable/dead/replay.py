"""Replaying and purging dead letters: the broker's entry moves (or goes), the store follows.

A replay, per batch of a queue's dead letters:

1. the job records go ``failed`` → ``queued`` (event "replayed", attempts reset), so a worker
   that takes the message at once finds the record ready for it;
2. the broker moves each entry to the live queue, atomically per entry: on Redis one Lua
   script removes it from the dead-letter queue and pushes the cleaned message (no window
   where it is in neither); on RabbitMQ the publishes and the acks of their dead-letter
   deliveries are one AMQP transaction. An entry is moved at most once, so replaying an id
   twice enqueues it once;
3. the store drops the dead letters moved, and puts back to ``failed`` the records of those
   the broker did not move (unreachable, or the entry was gone).

The replayed message keeps its id, arguments and options; ``retries``, ``traceback``,
``requeue_timestamp``, ``eta``, ``redis_message_id`` and Idempotency's put-back counter are
reset, ``message_timestamp`` becomes now (or ``AgeLimit`` would fail it again at once), and
``dr_replayed_at`` marks it. The broker's enqueue hooks run around it, as for any enqueue.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Sequence
from typing import Any

import dramatiq
from dramatiq import Message
from dramatiq.common import q_name
from dramatiq.middleware import MiddlewareError

from .._clock import iso, now_ms
from ..brokers import dead_queue
from ..errors import BrokerUnavailable, ConfigurationError, DramatiqReliableError, NotFound, StoreUnavailable
from ..middleware.idempotency import PUT_BACK_OPTION, REPLAY_OPTION
from ..records import DeadLetter, DeadResult
from ..store.base import Store
from . import reconcile as _rec
from .xq import DeadQueue, Session, XEntry

#: Options a replay resets.
RESET_OPTIONS = ("retries", "traceback", "requeue_timestamp", "eta", "redis_message_id", PUT_BACK_OPTION)
#: Dead letters moved per broker call and store call.
BATCH = 500


def clean(message: Message[Any], now: int) -> Message[Any]:
    """The message to enqueue for a replay (see the module docstring)."""
    options = {k: v for k, v in message.options.items() if k not in RESET_OPTIONS}
    options[REPLAY_OPTION] = now
    return Message(
        queue_name=q_name(message.queue_name),
        actor_name=message.actor_name,
        args=message.args,
        kwargs=message.kwargs,
        options=options,
        message_id=message.message_id,
        message_timestamp=now,
    )


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "?"
    return f"{user}@{socket.gethostname()}"


class _Operation:
    """One ``replay`` or ``purge`` call."""

    def __init__(self, store: Store, broker: dramatiq.Broker, action: str, dry_run: bool) -> None:
        if not isinstance(store, Store):
            raise ConfigurationError(f"{action}() needs a store, not {store!r}")
        self.store = store
        self.broker = broker
        self.action = action
        self.dry_run = dry_run
        self.dq: DeadQueue = dead_queue(broker)
        self.results: dict[str, DeadResult] = {}
        self.who = _who()

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
                    chunk = group[i : i + BATCH]
                    if self.action == "replay":
                        self._replay(session, chunk, found)
                    else:
                        self._purge(session, chunk, found)
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
            forget, job = {"before": now_ms() + 1}, {"detail": detail}
            _rec.apply(self.store, [{"k": "dead_forget", "id": x.id, "dl": forget, "job": job} for x in letters])

    # -- replay ---------------------------------------------------------------------------------

    def _replay(self, session: Session, chunk: list[DeadLetter], found: dict[str, list[XEntry]]) -> None:
        todo: list[tuple[DeadLetter, XEntry, list[XEntry]]] = []
        gone = []
        for letter in chunk:
            copies = found.get(letter.id, [])
            good = [e for e in copies if e.message is not None]
            if not copies:
                gone.append(letter)
            elif not good or letter.malformed:
                reason = letter.malformed or copies[0].problem or "cannot be decoded"
                self._result(letter.id, "malformed", f"cannot be replayed ({reason}); purge it", letter.queue)
            else:
                todo.append((letter, good[0], [e for e in copies if e is not good[0]]))
        self._gone(gone)
        if self.dry_run:
            for letter, _entry, _drop in todo:
                self._result(letter.id, "would replay", f"to queue {letter.queue!r}", letter.queue)
        elif todo:
            job = {"detail": f"replayed from the dead-letter queue by {self.who}", "hist": 50}
            results = _rec.apply(self.store, [{"k": "replay", "id": x.id, "job": job} for x, _, _ in todo])
            requeued = [x for (x, _, _), r in zip(todo, results, strict=True) if r.get("requeued")]
            ops = self._move(session, todo)
            for x in requeued:
                if self.results[x.id].outcome != "replayed":
                    undo = {"detail": f"not replayed: {self.results[x.id].detail}", "hist": 50}
                    ops.append({"k": "replay_failed", "id": x.id, "job": undo})
            try:
                _rec.apply(self.store, ops)
            except StoreUnavailable as exc:
                for op in ops:
                    if op["k"] == "replayed":
                        r = self.results[op["id"]]
                        self._result(r.id, r.outcome, f"{r.detail} (store not updated: {exc})", r.queue)

    def _move(self, session: Session, todo: list[tuple[DeadLetter, XEntry, list[XEntry]]]) -> list[dict[str, Any]]:
        """Move the entries to the live queue; the store ops that follow."""
        now = now_ms()
        items: list[tuple[DeadLetter, XEntry, Message[Any]]] = []
        drop: list[XEntry] = []
        for letter, entry, others in todo:
            assert entry.message is not None
            message = session.prepare(clean(entry.message, now))
            try:
                self.broker.emit_before("enqueue", message, None)
            except MiddlewareError as exc:
                self._result(letter.id, "refused", f"a middleware refused the enqueue: {exc}", letter.queue)
                continue
            items.append((letter, entry, message))
            drop += others
        try:
            moved = session.move([(e, m) for _, e, m in items], drop) if items else []
        except (BrokerUnavailable, NotFound) as exc:
            moved = list(getattr(exc, "moved", None) or [False] * len(items))
            outcome = "unreachable" if isinstance(exc, BrokerUnavailable) else "failed"
            for (letter, _, _), ok in zip(items, moved, strict=True):
                if not ok:
                    self._result(letter.id, outcome, f"{exc}; it stays in the dead-letter queue", letter.queue)
        ops: list[dict[str, Any]] = []
        for (letter, _entry, message), ok in zip(items, moved, strict=True):
            if ok:
                self.broker.emit_after("enqueue", message, None)
                self._result(letter.id, "replayed", f"to queue {letter.queue!r}", letter.queue)
                ops.append({"k": "replayed", "id": letter.id, "dl": {}})
            elif letter.id not in self.results:
                self._gone([letter])
        return ops

    # -- purge ----------------------------------------------------------------------------------

    def _purge(self, session: Session, chunk: list[DeadLetter], found: dict[str, list[XEntry]]) -> None:
        if self.dry_run:
            for letter in chunk:
                where = "from broker and store" if found.get(letter.id) else "from the store (not in the broker)"
                self._result(letter.id, "would purge", where, letter.queue)
            return
        entries = [e for letter in chunk for e in found.get(letter.id, [])]
        failure: BrokerUnavailable | None = None
        try:
            session.remove(entries)
            removed = {id(e) for e in entries}
        except BrokerUnavailable as exc:
            failure = exc
            flags = list(getattr(exc, "moved", None) or [False] * len(entries))
            removed = {id(e) for e, ok in zip(entries, flags, strict=True) if ok}
        done = [x for x in chunk if all(id(e) in removed for e in found.get(x.id, []))]
        done_ids = {x.id for x in done}
        job = {"detail": f"purged from the dead-letter queue by {self.who}", "hist": 50}
        _rec.apply(self.store, [{"k": "dead_purge", "id": x.id, "dl": {}, "job": job} for x in done])
        for letter in chunk:
            if letter.id in done_ids:
                where = "" if found.get(letter.id) else "only the stored copy: it was no longer in the broker"
                self._result(letter.id, "purged", where, letter.queue)
            else:
                self._result(letter.id, "unreachable", f"{failure}; it stays in the dead-letter queue", letter.queue)


def replay(store: Store, broker: dramatiq.Broker, ids: Sequence[str], *, dry_run: bool = False) -> list[DeadResult]:
    """Put dead letters back on their queues, with the same job ids (see the module docstring).

    Parameters:
      store(Store): the store DeadLetters writes to.
      broker(Broker): a broker on the same server and namespace as the app's (a tool broker
        from ``dr.brokers.broker_from_url`` will do).
      ids(list[str]): job ids (Dramatiq message ids) of dead letters.
      dry_run(bool): report what would be done; change nothing.

    Returns:
      list[DeadResult]: one per distinct id, in order (see :class:`~dramatiq_reliable.DeadResult`).

    Raises:
      ConfigurationError: ``ids`` is not a list of ids, or the broker is not supported.
      StoreUnavailable: the store cannot be reached (nothing was replayed).
    """
    return _Operation(store, broker, "replay", dry_run).run(ids)


def purge(store: Store, broker: dramatiq.Broker, ids: Sequence[str], *, dry_run: bool = False) -> list[DeadResult]:
    """Delete dead letters from the broker's dead-letter queue and the store; nothing else.

    Only the entries of these ids in ``<queue>.XQ`` are removed: the live queue, its delayed
    messages and the messages workers hold are never touched. The job records stay
    ``failed``, with a "purged" event.

    Returns:
      list[DeadResult]: one per distinct id (``purged``, ``would purge``, ``not found``, …).

    Raises:
      ConfigurationError, StoreUnavailable: as :func:`replay`.
    """
    return _Operation(store, broker, "purge", dry_run).run(ids)


__all__ = ["DramatiqReliableError", "clean", "purge", "replay"]
