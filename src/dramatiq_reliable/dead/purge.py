"""Purging dead letters: their entries leave the broker's dead-letter queue, then the store."""

from __future__ import annotations

from collections.abc import Sequence

import dramatiq

from ..errors import BrokerUnavailable
from ..records import DeadLetter, DeadResult
from ..store.base import Store
from . import reconcile as _rec
from .operation import Operation
from .xq import PartialMove, Session, XEntry


class _Purge(Operation):
    action = "purge"

    def batch(self, session: Session, chunk: list[DeadLetter], found: dict[str, list[XEntry]]) -> None:
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
            flags = list(exc.moved) if isinstance(exc, PartialMove) else [False] * len(entries)
            removed = {id(e) for e, ok in zip(entries, flags, strict=True) if ok}
        done = [x for x in chunk if all(id(e) in removed for e in found.get(x.id, []))]
        done_ids = {x.id for x in done}
        job = {"detail": f"purged from the dead-letter queue by {self.who}", "hist": 50}
        _rec.apply(self.store, [{"k": "dead_purge", "id": x.id, "dead": {}, "job": job} for x in done])
        for letter in chunk:
            if letter.id in done_ids:
                where = "" if found.get(letter.id) else "only the stored copy: it was no longer in the broker"
                self._result(letter.id, "purged", where, letter.queue)
            else:
                self._result(letter.id, "unreachable", f"{failure}; it stays in the dead-letter queue", letter.queue)


def purge(
    store: Store, broker: dramatiq.Broker, ids: Sequence[str], *, dry_run: bool = False, by: str | None = None
) -> list[DeadResult]:
    """Delete dead letters from the broker's dead-letter queue and the store; nothing else.

    Only the entries of these ids in ``<queue>.XQ`` are removed: the live queue, its delayed
    messages and the messages workers hold are never touched. The job records stay
    ``failed``, with a "purged" event naming ``by`` (default: the operator's ``user@host``).

    Returns:
      list[DeadResult]: one per distinct id (``purged``, ``would purge``, ``not found``, …).

    Raises:
      ConfigurationError, StoreUnavailable: as :func:`replay`.
    """
    return _Purge(store, broker, dry_run, by).run(ids)
