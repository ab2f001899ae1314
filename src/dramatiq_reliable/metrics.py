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

#: Every counter name the bundle increments, with its help text and labels.
COUNTERS: dict[str, str] = {
    "jobs_total": "Job attempts that ended, by actor, queue and outcome (done, retrying, failed, skipped).",
    "retries_total": "Attempts that failed and will be retried, by actor.",
    "dead_letters_total": "Jobs dead-lettered, by actor and queue.",
    "idempotent_skips_total": "Deliveries skipped as idempotent duplicates, by actor.",
    "idempotency_deferred_total": "Deliveries put back because their key was busy or the store was down, by actor.",
    "idempotency_unchecked_total": "Deliveries run unchecked (on_store_error='run'): the store failed. By actor.",
    "idempotency_leases_lost_total": "Leases that expired while their job still ran.",
    "stuck_jobs_total": "Jobs marked stuck, by actor.",
    "abandoned_jobs_total": "Jobs marked abandoned (their worker died), by actor.",
    "alerts_sent_total": "Notifications sent, by kind and notifier.",
    "alerts_suppressed_total": "Notifications suppressed by throttling, by kind.",
    "alerts_dropped_total": "Notifications dropped because the send queue was full.",
    "notifier_errors_total": "Notifier calls that failed or timed out, by notifier.",
    "store_errors_total": "Store calls that failed, by operation.",
    "store_writes_buffered_total": "Job-state writes buffered while the store was unreachable.",
    "store_writes_dropped_total": "Job-state writes given up (buffer full, or rejected by the store).",
    # -- cron ---
    "cron_ticks_total": "Cron ticks this scheduler enqueued, by schedule.",
    "cron_ticks_missed_total": "Cron ticks not enqueued because no scheduler could within misfire_grace, by schedule.",
    "cron_enqueue_errors_total": "Cron tick enqueues that failed (retried while within misfire_grace), by schedule.",
    "cron_takeovers_total": "Cron ticks enqueued after taking over another scheduler's lapsed claim, by schedule.",
}

#: Histograms (seconds): how long attempts ran, and how long jobs waited from enqueue to first start.
HISTOGRAMS: dict[str, str] = {
    "job_run_seconds": "Time an attempt ran, by actor and queue.",
    "job_wait_seconds": "Time from enqueue to the start of the first attempt, by actor and queue.",
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


def observe_job(actor: str, queue: str, outcome: str, run_seconds: float | None, wait_seconds: float | None) -> None:
    """Called once per attempt when it ends (by the last middleware of the bundle). On every job's path."""
    key = ("jobs_total", (("actor", actor), ("outcome", outcome), ("queue", queue)))
    with _lock:
        _values[key] += 1.0
    _mirror("jobs_total", 1.0, {"actor": actor, "queue": queue, "outcome": outcome})
    if outcome == "retrying":
        inc("retries_total", actor=actor)
    _observe("job_run_seconds", run_seconds, actor, queue)
    _observe("job_wait_seconds", wait_seconds, actor, queue)


def _mirror(name: str, amount: float, labels: dict[str, str]) -> None:
    """Hook for the Prometheus integration: mirrors counters when it is enabled."""


def _observe(name: str, seconds: float | None, actor: str, queue: str) -> None:
    """Hook for the Prometheus integration: records histogram samples when it is enabled."""
