"""Throughput: N no-op jobs through a real ``dramatiq`` master, for one variant on one broker.

One measurement ("cell"):

1. **Enqueue** the N jobs from this process, with the variant's middlewares on the sending
   broker (JobState records each job as ``queued`` when it is sent), no worker running.
   Timed on its own: jobs/s sent, and the store's traffic per job.
2. **Process**: start ``dramatiq bench.app --processes P --threads T``, wait until every
   worker process is ready, then measure from that moment until the N-th job has run
   (each job increments a counter): jobs/s over that window, and the CPU the master and all
   its processes used in it (``/proc``), per job.
3. **Stop** the master (SIGTERM, it drains) and read the store's traffic over the workers'
   whole life (boot, heartbeats and shutdown included), per job.

Enqueueing first keeps the sender from competing with the workers for the machine's CPU, and
makes processing start with a full queue, so the window measures the workers alone. Jobs that
ran before the last worker process was ready are left out of the window (``jobs_before``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from . import variants
from .app import build
from .harness import Setup
from .servers import read_counters, traffic
from .workers import Fleet, cpu_seconds, machine_busy


def _wait_for(counter: Any, key: str, target: int, timeout: float) -> tuple[int, int]:
    """Poll ``key`` until it reaches ``target``; return ``(value, polls)``.

    Polls slowly while far from the end and finely near it, so that the harness costs the
    workers little CPU and still stops the clock within a few milliseconds.
    """
    deadline = time.monotonic() + timeout
    polls = 0
    last_value, last_at = 0, time.monotonic()
    rate = 0.0
    while True:
        value = int(counter.get(key) or 0)
        polls += 1
        now = time.monotonic()
        if value >= target or now > deadline:
            return value, polls
        if value > last_value:
            rate = (value - last_value) / max(now - last_at, 1e-3)
            last_value, last_at = value, now
        remaining = (target - value) / rate if rate else 0.05
        time.sleep(min(max(remaining / 4, 0.003), 0.1))


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def run_cell(setup: Setup, kind: str, variant: str, round_no: int, jobs: int) -> dict[str, Any]:
    """Measure one variant on one broker; see the module docstring."""
    cell: dict[str, Any] = {"broker": kind, "variant": variant, "round": round_no, "jobs": jobs}
    why = variants.missing(variant)
    if why:
        cell.update(status="skipped", error=why)
        return cell
    names = setup.names()
    env = setup.env(kind, variant, names)
    store = setup.store_client()
    counter = setup.counter_client()
    fleet: Fleet | None = None
    try:
        # 1. Enqueue, with the variant's middlewares on the sending side too.
        app = build(env)
        cell["middlewares"] = app.middlewares
        s0 = read_counters(store)
        started = time.perf_counter()
        for i in range(jobs):
            app.noop.send(i)
        if app.store is not None:
            app.store.journal.flush()
        enqueue_s = time.perf_counter() - started
        s1 = read_counters(store)
        app.broker.close()
        if app.store is not None:
            app.store.close()
        cell["enqueue"] = {
            "seconds": enqueue_s,
            "jobs_per_s": jobs / enqueue_s,
            "store": traffic(s0, s1, jobs).as_dict() if app.store is not None else None,
        }

        # 2. Process: the window starts once every worker process is ready.
        broker_server = setup.broker_server.client() if setup.broker_server and kind == "redis" else None
        b0 = read_counters(broker_server) if broker_server is not None else None
        s2 = read_counters(store)
        fleet = Fleet("bench.app", env, setup.log(f"{names.queue}-{kind}-{variant}.log"),
                      processes=setup.processes, threads=setup.threads)  # fmt: skip
        fleet.start()
        fleet.wait_ready()
        pids = fleet.pids()
        ours = [os.getpid(), *setup.server_pids(kind)]
        before = int(counter.get(names.counter_key) or 0)
        t0, cpu0, (busy0, total0) = time.monotonic(), cpu_seconds(pids), machine_busy()
        ours0 = cpu_seconds(ours)
        done, polls = _wait_for(counter, names.counter_key, jobs, timeout=max(120.0, jobs / 100))
        t1, cpu1, (busy1, total1) = time.monotonic(), cpu_seconds(pids), machine_busy()
        ours1 = cpu_seconds(ours)
        if done < jobs:
            raise RuntimeError(f"only {done} of {jobs} jobs ran in {t1 - t0:.0f} s; see {fleet.log_path}")

        # 3. Stop, then count what the store saw over the workers' whole life.
        code = fleet.stop()
        fleet = None
        s3 = read_counters(store)
        b1 = read_counters(broker_server) if broker_server is not None else None
        final = int(counter.get(names.counter_key) or 0)
        measured = done - before
        window = t1 - t0
        cell["process"] = {
            "jobs_before": before,
            "measured_jobs": measured,
            "seconds": window,
            "jobs_per_s": measured / window,
            "worker_cpu_us_per_job": (cpu1 - cpu0) * 1e6 / measured,
            "worker_cores": (cpu1 - cpu0) / window,
            "machine_busy_pct": 100 * (busy1 - busy0) / max(total1 - total0, 1e-9),
            # Cores busy with anything but the workers, the harness and the servers used.
            "others_cores": max(((busy1 - busy0) - (cpu1 - cpu0) - (ours1 - ours0)) / window, 0.0),
            "processes": len(pids),
        }
        cell["store"] = traffic(s2, s3, jobs).as_dict() if app.store is not None else None
        if b0 is not None and b1 is not None:
            # Left out: the jobs' own INCR (the no-op's work) and the harness's reads of the counter.
            gets = polls + 2
            cell["broker_redis"] = traffic(
                b0, b1, jobs, own_reads=1 + gets + jobs, own_calls={"get": gets, "incrby": jobs}
            ).as_dict()
        cell["ran"] = final
        cell["exit_code"] = code
        cell["status"] = "ok"
        if final != jobs:
            cell["warning"] = f"the counter ended at {final}, not {jobs}: some jobs ran more than once"
    except Exception as exc:
        cell.update(status="error", error=one_line(exc))
    finally:
        if fleet is not None:
            fleet.stop()
        try:
            setup.clean(kind, names)
        except Exception as exc:
            cell["cleanup_error"] = f"{type(exc).__name__}: {exc}"
    return cell
