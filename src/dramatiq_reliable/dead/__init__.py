"""Dead letters: list, show, replay and purge them, the same way on Redis and on RabbitMQ.

The :class:`~dramatiq_reliable.DeadLetters` middleware keeps each dead-lettered message in
the store with its final error; the broker's dead-letter queue (``<queue>.XQ``) stays the
source of truth for what is still dead. The functions here combine both::

    import dramatiq_reliable as dr
    from dramatiq_reliable.brokers import broker_from_url

    broker = broker_from_url("redis://127.0.0.1:6379/0")
    page = dr.dead.find(store, broker, actor="send_invoice", since=an_hour_ago)
    results = dr.replay(store, broker, [letter.id for letter in page])
    dr.purge(store, broker, ["c0ffee…"])

* :func:`find` and :func:`stats` first :func:`sync` the store with the broker (cheap when
  nothing changed outside dramatiq-reliable), so entries dead-lettered before DeadLetters was
  installed, or while the store was down, are listed too, and copies the broker no longer has
  are not.
* :func:`replay` and :func:`purge` act on the broker's entry first; an id is replayed at
  most once however often it is asked for.
"""

from __future__ import annotations

from datetime import datetime

import dramatiq

from ..brokers import dead_queue
from ..errors import NotFound
from ..middleware.dead_letters import DEFAULT_RETENTION
from ..records import DeadLetter, DeadResult, DeadStats, Page
from ..store.base import Store
from .purge import purge
from .reconcile import GRACE_MS, QueueBusy, SyncReport
from .replay import clean, replay


def sync(
    store: Store,
    broker: dramatiq.Broker,
    *,
    queues: list[str] | None = None,
    force: bool = False,
    retention: float = DEFAULT_RETENTION,
) -> SyncReport:
    """Reconcile the store's dead letters with ``broker``'s dead-letter queues.

    See :mod:`dramatiq_reliable.dead.reconcile`. ``queues`` limits it to those queues; ``force``
    reads them in full even where the counts agree; ``retention`` (seconds) is how long
    entries found only in the broker are kept in the store.

    Raises:
      BrokerUnavailable, StoreUnavailable: a server could not be reached.
    """
    from .reconcile import sync as _sync

    dq = dead_queue(broker)
    try:
        return _sync(store, dq, queues=queues, force=force, retention=retention)
    finally:
        dq.close()


def find(
    store: Store,
    broker: dramatiq.Broker | None = None,
    *,
    queue: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    before: datetime | None = None,
    error: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """Dead letters, newest first, after reconciling with ``broker`` (on the first page).

    Without a broker, the store's copy alone is listed. Parameters as
    :meth:`Store.dead_letters <dramatiq_reliable.Store.dead_letters>`.
    """
    if broker is not None and cursor is None:
        sync(store, broker, queues=[queue] if queue else None)
    return store.dead_letters(
        queue=queue, actor=actor, since=since, before=before, error=error, limit=limit, cursor=cursor
    )


def show(store: Store, broker: dramatiq.Broker | None, job_id: str) -> DeadLetter:
    """One dead letter (reconciled with ``broker`` if given).

    Raises:
      NotFound: there is no dead letter with that id.
    """
    letter = store.get_dead_letter(job_id)
    if letter is None and broker is not None:
        sync(store, broker)
        letter = store.get_dead_letter(job_id)
    if letter is None:
        raise NotFound(f"no dead letter {job_id!r} (never dead-lettered, replayed, purged or expired)")
    return letter


def stats(store: Store, broker: dramatiq.Broker | None = None) -> DeadStats:
    """Counts by actor and error type, and per queue (with the broker's own counts if given)."""
    if broker is None:
        return store.dead_letter_stats()
    report = sync(store, broker)
    result = store.dead_letter_stats()
    return DeadStats(result.total, result.by_kind, result.by_queue, in_broker=report.in_broker)


__all__ = [
    "GRACE_MS",
    "DeadLetter",
    "DeadResult",
    "DeadStats",
    "QueueBusy",
    "SyncReport",
    "clean",
    "find",
    "purge",
    "replay",
    "show",
    "stats",
    "sync",
]
