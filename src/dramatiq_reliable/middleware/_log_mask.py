"""Masks secrets in the log lines Dramatiq's worker threads write about a message.

Dramatiq logs a failed message as ``Failed to process message send(password='…') with
unhandled exception.`` with its traceback: the arguments in clear, and the traceback quoting
them. :class:`WorkerLogMask`, a filter on Dramatiq's ``WorkerThread`` logger, rewrites such
a record before any handler sees it: the message is shown with its secret arguments as
``[redacted]`` (by the same names as the record's snapshot), and the text and traceback are
masked with the job's secret values and URL credentials. A traceback that needed masking is
kept as text only (``exc_info`` is dropped), so no handler can format the original again.
"""

from __future__ import annotations

import logging
import traceback
import weakref
from typing import TYPE_CHECKING, Any

from dramatiq import Message
from dramatiq.broker import MessageProxy

from .._secrets import REDACTED, TextMask
from ..actors.context import current_run

if TYPE_CHECKING:
    from .job_state import JobState

#: The loggers of Dramatiq's that write a message's arguments or its traceback.
WORKER_LOGGERS = ("dramatiq.worker.WorkerThread",)


class WorkerLogMask(logging.Filter):
    """A logging filter that masks a message's secrets in the records about it."""

    def __init__(self, job_state: JobState) -> None:
        super().__init__()
        self._job_state = weakref.ref(job_state)

    def filter(self, record: logging.LogRecord) -> bool:
        job_state = self._job_state()
        if job_state is None:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        messages = [a for a in args if isinstance(a, (Message, MessageProxy))]
        if not messages and not record.exc_info:
            return True
        try:
            _mask_record(job_state, record, args, messages)
        except Exception:  # a log line is never lost to its masking
            pass
        return True


def _mask_record(job_state: JobState, record: logging.LogRecord, args: tuple[Any, ...], messages: list[Any]) -> None:
    run = current_run()
    msg: Any = messages[0] if messages else (run.msg if run is not None else None)
    mask = TextMask()  # URL credentials only
    if msg is not None:
        msg = msg._message if isinstance(msg, MessageProxy) else msg
        mask = job_state.mask_for(msg, run if run is not None and run.id == msg.message_id else None)
    if messages:
        shown = tuple(_describe(job_state, a) if isinstance(a, (Message, MessageProxy)) else a for a in args)
        record.msg, record.args = mask(str(record.msg) % shown), ()
    else:
        text = record.getMessage()
        masked = mask(text)
        if masked != text:
            record.msg, record.args = masked, ()
    if record.exc_info and record.exc_info[0] is not None:
        text = record.exc_text or "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        masked = mask(text)
        if masked != text:
            record.exc_text, record.exc_info = masked, None


def _describe(job_state: JobState, message: Message[Any] | MessageProxy) -> str:
    """``actor(1, password='[redacted]')``: Dramatiq's spelling, with secret arguments hidden."""
    msg = message._message if isinstance(message, MessageProxy) else message
    snapshots = job_state.snapshots
    fn = job_state.actor_fn(msg.actor_name)
    names = snapshots.positional_names(fn) if fn is not None else []
    shown = [
        REDACTED if i < len(names) and snapshots.secret(names[i]) else repr(snapshots.redacted(value))
        for i, value in enumerate(msg.args)
    ]
    shown += [
        f"{name}={REDACTED if snapshots.secret(name) else repr(snapshots.redacted(value))}"
        for name, value in (msg.kwargs or {}).items()
    ]
    return f"{msg.actor_name}({', '.join(shown)})"


def install(job_state: JobState) -> None:
    """Add a filter for ``job_state`` to Dramatiq's worker loggers (once per middleware)."""
    for name in WORKER_LOGGERS:
        logger = logging.getLogger(name)
        for f in list(logger.filters):
            if isinstance(f, WorkerLogMask) and f._job_state() in (job_state, None):
                logger.removeFilter(f)
        logger.addFilter(WorkerLogMask(job_state))
