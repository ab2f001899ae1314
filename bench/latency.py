"""Enqueue→start latency at low load: one job every ``interval`` ms into warm workers.

Each job carries the wall-clock time ``send()`` was called and records, when the actor starts,
how long ago that was (``bench.app.latency``). So a latency includes the sender's own enqueue
hooks, the broker, the consumer's fetch, and every ``before_process_message`` hook (for the
bundle: the job's start op and Idempotency's check, which waits for the store's answer): what
a user waits between ``send()`` and the first line of the job.

The first ``warmup`` jobs are left out: the workers' connections are opened and, on Redis,
the consumers' idle backoff (up to a second) has wound down by then. The time ``send()`` took
is reported too (that is the enqueue cost a caller sees).
"""

from __future__ import annotations

import time
from typing import Any

from . import variants
from .app import build
from .harness import Setup
from .stats import latency_summary
from .throughput import one_line
from .workers import Fleet


def run_latency(
    setup: Setup,
    kind: str,
    variant: str,
    round_no: int,
    jobs: int,
    *,
    interval_ms: float = 10.0,
    warmup: int = 200,
) -> dict[str, Any]:
    """Send ``warmup + jobs`` jobs, one every ``interval_ms``, to a warm worker; latencies in ms."""
    cell: dict[str, Any] = {
        "broker": kind,
        "variant": variant,
        "round": round_no,
        "jobs": jobs,
        "interval_ms": interval_ms,
        "warmup": warmup,
    }
    why = variants.missing(variant)
    if why:
        cell.update(status="skipped", error=why)
        return cell
    names = setup.names()
    env = setup.env(kind, variant, names)
    counter = setup.counter_client()
    lat_key = names.counter_key + ":lat"
    fleet: Fleet | None = None
    app = None
    try:
        app = build(env)
        cell["middlewares"] = app.middlewares
        fleet = Fleet("bench.app", env, setup.log(f"{names.queue}-{kind}-{variant}-latency.log"),
                      processes=setup.processes, threads=setup.threads)  # fmt: skip
        fleet.start()
        fleet.wait_ready()
        total = warmup + jobs
        step = interval_ms / 1000
        send_ms: list[float] = []
        late_ms: list[float] = []
        start = time.monotonic()
        for i in range(total):
            due = start + i * step
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            elif now - due > 0.001:
                late_ms.append((now - due) * 1000)
            t = time.perf_counter()
            app.latency.send(i, time.time())
            if i >= warmup:
                send_ms.append((time.perf_counter() - t) * 1000)
        deadline = time.monotonic() + 60
        while int(counter.llen(lat_key)) < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {counter.llen(lat_key)} of {total} jobs ran; see {fleet.log_path}")
            time.sleep(0.05)
        fleet.stop()
        fleet = None
        samples = []
        for raw in counter.lrange(lat_key, 0, -1):
            index, ms = (raw.decode() if isinstance(raw, bytes) else raw).split()
            if int(index) >= warmup:
                samples.append(float(ms))
        cell["latency"] = latency_summary(samples)
        cell["send"] = latency_summary(send_ms)
        # Sends more than 1 ms behind schedule (a busy machine shows here first).
        cell["sender_late"] = {"count": len(late_ms), "max_ms": max(late_ms) if late_ms else 0.0}
        cell["status"] = "ok"
    except Exception as exc:
        cell.update(status="error", error=one_line(exc))
    finally:
        if fleet is not None:
            fleet.stop()
        if app is not None:
            app.broker.close()
            if app.store is not None:
                app.store.close()
        try:
            setup.clean(kind, names)
        except Exception as exc:
            cell["cleanup_error"] = f"{type(exc).__name__}: {exc}"
    return cell
