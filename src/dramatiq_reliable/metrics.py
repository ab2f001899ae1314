"""In-process counters, mirrored to Prometheus when ``prometheus-client`` is installed.

Every part of the bundle counts what it gives up or works around (store writes buffered or
dropped, notifier errors, …) through :func:`inc`, so a test, a log line or an exporter can
read it. Names follow Prometheus conventions without the ``dramatiq_reliable_`` prefix,
which :func:`inc` adds when mirroring.
"""

from __future__ import annotations

import threading
from collections import defaultdict

_lock = threading.Lock()
_values: defaultdict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)

#: Every counter name the bundle increments, with its help text.
COUNTERS: dict[str, str] = {
    "store_errors_total": "Store calls that failed, by operation.",
    "store_writes_buffered_total": "Job-state writes buffered while the store was unreachable.",
    "store_writes_dropped_total": "Job-state writes given up (buffer full, or rejected by the store).",
}


def inc(name: str, amount: float = 1.0, **labels: str) -> None:
    """Add ``amount`` to the counter ``name`` with ``labels``."""
    key = (name, tuple(sorted(labels.items())))
    with _lock:
        _values[key] += amount
    _mirror(name, amount, labels)


def value(name: str, **labels: str) -> float:
    """The in-process value of a counter; with no labels given, the sum over all label sets."""
    with _lock:
        if labels:
            return _values.get((name, tuple(sorted(labels.items()))), 0.0)
        return sum(v for (n, _), v in _values.items() if n == name)


def _mirror(name: str, amount: float, labels: dict[str, str]) -> None:
    """Hook for the Prometheus integration; replaced by ``metrics`` setup when enabled."""
