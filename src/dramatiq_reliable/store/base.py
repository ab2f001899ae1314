"""The store contract.

A store keeps job records, idempotency keys, dead letters and throttles, shared by every
worker process and host. ``RedisStore`` is the real one; ``MemoryStore`` keeps everything in
the process for tests, the demo and ``StubBroker``. Both pass the same test suite
(``tests/contract``).

Writes go through :meth:`Store.apply`: a batch of operations ("ops"), each the transition of
one job, applied atomically per op and in order. The :class:`~.journal.Journal` groups the ops
of all threads of a process into one batch (group commit). The op schema lives in
:mod:`dramatiq_reliable.store.ops`.
"""

from __future__ import annotations

import abc
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..records import JobRecord, Page
    from ..status import Status
    from .journal import Journal


class Store(abc.ABC):
    """Where dramatiq-reliable keeps its state. See the module docstring."""

    #: The URL the store was opened with, for display (passwords hidden).
    url: str = ""

    def __init__(self) -> None:
        self._journal: Journal | None = None
        self._journal_pid = 0
        self._journal_lock = threading.Lock()

    @property
    def journal(self) -> Journal:
        """This process's group-commit journal for this store (created on first use)."""
        journal = self._journal
        if journal is None or self._journal_pid != os.getpid():
            from .journal import Journal

            with self._journal_lock:
                if self._journal is None or self._journal_pid != os.getpid():
                    self._journal = Journal(self)
                    self._journal_pid = os.getpid()
                journal = self._journal
        return journal

    # -- writes --------------------------------------------------------------------------------

    @abc.abstractmethod
    def apply(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Apply a batch of ops (see :mod:`.ops`).

        Parameters:
          batch(dict): ``{"now": ms, "ops": [op, ...]}`` plus optional ``cleanup``
            (status → retention in milliseconds), ``limit`` (records to clean up at most) and
            ``ttl`` (status → milliseconds a record in that status is kept at most).

        Returns:
          list[dict]: one result per op, in order (``{"error": ...}`` for an op that failed).

        Raises:
          StoreUnavailable: the store cannot be reached; nothing was applied.
          StoreError: the store refused the batch.
        """

    # -- reads ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def get_job(self, job_id: str) -> JobRecord | None:
        """The record of one job, or ``None`` if there is none (never recorded, or expired)."""

    @abc.abstractmethod
    def find_jobs(
        self,
        *,
        status: Status | str | None = None,
        actor: str | None = None,
        key: tuple[str, str] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Jobs matching every filter given, newest first, one page at a time.

        Parameters:
          status: only jobs in this status (ordered by when they entered it).
          actor: only jobs of this actor (ordered by enqueue time).
          key: only jobs with this business key ``(name, value)``; values are strings.
          limit: at most this many records (1-1000).
          cursor: the ``cursor`` of the previous page.

        Returns:
          Page: of :class:`~dramatiq_reliable.JobRecord`; ``page.cursor`` is ``None`` at the end.

        Raises:
          ConfigurationError: a malformed cursor, an unknown status or a bad limit.
        """

    # -- step checkpoints (``dr.once``) ---------------------------------------------------------

    @abc.abstractmethod
    def once_get(self, job_id: str, name: str) -> str | None:
        """The stored JSON result of step ``name`` of a job, or ``None`` if it has not completed."""

    @abc.abstractmethod
    def once_set(self, job_id: str, name: str, result_json: str, ttl_ms: int) -> None:
        """Store the JSON result of step ``name``; kept ``ttl_ms`` milliseconds."""

    # -- housekeeping ---------------------------------------------------------------------------

    @abc.abstractmethod
    def ping(self) -> None:
        """Check the store answers.

        Raises:
          StoreUnavailable: it does not.
        """

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

    def close(self) -> None:
        """Flush pending writes and release connections."""
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
