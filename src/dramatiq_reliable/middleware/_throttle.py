"""What Alerts sends to the store and makes of its answers; the in-process fallback throttle.

The throttle itself lives in the store (``store/lua/50_alerts.lua``): an
``al`` section rides in a job's finish op, or in an ``alert`` op for an event, and the store
answers ``{"notify": 0|1, "sup": n, "since": ms}``. When the store cannot be reached, the
decision falls back to :class:`LocalThrottle`, per process.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import replace
from typing import Any

from .._clock import from_ms, now_ms
from ..alert import Alert
from ..events import Event
from ..store.ops import compact

#: Characters of an error message kept in a throttle and an alert.
MAX_MESSAGE = 300
#: Throttle keys the fallback remembers at most.
LOCAL_KEYS = 10_000


def first_line(text: str) -> str:
    lines = text.strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= MAX_MESSAGE else line[:MAX_MESSAGE] + "…"


def section(alert: Alert, window_ms: int, quiet: bool) -> dict[str, Any]:
    """The ``al`` section for one occurrence."""
    return compact(
        {
            "kind": alert.kind,
            "actor": alert.actor,
            "etype": alert.error_type,
            "queue": alert.queue,
            "msg": alert.error_message,
            "keys": alert.keys or None,
            "window_ms": window_ms,
            "at_ms": now_ms(),
            "quiet": True if quiet else None,
        }
    )


def from_event(event: Event, window: float) -> Alert:
    """The alert an event would make (before throttling)."""
    return Alert(
        kind=event.kind,
        actor=event.actor or event.queue or "?",
        queue=event.queue,
        error_type=event.error_type,
        error_message=first_line(event.error_message),
        job_id=event.job_id,
        at=from_ms(now_ms()),
        keys=dict(event.keys),
        attempt=event.attempts or None,
        max_retries=event.max_retries,
        detail=event.detail,
        window=window,
    )


def decided(alert: Alert, decision: dict[str, Any], *, local: bool = False) -> Alert:
    """``alert`` with the throttle's count of suppressed occurrences folded in."""
    sup = int(decision.get("sup") or 0)
    since = decision.get("since")
    return replace(
        alert,
        count=1 + sup,
        suppressed=sup,
        since=from_ms(float(since)) if since is not None else None,
        local=local,
    )


def from_due(entry: dict[str, Any]) -> Alert:
    """The summary or recovered notice the store handed out (``alerts_due``)."""
    sup = int(entry.get("sup") or 0)
    since, seen = entry.get("since"), entry.get("seen")
    try:
        keys = json.loads(entry.get("keys") or "{}")
    except ValueError:
        keys = {}
    return Alert(
        kind=str(entry.get("kind", "")),
        actor=str(entry.get("actor", "")),
        queue=str(entry.get("q") or ""),
        error_type=str(entry.get("etype") or ""),
        error_message=str(entry.get("msg") or ""),
        job_id=str(entry.get("jid") or "") or None,
        count=sup,
        suppressed=sup,
        since=from_ms(float(since)) if since is not None else None,
        at=from_ms(float(seen)) if seen is not None else None,
        keys={str(k): str(v) for k, v in keys.items()} if isinstance(keys, dict) else {},
        window=float(entry.get("win") or 0) / 1000,
        summary=bool(entry.get("summary")),
        recovered=bool(entry.get("recovered")),
    )


class LocalThrottle:
    """The throttle of one process, used only while the store cannot be reached."""

    def __init__(self) -> None:
        self._keys: OrderedDict[tuple[str, str, str], list[int]] = OrderedDict()
        self._lock = threading.Lock()

    def decide(self, alert: Alert, window_ms: int) -> dict[str, Any]:
        """``{"notify", "sup", "since"}`` as the store would answer, for this process alone."""
        now = now_ms()
        with self._lock:
            state = self._keys.get(alert.key)
            if state is None or now - state[0] >= window_ms:
                sup, since = (state[1], state[2]) if state else (0, 0)
                self._keys[alert.key] = [now, 0, 0]
                self._keys.move_to_end(alert.key)
                while len(self._keys) > LOCAL_KEYS:
                    self._keys.popitem(last=False)
                return {"notify": 1, "sup": sup, **({"since": since} if sup else {})}
            state[1] += 1
            state[2] = state[2] or now
            return {"notify": 0, "sup": state[1]}
