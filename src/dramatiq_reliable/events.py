"""In-process events between the bundle's parts: the Watchdog and DeadLetters tell, Alerts listens.

Events are per process: the process that finds a stuck or abandoned job (the one running it,
or the fleet's current sweeper) emits it; an :class:`~dramatiq_reliable.Alerts` middleware in
that process decides, through the store, whether the fleet has already said it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("dramatiq_reliable.events")

#: The kinds of events: a job dead-lettered, an attempt that will be retried, a job stuck or
#: abandoned, a queue whose oldest message or depth crossed a limit.
KINDS = ("failed", "retrying", "stuck", "abandoned", "backlog")


@dataclass(frozen=True)
class Event:
    """Something a person may need to know about."""

    kind: str
    actor: str
    queue: str = ""
    job_id: str | None = None
    #: The error's class name (the throttle groups by it), or a short cause for non-errors.
    error_type: str = ""
    error_message: str = ""
    attempts: int = 0
    max_retries: int | None = None
    keys: dict[str, str] = field(default_factory=dict)
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[Event], None]

_lock = threading.Lock()
_listeners: list[Listener] = []


def subscribe(listener: Listener) -> Callable[[], None]:
    """Call ``listener`` with every event emitted in this process; returns an unsubscribe function."""
    with _lock:
        _listeners.append(listener)

    def unsubscribe() -> None:
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return unsubscribe


def emit(event: Event) -> None:
    """Tell every listener. A listener that raises is logged; the others still hear it."""
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(event)
        except Exception:
            logger.exception("An event listener failed on %s.", event.kind)
