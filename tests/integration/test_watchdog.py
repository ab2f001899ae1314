"""The Watchdog with real ``dramatiq`` worker processes (--processes 2) on real Redis and RabbitMQ.

The app (``tests/apps/watchdog.py``) beats every 0.5 s, takes a process for dead after 3 s
of silence and sweeps every 0.5 s.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import dramatiq_reliable as dr
from dramatiq_reliable.cli.render import job_detail
from tests.apps.watchdog import FAST, build
from tests.conftest import ServerEnv
from tests.helpers import DramatiqProcess, wait_until

pytestmark = pytest.mark.integration

#: Slack on top of abandon_after + sweep_interval for a busy, shared machine.
SLACK = 15.0


def record_in(store: dr.Store, job_id: str, *statuses: str) -> dr.JobRecord | None:
    record = store.get_job(job_id)
    return record if record is not None and record.status.value in statuses else None


def in_broker(env: ServerEnv, broker: Any) -> int:
    """Messages waiting in the queue or its delay queue."""
    [stats] = dr.queue_stats(broker, [env.queue])
    return (stats.depth or 0) + (stats.delayed or 0)


def test_a_killed_worker_jobs_are_abandoned_then_delivered_again_and_done(
    server_env: ServerEnv, artifacts: Path
) -> None:
    # Given a worker instance (2 processes) and, apart, a process that only sweeps (another host)
    app = build(server_env)
    store = server_env.store()
    r = server_env.redis()
    sweeper = DramatiqProcess(
        "apps.watchdog", server_env, artifacts / "sweeper.log", processes=1, threads=1, extra=("-Q", "elsewhere")
    )
    workers = DramatiqProcess(
        "apps.watchdog", server_env, artifacts / "workers.log", extra=("--worker-shutdown-timeout", "1000")
    )
    try:
        sweeper.start(ready=False)
        workers.start()
        sweeper.wait_ready()

        # And two jobs running, one of them holding the idempotency lease of its key
        held = app.hold.send("h")
        charged = app.charge.send(order_id=7, tag="c")
        running = wait_until(
            lambda: record_in(store, held.message_id, "running") and record_in(store, charged.message_id, "running"),
            timeout=30,
            what="both jobs running",
        )
        assert running
        lease = f"{server_env.prefix}:idem:lease:charge:charge:7"  # <actor>:<rendered key>
        assert r.exists(lease)

        # When the worker process running the first one is killed (kill -9)
        victim = store.get_job(held.message_id)
        assert victim is not None and victim.worker is not None
        killed_at = time.time()
        os.kill(int(victim.worker.split(":")[1]), signal.SIGKILL)
        assert workers.proc is not None
        workers.proc.wait(timeout=60)  # Dramatiq's master stops the whole instance

        # Then the job is abandoned within abandon_after + sweep_interval (the sweeper lives)
        deadline = FAST["abandon_after"] + FAST["sweep_interval"] + SLACK
        abandoned = wait_until(
            lambda: record_in(store, held.message_id, "abandoned"), timeout=deadline, what="the job abandoned"
        )
        took = abandoned.events[-1].at.timestamp() - killed_at
        print(f"\n[{server_env.kind}] kill -> abandoned: {took:.1f} s")
        assert "stopped heartbeating" in abandoned.events[-1].detail
        # And so is the other one (its process was stopped by the master before it ended)
        wait_until(lambda: record_in(store, charged.message_id, "abandoned"), timeout=deadline)
        # And the lease of its key was released, so that its next delivery runs at once
        assert not r.exists(lease)
        # And both messages are back in the broker before any worker runs again (on Redis, the
        # sweep forced Dramatiq's recovery; RabbitMQ requeued them when the connection died, and
        # the draining process may have put them back delayed, their keys' leases being held)
        broker = server_env.broker()
        wait_until(lambda: in_broker(server_env, broker) == 2, timeout=deadline, what="the messages back")

        # When a supervisor starts the workers again
        workers.start()
        wait_until(lambda: record_in(store, held.message_id, "running"), timeout=30, what="running again")
        again_at = store.get_job(held.message_id).events[-1].at.timestamp()  # type: ignore[union-attr]
        print(f"[{server_env.kind}] kill -> running again (restarted once abandoned): {again_at - killed_at:.1f} s")
        app.effects.set(app.fx("release:h"), 1)
        app.effects.set(app.fx("release:c"), 1)

        # Then both are done, run again after their abandonment with their attempt count kept
        wait_until(
            lambda: record_in(store, held.message_id, "done") and record_in(store, charged.message_id, "done"),
            timeout=30,
            what="both done",
        )
    finally:
        workers.stop()
        sweeper.stop()

    for message in (held, charged):
        record = store.get_job(message.message_id)
        assert record is not None and record.attempts == 1
        # A job may start before its sender's "enqueued" write lands: compare from its first run.
        # On RabbitMQ, the killed process's messages are redelivered at once, possibly to the other
        # process while it drains: it finds the key's lease held and puts the message back.
        history = [e for e in record.events if e.status != "queued" and not e.detail.startswith("put back")]
        assert [e.status for e in history] == ["running", "abandoned", "running", "done"], record.events
        assert history[2].detail.startswith("redelivered: attempt 1 on ")
        if server_env.kind == "redis":  # nothing comes back before the sweep released the lease
            assert not any(e.detail.startswith("put back") for e in record.events)
    assert int(app.effects.get(app.fx("charge:7:runs")) or 0) == 2
    dead = [p for p in store.worker_processes() if not p.alive]
    assert dead and not any(p.recovering for p in dead)


def test_only_the_job_blocked_past_stuck_after_is_marked_while_every_thread_is_busy(
    server_env: ServerEnv, artifacts: Path
) -> None:
    # Given 2 worker processes x 8 threads, every thread busy with jobs longer than abandon_after,
    # half of them holding the CPU, and one job blocked in time.sleep past its stuck_after (1.5 s)
    app = build(server_env)
    store = server_env.store()
    with DramatiqProcess("apps.watchdog", server_env, artifacts / "workers.log") as workers:
        assert len(workers.workers()) == 2
        stalled = app.stall.send(5)
        busy = [app.busy.send_with_options(args=(5,), kwargs={"spin": i % 2 == 0}, stuck_after=60) for i in range(15)]

        # Then the blocked job is stuck, with the stack of its thread naming where it blocks
        record = wait_until(lambda: record_in(store, stalled.message_id, "stuck"), timeout=30, what="stuck")
        assert record.stack is not None
        assert record.stack[-1]["function"] == "stall" and "time.sleep(seconds)" in record.stack[-1]["code"]
        assert record.stack[-1]["file"].endswith("apps/watchdog.py")
        shown = job_detail(record)
        assert "in stall" in shown and "time.sleep(seconds)" in shown
        assert [r.id for r in store.find_jobs(status="stuck")] == [stalled.message_id]

        # And every job ends done
        ids = [stalled.message_id] + [m.message_id for m in busy]
        wait_until(
            lambda: all(record_in(store, i, "done") for i in ids), timeout=60, interval=0.2, what="all jobs done"
        )
        assert [p.alive for p in store.worker_processes()] == [True, True]

    # The stuck job went on to done, its stack cleared
    record = store.get_job(stalled.message_id)
    assert record is not None and record.stack is None
    assert [e.status for e in record.events if e.status != "queued"] == ["running", "stuck", "done"]
    # And no long job that heartbeats was ever marked
    for message in busy:
        statuses = [e.status for e in store.get_job(message.message_id).events]  # type: ignore[union-attr]
        assert [s for s in statuses if s != "queued"] == ["running", "done"], statuses
    assert not store.find_jobs(status="abandoned").items
