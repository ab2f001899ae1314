"""The store contract.

A store keeps job records, idempotency keys, dead letters and throttles, shared by every
worker process and host. ``RedisStore`` is the real one; ``MemoryStore`` is ``RedisStore``
over an in-process Redis running the same Lua library, for tests, the demo and ``StubBroker``.
Both pass the same test suite (``tests/contract``).

Writes go through :meth:`Store.apply`: a batch of operations ("ops"), each the transition of
one job, applied atomically per op and in order. The :class:`~.journal.Journal` groups the ops
of all threads of a process into one batch (group commit). The op schema lives in
:mod:`dramatiq_reliable.store.ops`.
"""

from __future__ import annotations

import abc
import functools
import os
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from .._clock import now_ms
from .._stored import Corrupt
from . import _dead, _paging

if TYPE_CHECKING:
    from datetime import datetime

    from ..fleet import WorkerProcess
    from ..records import CronTick, DeadLetter, DeadStats, JobRecord, Page
    from ..status import Status
    from .journal import Journal


#: The reads of job records that first apply this process's unsent writes (see :func:`_reads_own_writes`).
OWN_WRITES_FIRST = ("get_job", "find_jobs", "count_jobs")

_F = TypeVar("_F", bound=Callable[..., Any])


def _reads_own_writes(read: _F) -> _F:
    """``read``, after this process's writes still in its journals were applied (read-your-writes).

    ``send()`` hands the job's record to the journal without waiting for the store; a process
    that reads records after sending finds its own jobs there (operator controls, which act on
    records, do the same: :func:`dramatiq_reliable.control.cancel`). Nothing is waited for when
    the process has no write in flight.
    """
    if getattr(read, "reads_own_writes", False):
        return read

    @functools.wraps(read)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .journal import flush_unsent

        flush_unsent()
        return read(*args, **kwargs)

    wrapper.reads_own_writes = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


class Store(abc.ABC):
    """Where dramatiq-reliable keeps its state. See the module docstring."""

    #: The URL the store was opened with, for display (passwords hidden).
    url: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in OWN_WRITES_FIRST:
            if name in cls.__dict__:
                setattr(cls, name, _reads_own_writes(cls.__dict__[name]))

    def __init__(self) -> None:
        self._journal: Journal | None = None
        self._journal_pid = 0
        self._journal_lock = threading.Lock()

    @property
    def journal(self) -> Journal:
        """This process's group-commit journal for this store (created on first use)."""
        journal = self._journal
        if journal is not None and self._journal_pid == os.getpid():
            return journal
        from .journal import Journal

        with self._journal_lock:
            if self._journal is None or self._journal_pid != os.getpid():
                self._journal = Journal(self)
                self._journal_pid = os.getpid()
            return self._journal

    # -- writes --------------------------------------------------------------------------------

    @abc.abstractmethod
    def apply(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Apply a batch of ops (see :mod:`.ops`).

        Parameters:
          batch(dict): ``{"ops": [op, ...]}`` plus optional ``retention_ms`` (status →
            retention), ``limit`` (records to clean up at most), ``ttl_ms`` (status → how long
            a record in that status is kept at most) and ``sent_ms`` (see :class:`.ops.Batch`).

        Returns:
          list[dict]: one result per op, in order (``{"error": ...}`` for an op that failed).

        Raises:
          StoreUnavailable: the store cannot be reached; nothing was applied.
          StoreError: the store refused the batch.
        """

    def apply_serial(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """:meth:`apply`, for the journal of this process (one call at a time).

        A store may take a faster path here (``RedisStore`` uses a connection of its own).
        """
        return self.apply(batch)

    # -- reads ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def get_job(self, job_id: str) -> JobRecord | None:
        """The record of one job, or ``None`` if there is none (never recorded, or expired).

        Raises:
          CorruptRecord: the stored record cannot be decoded (listings skip it: ``Page.corrupt``).
        """

    @_reads_own_writes
    def find_jobs(
        self,
        *,
        status: Status | str | None = None,
        actor: str | None = None,
        key: tuple[str, Any] | None = None,
        limit: int = 50,
        cursor: str | None = None,
        queue: str | None = None,
        since: datetime | None = None,
    ) -> Page:
        """Jobs matching every filter given, newest first, one page at a time.

        Parameters:
          status: only jobs in this status (ordered by when they entered it).
          actor: only jobs of this actor (ordered by when they entered their status).
          key: only jobs with this business key ``(name, value)``. Keys are recorded as
            strings; any other value is turned into one the same way (``("order_id", 4711)``
            finds what ``order_id=4711`` recorded as ``"4711"``).
          queue: only jobs of this queue (checked on the records the other filters find).
          since: only jobs enqueued at or after this time (aware datetime).
          limit: at most this many records (1-1000).
          cursor: the ``cursor`` of the previous page.

        Returns:
          Page: of :class:`~dramatiq_reliable.JobRecord`; ``page.cursor`` is ``None`` at the end.

        Raises:
          ConfigurationError: a malformed cursor, an unknown status, a bad limit, or a key that
            is not a ``(name, value)`` pair with a JSON value.
        """
        status_value = _paging.check_query(status, limit)
        key = _paging.check_key(key)
        return _paging.find(
            fetch=self._fetch_index,
            load=self._load_records,
            status=status_value,
            actor=actor,
            key=key,
            limit=limit,
            cursor=cursor,
            member=self._member,
            intersect=self._intersect,
            actors=self._actors,
            fetch_many=self._fetch_indexes,
            queue=queue,
            since_ms=since.timestamp() * 1000 if since is not None else None,
        )

    # The indexes of job records, read by ``find_jobs`` (see ``_paging`` for the contracts).

    @abc.abstractmethod
    def _fetch_index(self, index: str, position: _paging.Entry | None, count: int) -> list[_paging.Entry]:
        """Up to ``count`` entries of ``jobs:<index>`` strictly after ``position``, newest first."""

    def _fetch_indexes(
        self, indexes: Sequence[str], position: _paging.Entry | None, count: int
    ) -> list[list[_paging.Entry]]:
        """:meth:`_fetch_index` of each index (a store may read them in one round trip)."""
        return [self._fetch_index(index, position, count) for index in indexes]

    @abc.abstractmethod
    def _load_records(self, ids: Sequence[str]) -> list[dict[str, Any] | Corrupt | None]:
        """The stored job records of ``ids``: ``None`` where missing, ``Corrupt`` where undecodable."""

    @abc.abstractmethod
    def _actors(self) -> list[str]:
        """Every actor that has an index of job records."""

    @abc.abstractmethod
    def _member(self, index: str, ids: Sequence[str]) -> list[bool]:
        """For each id, whether ``jobs:<index>`` holds it."""

    @abc.abstractmethod
    def _intersect(self, index: str, others: Sequence[str], most: int) -> list[_paging.Entry] | None:
        """The entries of ``index`` every one of ``others`` holds, newest first; ``None`` if too large."""

    # -- step checkpoints (``dr.once``) ---------------------------------------------------------

    # A scope is the idempotency key a delivery claimed (``<actor>:<rendered>``, or
    # ``msg:<job id>``); the ``finish`` op that completes the key drops its checkpoints.

    @abc.abstractmethod
    def once_get(self, scope: str, name: str) -> str | None:
        """The stored JSON result of step ``name`` in ``scope``, or ``None`` if it has not completed."""

    @abc.abstractmethod
    def once_set(self, scope: str, name: str, result_json: str, ttl_ms: int) -> None:
        """Store the JSON result of step ``name`` in ``scope``; the scope's steps are kept ``ttl_ms`` ms."""

    # -- cron ---------------------------------------------------------------------------------
    # Claims of cron ticks (``store/lua/60_cron.lua``), used by the scheduler. A tick is
    # ``(schedule name, fire time in ms)``. Leases follow the store's clock; ``now`` (ms since
    # the epoch) runs the call at another time, for tests that drive time. Each is one store call.

    def _cron(self, kind: str, section: dict[str, Any], now: int | None, op_id: str = "-") -> dict[str, Any]:
        from ..errors import StoreError

        batch: dict[str, Any] = {"ops": [{"k": kind, "id": op_id, "cron": section}]}
        if now is not None:
            batch["now_ms"] = int(now)
        results = self.apply(batch)
        result = results[0] if results else {}
        if "error" in result:
            raise StoreError(f"store {self.url} refused {kind}: {result['error']}")
        return result

    def cron_claim(
        self, name: str, fire_ms: int, job_id: str, *, owner: str, lease_ms: int, grace_ms: int, now: int | None = None
    ) -> tuple[str, str]:
        """Claim a tick for ``owner``: the claimer enqueues it, no one else does.

        Parameters:
          name(str): the schedule.
          fire_ms(int): the tick's fire time.
          job_id(str): the id of the job the tick enqueues.
          owner(str): the claiming scheduler.
          lease_ms(int): milliseconds after which a claim still pending may be taken over
            (:meth:`cron_sweep`).
          grace_ms(int): milliseconds after ``fire_ms`` past which a pending tick is given up;
            the claim is kept ``grace_ms + lease_ms + 60 s``, so a late scheduler still finds it.

        Returns:
          tuple: ``("claimed", owner)``, or ``("taken", holder)`` if the tick was claimed before.

        Raises:
          StoreUnavailable: the store cannot be reached; nothing was claimed.
        """
        keep = int(grace_ms) + int(lease_ms) + 60_000
        section = {"name": name, "fire_ms": int(fire_ms), "job": job_id, "by": owner}
        section.update(lease_ms=int(lease_ms), grace_ms=int(grace_ms), keep_ms=keep)
        result = self._cron("cron_claim", section, now, job_id)
        return (str(result.get("outcome")), str(result.get("by") or owner))

    def cron_confirm(
        self, name: str, fire_ms: int, *, owner: str, state: str = "sent", now: int | None = None
    ) -> tuple[str, str]:
        """Record that ``owner`` enqueued a tick (``state="sent"``) or found it a duplicate (``"skipped"``).

        Returns:
          tuple: ``("confirmed", owner)``; ``("late", holder)`` if the claim had been taken over
          meanwhile; ``("gone", "")`` if the claim expired.
        """
        section = {"name": name, "fire_ms": int(fire_ms), "by": owner, "st": state}
        result = self._cron("cron_confirm", section, now)
        return (str(result.get("outcome")), str(result.get("by") or ""))

    def cron_release(self, name: str, fire_ms: int, *, owner: str, retry_ms: int, now: int | None = None) -> bool:
        """The enqueue of a claimed tick failed: any scheduler may retry it in ``retry_ms`` ms.

        Returns:
          bool: ``False`` if ``owner`` no longer held the claim.
        """
        section = {"name": name, "fire_ms": int(fire_ms), "by": owner, "retry_ms": int(retry_ms)}
        return self._cron("cron_release", section, now).get("outcome") == "released"

    def cron_sweep(
        self, names: list[str], *, owner: str, lease_ms: int, now: int | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Take over the pending ticks of ``names`` whose claim lapsed.

        A tick still within its grace is claimed for ``owner`` for ``lease_ms`` (``"retake"``:
        the caller enqueues it, with its job id); one past it is marked missed (``"missed"``).

        Returns:
          list[dict]: ``{"o": "retake" | "missed", "name", "fire" (ms), "job", "by" (the previous
          holder)}``, at most ``limit`` per schedule.
        """
        section = {"names": list(names), "by": owner, "lease_ms": int(lease_ms), "limit": int(limit)}
        ticks = self._cron("cron_sweep", section, now).get("ticks")
        return ticks if isinstance(ticks, list) else []  # Lua's cjson encodes an empty list as {}

    def cron_last(self, names: list[str], *, now: int | None = None) -> dict[str, CronTick]:
        """The latest tick of each schedule in ``names`` that has one."""
        from ..records import CronTick

        found = self._cron("cron_read", {"names": list(names)}, now).get("last")
        if not isinstance(found, dict):
            return {}
        return {name: CronTick.from_stored(name, data) for name, data in found.items()}

    # -- Watchdog -------------------------------------------------------------------------------

    @abc.abstractmethod
    def worker_processes(self) -> list[WorkerProcess]:
        """The worker processes the Watchdog knows: alive ones first, then those found dead.

        Dead processes are kept an hour after they were found dead (for their broker
        messages to be put back, and in case they come back); then they are forgotten.

        Returns:
          list[WorkerProcess]: one item per process.
        """

    # -- dead letters ------------------------------------------------------------------------

    def dead_letters(
        self,
        *,
        queue: str | None = None,
        actor: str | None = None,
        since: datetime | None = None,
        before: datetime | None = None,
        error: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """The dead letters the store holds, newest first, one page at a time.

        This is the store's copy; ``dr.dead.find`` first reconciles it with the broker's
        dead-letter queues (see :mod:`dramatiq_reliable.dead`).

        Parameters:
          queue: only those dead-lettered from this (canonical) queue.
          actor: only those of this actor.
          since: only those dead-lettered at or after this time (aware datetime).
          before: only those dead-lettered before this time (aware datetime).
          error: only those whose final error (``"Type: message"``) contains this text,
            ignoring case; ``"malformed"`` finds the entries that cannot be decoded.
          limit: at most this many (1-1000).
          cursor: the ``cursor`` of the previous page.

        Returns:
          Page: of :class:`~dramatiq_reliable.DeadLetter`; ``page.cursor`` is ``None`` at the end.

        Raises:
          ConfigurationError: a malformed cursor, bad bounds or a bad limit.
        """
        return _dead.find(
            fetch=self._fetch_dead,
            load=self._load_dead,
            queue=queue,
            actor=actor,
            since=since,
            before=before,
            error=error,
            limit=limit,
            cursor=cursor,
            now_ms=self._now_ms(),
        )

    @abc.abstractmethod
    def _fetch_dead(
        self, index: str, position: _paging.Entry | None, count: int, low: float, high: float
    ) -> list[_paging.Entry]:
        """Up to ``count`` entries of ``deads:<index>`` scored in ``[low, high)`` after ``position``."""

    @abc.abstractmethod
    def _load_dead(self, ids: Sequence[str]) -> list[tuple[_dead.Stored, _dead.Stored]]:
        """``(dead-letter record, job record)`` per id: ``None`` where missing, ``Corrupt`` where undecodable."""

    def _now_ms(self) -> int:
        """The time expiry is judged by (``MemoryStore`` has its own clock)."""
        return now_ms()

    @abc.abstractmethod
    def get_dead_letter(self, job_id: str) -> DeadLetter | None:
        """The dead letter of one job, or ``None`` (not dead-lettered, replayed, purged or expired)."""

    def get_dead_letters(self, job_ids: list[str]) -> list[DeadLetter | None]:
        """:meth:`get_dead_letter` for many ids at once, in order."""
        return [self.get_dead_letter(i) for i in job_ids]

    @abc.abstractmethod
    def dead_letter_stats(self) -> DeadStats:
        """Counts of the dead letters held, by actor and error type and by queue."""

    @abc.abstractmethod
    def dead_letter_queues(self) -> dict[str, tuple[int, int]]:
        """Every queue the store knows of: queue → ``(dead letters held, offset)``.

        Queues are known from the declarations of apps that run DeadLetters and from the dead
        letters themselves. ``offset`` is how many more entries the broker's dead-letter queue
        held than the store at the last reconciliation (see :mod:`dramatiq_reliable.dead`).
        """

    @abc.abstractmethod
    def dead_letter_index(self, queue: str) -> tuple[dict[str, int], dict[str, str]]:
        """For reconciling one queue: ``({job id: dead at ms}, {Redis broker id: job id})``."""

    # -- housekeeping ---------------------------------------------------------------------------

    @abc.abstractmethod
    def ping(self) -> None:
        """Check the store answers.

        Raises:
          StoreUnavailable: it does not.
        """

    def check_server(self) -> list[str]:
        """What a worker should know about the store's server at boot, one line each (Redis: an
        eviction policy that may drop idempotency markers). None for an in-process store.

        Raises:
          StoreUnavailable: it cannot be reached, or cannot take writes (a read-only replica).
        """
        return []

    # -- alerts / metrics -----------------------------------------------------------------------

    @abc.abstractmethod
    def count_jobs(self, statuses: Sequence[Status | str] | None = None) -> dict[str, int]:
        """How many job records are in each status (one cheap call: the status indexes' sizes).

        Parameters:
          statuses: the statuses to count. Defaults to every status.

        Returns:
          dict[str, int]: status value -> number of records.

        Raises:
          ConfigurationError: an unknown status.
          StoreUnavailable: the store cannot be reached.
        """

    def stats_minutes(self, first: int, last: int) -> dict[int, dict[str, int]]:
        """The per-minute counters of minutes ``first`` to ``last`` (inclusive; minute = ms // 60000).

        Written with each job's final write (``lua/70_stats.lua``), kept 25 hours. Each minute
        that holds any maps ``"a\t<actor>\t<done|failed|dead>"`` to a count and
        ``"w\t<queue>"`` to the longest wait (ms) of a job of that queue that ended then.

        Raises:
          StoreUnavailable: the store cannot be reached.
        """
        return {}

    def close(self) -> None:
        """Flush pending writes, stop this process's heartbeat for the store, release connections."""
        from ..middleware._heartbeat import stop_heartbeat

        stop_heartbeat(self)
        journal = self._journal
        if journal is not None and self._journal_pid == os.getpid():
            journal.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


# -- alerts / metrics ---


def statuses_to_count(statuses: Sequence[Status | str] | None) -> list[str]:
    """The status values :meth:`Store.count_jobs` counts (every status by default)."""
    from ..errors import ConfigurationError
    from ..status import Status

    if statuses is None:
        return [s.value for s in Status]
    names = []
    for status in statuses:
        try:
            names.append(Status(status).value)
        except ValueError:
            known = ", ".join(s.value for s in Status)
            raise ConfigurationError(f"unknown status {status!r} (known: {known})") from None
    return names
