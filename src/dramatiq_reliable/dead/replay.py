"""Replaying dead letters: the broker's entry moves to the live queue, the store follows.

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

from collections.abc import Sequence
from typing import Any

import dramatiq
from dramatiq import Message
from dramatiq.common import q_name
from dramatiq.middleware import MiddlewareError

from .._clock import now_ms
from ..errors import BrokerUnavailable, NotFound, StoreUnavailable
from ..middleware._redelivery import PUT_BACK_OPTION, REDELIVERED_OPTION, REPLAY_OPTION
from ..records import DeadLetter, DeadResult
from ..store.base import Store
from . import reconcile as _rec
from .operation import Operation
from .xq import PartialMove, Session, XEntry

#: Options a replay resets.
RESET_OPTIONS = (
    "retries",
    "traceback",
    "requeue_timestamp",
    "eta",
    "redis_message_id",
    PUT_BACK_OPTION,
    REDELIVERED_OPTION,
)


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


class _Replay(Operation):
    action = "replay"

    def batch(self, session: Session, chunk: list[DeadLetter], found: dict[str, list[XEntry]]) -> None:
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
            moved = list(exc.moved) if isinstance(exc, PartialMove) else [False] * len(items)
            outcome = "unreachable" if isinstance(exc, BrokerUnavailable) else "failed"
            for (letter, _, _), ok in zip(items, moved, strict=True):
                if not ok:
                    self._result(letter.id, outcome, f"{exc}; it stays in the dead-letter queue", letter.queue)
        ops: list[dict[str, Any]] = []
        for (letter, _entry, message), ok in zip(items, moved, strict=True):
            if ok:
                self.broker.emit_after("enqueue", message, None)
                self._result(letter.id, "replayed", f"to queue {letter.queue!r}", letter.queue)
                ops.append({"k": "replayed", "id": letter.id, "dead": {}})
            elif letter.id not in self.results:
                self._gone([letter])
        return ops


def replay(
    store: Store, broker: dramatiq.Broker, ids: Sequence[str], *, dry_run: bool = False, by: str | None = None
) -> list[DeadResult]:
    """Put dead letters back on their queues, with the same job ids (see the module docstring).

    Parameters:
      store(Store): the store DeadLetters writes to.
      broker(Broker): a broker on the same server and namespace as the app's (a tool broker
        from ``dr.brokers.broker_from_url`` will do).
      ids(list[str]): job ids (Dramatiq message ids) of dead letters.
      dry_run(bool): report what would be done; change nothing.
      by(str): who replays, for the job's history ("replayed … by <by>"). Defaults to the
        operator's ``user@host``.

    Returns:
      list[DeadResult]: one per distinct id, in order (see :class:`~dramatiq_reliable.DeadResult`).

    Raises:
      ConfigurationError: ``ids`` is not a list of ids, or the broker is not supported.
      StoreUnavailable: the store cannot be reached (nothing was replayed).
    """
    return _Replay(store, broker, dry_run, by).run(ids)
