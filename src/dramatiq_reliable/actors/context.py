"""What the code of a running job can ask about itself: :func:`current_job`."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..middleware._run import JobRun


@dataclass(frozen=True)
class CurrentJob:
    """The job running in this thread."""

    #: The job id: the Dramatiq ``message_id``, the same across retries and redeliveries.
    id: str
    actor: str
    queue: str
    #: 1 on the first run, 2 on the first retry, …; a redelivery after a crash keeps it.
    attempt: int
    #: Business keys from the actor's ``track`` option, as strings.
    keys: dict[str, str] = field(default_factory=dict)
    #: The Dramatiq message being processed.
    message: Any = None


_local = threading.local()


def set_current(run: JobRun | None) -> None:
    _local.run = run


def current_run() -> JobRun | None:
    return getattr(_local, "run", None)


def current_job() -> CurrentJob | None:
    """The job this thread is running, or ``None`` outside a job.

    Example::

        @dramatiq.actor(track=("order_id",))
        def send_invoice(order_id):
            job = dr.current_job()
            log.info("invoice %s, attempt %d", job.id, job.attempt)
    """
    run = current_run()
    if run is None:
        return None
    return CurrentJob(
        id=run.id,
        actor=run.message.actor_name,
        queue=run.message.queue_name,
        attempt=run.attempt,
        keys=dict(run.keys or {}),
        message=run.message,
    )
