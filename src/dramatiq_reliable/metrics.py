"""Counters and histograms of the bundle: in-process always, in Prometheus once enabled.

Every part of the bundle counts what it does, gives up or works around through :func:`inc`
(and :func:`observe_job` once per attempt), so a test, a log line or an exporter can read it.
Names follow Prometheus conventions without the ``dramatiq_reliable_`` prefix, which the
Prometheus mirror adds: ``jobs_total`` is exported as ``dramatiq_reliable_jobs_total``.

Prometheus is opt-in (``pip install 'dramatiq-reliable[prometheus]'``): importing the package
touches no environment variable and no file. Call :func:`enable_metrics` in the module that
builds the broker, before the first job runs:

* ``dr.enable_metrics("/run/dramatiq-metrics")`` for ``dramatiq --processes N`` (or several
  worker commands on one host): every process writes its values to files in that folder
  (prometheus-client's multiprocess mode), and ``dramatiq-reliable metrics --multiproc-dir
  /run/dramatiq-metrics`` serves their sums, with gauges read from the store and the broker.
  Empty the folder when the fleet (re)starts: counters of old processes stay in it.
* ``dr.enable_metrics()`` for one process: the metrics go to prometheus-client's default
  registry, which your own exporter (``prometheus_client.start_http_server``) serves.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from typing import Any

from .errors import ConfigurationError

logger = logging.getLogger("dramatiq_reliable.metrics")

#: Prepended to every exported name.
PREFIX = "dramatiq_reliable_"

_lock = threading.Lock()
_values: defaultdict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
#: Histogram label sets declared before a first sample (created at zero in Prometheus too).
_declared_histograms: set[tuple[str, tuple[tuple[str, str], ...]]] = set()

#: Every counter name the bundle increments, with its help text.
COUNTERS: dict[str, str] = {
    "jobs_total": "Job attempts that ended, by actor, queue and outcome (done, retrying, failed, skipped).",
    "retries_total": "Attempts that failed and will be retried, by actor and queue.",
    "dead_letters_total": "Jobs that failed for good (dead-lettered, or failed without retries), by actor and queue.",
    "idempotent_skips_total": "Deliveries skipped as idempotent duplicates, by actor.",
    "idempotency_deferred_total": "Deliveries put back because their key was busy or the store was down, by actor.",
    "idempotency_unchecked_total": "Deliveries run unchecked (on_store_error='run'): the store failed. By actor.",
    "idempotency_leases_lost_total": "Leases that expired while their job still ran.",
    "stuck_jobs_total": "Jobs marked stuck, by actor.",
    "abandoned_jobs_total": "Jobs marked abandoned (their worker died), by actor.",
    "alerts_sent_total": "Notifications sent, by kind and notifier.",
    "alerts_suppressed_total": "Notifications suppressed by throttling, by kind.",
    "alerts_dropped_total": "Notifications dropped because a notifier's send queue was full, by notifier.",
    "notifier_errors_total": "Notifier calls that failed or timed out, by notifier.",
    "store_errors_total": "Store calls that failed, by operation.",
    "store_writes_buffered_total": "Job-state writes buffered while the store was unreachable.",
    "store_writes_dropped_total": (
        "Job-state writes given up: by rank (final, record, noise) when the outage buffer was full; "
        "rank empty when the store rejected them."
    ),
    "store_writes_collapsed_total": "Buffered writes folded into a later write of the same job during an outage.",
    "store_replica_wait_timeouts_total": "Store calls whose writes fewer replicas than asked (?wait=N) had in time.",
    # -- cron ---
    "cron_ticks_total": "Cron ticks this scheduler enqueued, by schedule.",
    "cron_ticks_missed_total": "Cron ticks not enqueued because no scheduler could within misfire_grace, by schedule.",
    "cron_enqueue_errors_total": "Cron tick enqueues that failed (retried while within misfire_grace), by schedule.",
    "cron_takeovers_total": "Cron ticks enqueued after taking over another scheduler's lapsed claim, by schedule.",
}

#: The label names of exported metrics. A metric missing here takes the labels of its first
#: use; a label given later that is not among them is dropped, a missing one is ``""``.
LABELS: dict[str, tuple[str, ...]] = {
    "jobs_total": ("actor", "queue", "outcome"),
    "retries_total": ("actor", "queue"),
    "dead_letters_total": ("actor", "queue"),
    "idempotent_skips_total": ("actor",),
    "idempotency_deferred_total": ("actor",),
    "idempotency_unchecked_total": ("actor",),
    "idempotency_leases_lost_total": (),
    "stuck_jobs_total": ("actor",),
    "abandoned_jobs_total": ("actor",),
    "alerts_sent_total": ("kind", "notifier"),
    "alerts_suppressed_total": ("kind",),
    "alerts_dropped_total": ("notifier",),
    "notifier_errors_total": ("notifier",),
    "store_errors_total": ("op",),
    "store_writes_buffered_total": (),
    "store_writes_dropped_total": ("rank",),
    "store_writes_collapsed_total": (),
    "store_replica_wait_timeouts_total": (),
    "job_run_seconds": ("actor", "queue"),
    "job_wait_seconds": ("actor", "queue"),
}

#: Histograms (seconds): how long attempts ran, and how long jobs waited from enqueue to first start.
HISTOGRAMS: dict[str, str] = {
    "job_run_seconds": "Time an attempt ran, by actor and queue.",
    "job_wait_seconds": "Time from enqueue to the start of the first attempt, by actor and queue.",
}

#: Histogram buckets, in seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


def inc(name: str, amount: float = 1.0, **labels: str) -> None:
    """Add ``amount`` to the counter ``name`` with ``labels``."""
    key = (name, tuple(sorted(labels.items())))
    with _lock:
        _values[key] += amount
    prom = _prom
    if prom is not None:
        prom.inc(name, amount, labels)


def value(name: str, **labels: str) -> float:
    """The in-process value of a counter; with no labels given, the sum over all label sets.

    A histogram's ``<name>_count`` and ``<name>_sum`` read the same way.
    """
    with _lock:
        if labels:
            return _values.get((name, tuple(sorted(labels.items()))), 0.0)
        return sum(v for (n, _), v in _values.items() if n == name)


def observe(name: str, seconds: float, **labels: str) -> None:
    """Record one sample of the histogram ``name`` (in seconds)."""
    key = tuple(sorted(labels.items()))
    with _lock:
        _values[(name + "_count", key)] += 1
        _values[(name + "_sum", key)] += seconds
    prom = _prom
    if prom is not None:
        prom.observe(name, seconds, labels)


def observe_job(actor: str, queue: str, outcome: str, run_seconds: float | None, wait_seconds: float | None) -> None:
    """Called once per attempt when it ends (by the last middleware of the bundle).

    Counts ``jobs_total`` (and ``retries_total`` or ``dead_letters_total``) and observes
    ``job_run_seconds`` and ``job_wait_seconds``: the same as the :func:`inc` and
    :func:`observe` calls would, under one lock (it runs on every job).
    """
    by_actor = (("actor", actor), ("queue", queue))  # label keys as inc() sorts them
    with _lock:
        _values[("jobs_total", (("actor", actor), ("outcome", outcome), ("queue", queue)))] += 1
        if outcome == "retrying":
            _values[("retries_total", by_actor)] += 1
        elif outcome == "failed":
            _values[("dead_letters_total", by_actor)] += 1
        if run_seconds is not None:
            run_seconds = max(run_seconds, 0.0)
            _values[("job_run_seconds_count", by_actor)] += 1
            _values[("job_run_seconds_sum", by_actor)] += run_seconds
        if wait_seconds is not None:
            wait_seconds = max(wait_seconds, 0.0)
            _values[("job_wait_seconds_count", by_actor)] += 1
            _values[("job_wait_seconds_sum", by_actor)] += wait_seconds
    prom = _prom
    if prom is not None:
        prom.observe_job(actor, queue, outcome, run_seconds, wait_seconds)


#: The outcomes ``jobs_total`` counts.
OUTCOMES = ("done", "retrying", "failed", "skipped")
#: Counters of one actor (labels ``actor`` and, where they take it, ``queue``).
ACTOR_COUNTERS = (
    "retries_total",
    "dead_letters_total",
    "idempotent_skips_total",
    "idempotency_deferred_total",
    "idempotency_unchecked_total",
    "stuck_jobs_total",
    "abandoned_jobs_total",
)


def declare(name: str, **labels: str) -> None:
    """Make the counter ``name`` with ``labels`` exist at 0 if it was never counted.

    A Prometheus counter that first appears at 1 has no earlier sample, so ``increase()``
    over it is 0 and a rule on it misses the first event. Declaring the label sets a process
    knows (its actors, queues, notifiers) at boot gives every rule a 0 to start from.
    """
    key = (name, tuple(sorted(labels.items())))
    with _lock:
        if key in _values:
            return
        _values[key] = 0.0
    prom = _prom
    if prom is not None:
        prom.inc(name, 0.0, labels)


def declare_actor(actor: str, queue: str) -> None:
    """Declare at 0 every counter and histogram of one actor (see :func:`declare`)."""
    by_actor = {"actor": actor, "queue": queue}
    with _lock:
        if ("jobs_total", (("actor", actor), ("outcome", "done"), ("queue", queue))) in _values:
            return
    for outcome in OUTCOMES:
        declare("jobs_total", **by_actor, outcome=outcome)
    for name in ACTOR_COUNTERS:
        declare(name, **{k: v for k, v in by_actor.items() if k in LABELS[name]})
    key = tuple(sorted(by_actor.items()))
    with _lock:
        for histogram in HISTOGRAMS:
            _declared_histograms.add((histogram, key))
    prom = _prom
    if prom is not None:
        for histogram in HISTOGRAMS:
            prom.declare_histogram(histogram, by_actor)


def reset() -> None:
    """Forget the in-process values (for tests; Prometheus values are not touched)."""
    with _lock:
        _values.clear()
        _declared_histograms.clear()


# -- Prometheus ---------------------------------------------------------------------------------


class _Prometheus:
    """The prometheus-client metrics mirroring the in-process ones, created on first use."""

    def __init__(self, registry: Any, directory: str | None) -> None:
        self.registry = registry
        self.directory = directory
        self._metrics: dict[str, tuple[Any, tuple[str, ...]]] = {}
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        #: (actor, queue, outcome) -> the children observe_job updates
        self._jobs: dict[tuple[str, str, str], tuple[Any, Any, Any, Any]] = {}
        self._lock = threading.Lock()
        self._failed = False

    def _child(self, name: str, labels: dict[str, str], histogram: bool) -> Any:
        known = self._metrics.get(name)
        if known is None:
            with self._lock:
                known = self._metrics.get(name)
                if known is None:
                    known = self._metrics[name] = self._create(name, labels, histogram)
        metric, names = known
        values = tuple(str(labels.get(n, "")) for n in names)
        child = self._children.get((name, values))
        if child is None:
            child = self._children[(name, values)] = metric.labels(*values) if names else metric
        return child

    def _create(self, name: str, labels: dict[str, str], histogram: bool) -> tuple[Any, tuple[str, ...]]:
        import prometheus_client as prom

        names = LABELS.get(name, tuple(sorted(labels)))
        metric: Any
        if histogram:
            metric = prom.Histogram(
                PREFIX + name, HISTOGRAMS.get(name, name), names, registry=self.registry, buckets=BUCKETS
            )
        else:
            metric = prom.Counter(PREFIX + name, COUNTERS.get(name, name), names, registry=self.registry)
        return metric, names

    def inc(self, name: str, amount: float, labels: dict[str, str]) -> None:
        try:
            self._child(name, labels, False).inc(amount)
        except Exception:
            self._fail(name)

    def observe(self, name: str, seconds: float, labels: dict[str, str]) -> None:
        try:
            self._child(name, labels, True).observe(seconds)
        except Exception:
            self._fail(name)

    def declare_histogram(self, name: str, labels: dict[str, str]) -> None:
        try:
            self._child(name, labels, True)
        except Exception:
            self._fail(name)

    def observe_job(
        self, actor: str, queue: str, outcome: str, run_seconds: float | None, wait_seconds: float | None
    ) -> None:
        try:
            children = self._jobs.get((actor, queue, outcome))
            if children is None:
                by_actor = {"actor": actor, "queue": queue}
                extra = {"retrying": "retries_total", "failed": "dead_letters_total"}.get(outcome)
                children = self._jobs[(actor, queue, outcome)] = (
                    self._child("jobs_total", {**by_actor, "outcome": outcome}, False),
                    self._child(extra, by_actor, False) if extra else None,
                    self._child("job_run_seconds", by_actor, True),
                    self._child("job_wait_seconds", by_actor, True),
                )
            jobs, extra_child, run, wait = children
            jobs.inc(1)
            if extra_child is not None:
                extra_child.inc(1)
            if run_seconds is not None:
                run.observe(run_seconds)
            if wait_seconds is not None:
                wait.observe(wait_seconds)
        except Exception:
            self._fail("jobs_total")

    def _fail(self, name: str) -> None:
        if not self._failed:  # never break a job over a metric; say it once
            self._failed = True
            logger.exception("Could not update the Prometheus metric %s; further errors are not logged.", name)


_prom: _Prometheus | None = None  # set by enable_metrics()


def enable_metrics(directory: str | os.PathLike[str] | None = None, *, registry: Any = None) -> None:
    """Mirror the bundle's counters and histograms to prometheus-client, from now on in this process.

    Parameters:
      directory(str | PathLike | None): a folder for prometheus-client's multiprocess mode
        (``dramatiq --processes N``). It is created if missing, and ``PROMETHEUS_MULTIPROC_DIR``
        is set to it in this process (and so in the processes it starts). Serve the sums with
        ``dramatiq-reliable metrics --multiproc-dir DIR``. ``None``: one process, metrics in
        ``registry``.
      registry(CollectorRegistry): where the metrics are registered without a ``directory``.
        Defaults to prometheus-client's default ``REGISTRY``.

    Calling it again with the same folder does nothing.

    Raises:
      ConfigurationError: prometheus-client is not installed, the folder cannot be written,
        or metrics were already enabled differently in this process.
    """
    global _prom  # noqa: PLW0603 - the one switch of this module, set once per process
    try:
        import prometheus_client
        from prometheus_client import values
    except ImportError:
        raise ConfigurationError(
            "metrics need prometheus-client: pip install 'dramatiq-reliable[prometheus]'"
        ) from None
    path = os.path.abspath(os.fspath(directory)) if directory is not None else None
    with _lock:
        if _prom is not None:
            if _prom.directory == path and (path is not None or registry in (None, _prom.registry)):
                return
            raise ConfigurationError(f"metrics are already enabled in this process (folder {_prom.directory!r})")
        if path is not None:
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                raise ConfigurationError(f"cannot use {path!r} for metrics: {exc.strerror or exc}") from None
            if not os.access(path, os.W_OK | os.X_OK):
                raise ConfigurationError(f"cannot use {path!r} for metrics: not writable")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
            if not getattr(values.ValueClass, "_multiprocess", False):
                # prometheus-client picks its value class when first imported; it may have been
                # imported before the variable was set. Metrics created from now on use files.
                values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
            prom = _Prometheus(None, path)
        else:
            prom = _Prometheus(registry if registry is not None else prometheus_client.REGISTRY, None)
        samples = {h + suffix for h in HISTOGRAMS for suffix in ("_count", "_sum")}
        counted = [(n, dict(labels), v) for (n, labels), v in _values.items() if n not in samples]
        histograms = [(n, dict(labels)) for n, labels in _declared_histograms]
    for name, labels, amount in counted:
        prom.inc(name, amount, labels)  # what was counted (or declared at 0) before, so both views agree
    for name, labels in histograms:
        prom.declare_histogram(name, labels)
    _prom = prom


def enabled() -> bool:
    """True once :func:`enable_metrics` was called in this process."""
    return _prom is not None
