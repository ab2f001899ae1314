"""Job statuses."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """The status of a job, as recorded by :class:`~dramatiq_reliable.JobState`.

    ``queued`` → ``running`` → ``done``; ``running`` → ``retrying`` → ``queued`` → ``running`` …;
    ``running`` → ``failed`` (dead-lettered); ``skipped`` (idempotent duplicate); ``stuck`` and
    ``abandoned`` are set by the :class:`~dramatiq_reliable.Watchdog`; ``cancelled`` by an operator
    (:func:`~dramatiq_reliable.cancel`).
    """

    #: Waiting in the broker (possibly delayed until ``due_at``).
    QUEUED = "queued"
    #: A worker thread is running it.
    RUNNING = "running"
    #: An attempt failed; the broker holds it until ``next_retry_at``.
    RETRYING = "retrying"
    #: Finished successfully.
    DONE = "done"
    #: Dead-lettered: retries exhausted, or it raised one of its ``throws``.
    FAILED = "failed"
    #: Not run: an idempotent duplicate of a job that already did the work.
    SKIPPED = "skipped"
    #: Running past its ``stuck_after`` while its worker is alive.
    STUCK = "stuck"
    #: Its worker died while running it; the broker will deliver it again.
    ABANDONED = "abandoned"
    #: An operator cancelled it: it does not run (again), or, running, it was asked to stop.
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def terminal(self) -> bool:
        """True for statuses a job does not leave on its own (``done``, ``failed``, ``skipped``, ``cancelled``)."""
        return self in TERMINAL


#: Statuses a job does not leave by itself; records in them expire after ``retention``.
TERMINAL = frozenset({Status.DONE, Status.FAILED, Status.SKIPPED, Status.CANCELLED})
