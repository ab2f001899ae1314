"""Time helpers. The stores keep times as integer milliseconds since the epoch, UTC.

The store judges leases, liveness and retention by its own clock; this process's clock only
dates what it reports (and measures durations). :func:`check_skew` says once per process when
the two differ by more than :data:`SKEW_WARN_MS`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone

#: This process's clock, in seconds since the epoch (a test may replace it to fake a skewed host).
clock: Callable[[], float] = time.time
#: A difference from the store's clock past which a worker says so (once per process).
SKEW_WARN_MS = 1000
#: The pid of the process that already warned (a forked child warns for itself).
_skew_told: list[int] = [0]


def now_ms() -> int:
    """The current time in milliseconds since the epoch, by this process's clock."""
    return int(clock() * 1000)


def check_skew(store_ms: int, *, where: str) -> int:
    """Compare the store's clock (``store_ms``, just read) with this process's; warn once if they differ.

    Returns:
      int: this process's clock minus the store's, in milliseconds.
    """
    skew = now_ms() - int(store_ms)
    if abs(skew) > SKEW_WARN_MS and _skew_told[0] != os.getpid():
        _skew_told[0] = os.getpid()
        logging.getLogger("dramatiq_reliable.clock").warning(
            "This host's clock is %s %s the store's (%s); leases, liveness and retention follow the store's "
            "clock, but times this process reports are off: synchronize it (NTP).",
            format_duration(abs(skew) / 1000),
            "ahead of" if skew > 0 else "behind",
            where,
        )
    return skew


def from_ms(ms: float | None) -> datetime | None:
    """Milliseconds since the epoch to an aware UTC datetime (``None`` stays ``None``)."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def iso(dt: datetime | None) -> str | None:
    """An aware datetime as an ISO 8601 string in UTC with millisecond precision."""
    if dt is None:
        return None
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ago(ms: float | None, *, now: float | None = None) -> str:
    """A short human duration since ``ms``: ``"3s ago"``, ``"5m ago"``, ``"2h ago"``, ``"4d ago"``."""
    if ms is None:
        return "never"
    seconds = ((now if now is not None else now_ms()) - ms) / 1000
    suffix = "ago" if seconds >= 0 else "from now"
    return f"{format_duration(abs(seconds))} {suffix}"


def format_duration(seconds: float) -> str:
    """``42`` → ``"42s"``, ``330`` → ``"5m30s"``, ``7200`` → ``"2h"``, ``90000`` → ``"1d1h"``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s" if s or seconds == 0 else f"{seconds:.1f}s"
    if s < 3600:
        m, r = divmod(s, 60)
        return f"{m}m{r}s" if r else f"{m}m"
    if s < 86400:
        h, r = divmod(s, 3600)
        return f"{h}h{r // 60}m" if r // 60 else f"{h}h"
    d, r = divmod(s, 86400)
    return f"{d}d{r // 3600}h" if r // 3600 else f"{d}d"


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Parse ``"90"``, ``"30s"``, ``"10m"``, ``"2h"``, ``"7d"``, ``"1h30m"`` into seconds.

    Raises:
      ValueError: when the text is not a duration.
    """
    import re

    raw = text.strip().lower()
    if not raw:
        raise ValueError("empty duration")
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"not a duration: {text!r} (use a number of seconds >= 0, or e.g. 30s, 10m, 2h, 7d)")
        return value
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)", raw)
    if not parts or "".join(n + u for n, u in parts) != raw:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 10m, 2h, 7d)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def time_ago(option: str, text: str | None) -> datetime | None:
    """``time_ago("--since", "2h")`` → the aware UTC datetime two hours ago (``None`` stays ``None``).

    Raises:
      ConfigurationError: the text is not a duration; the message names ``option``.
    """
    from datetime import timedelta

    from .errors import ConfigurationError

    if text is None:
        return None
    try:
        seconds = parse_duration(text)
        return datetime.now(timezone.utc) - timedelta(seconds=seconds)
    except ValueError as exc:
        raise ConfigurationError(f"{option}: {exc}") from None
    except OverflowError:
        raise ConfigurationError(f"{option}: {text!r} reaches back before the year 1") from None
