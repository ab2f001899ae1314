"""Operator controls with real ``dramatiq`` worker processes (--processes 2) on real Redis and RabbitMQ."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

import dramatiq_reliable as dr
from tests.apps.control import build
from tests.conftest import ServerEnv
from tests.helpers import DramatiqProcess, wait_until

pytestmark = pytest.mark.integration


def records(store, ids):
    return [store.get_job(i) for i in ids]


def heard(store, since) -> bool:
    """True once every live worker process beat (and so read the controls) after ``since``."""
    # A process's deadline is its last beat + abandon_after (5 s in apps.control).
    procs = [p for p in store.worker_processes() if p.alive]
    return len(procs) == 2 and all(p.deadline.timestamp() - 5 > since.timestamp() for p in procs)


def held(record) -> bool:
    return record is not None and any(e.detail.endswith(" is paused") for e in record.events)


def test_pause_and_resume_during_a_burst(server_env: ServerEnv, artifacts: Path) -> None:
    # Given two worker processes busy with a burst of jobs
    app = build(server_env)
    store = server_env.store()
    fx = app.effects
    with DramatiqProcess("apps.control", server_env, artifacts / "worker.log", threads=4):
        first = [app.ok.send(i) for i in range(100)]
        # When the actor is paused in the middle of it
        pausing = dr.pause(store, actor="ok", by="test")
        assert pausing.changed
        paused_at = time.monotonic()
        wait_until(lambda: heard(store, pausing.since), what="every worker to hear of the pause")
        rest = [app.ok.send(i) for i in range(100, 300)]
        others = [app.steps.send(f"o{i}", 1) for i in range(20)]
        # Then the workers hold its jobs (every later one is held, none of them runs) and other actors run
        ids = [m.message_id for m in rest]
        wait_until(lambda: all(held(r) for r in records(store, ids)), timeout=60, what="every later job held")
        wait_until(lambda: all(r.status.value == "done" for r in records(store, [m.message_id for m in others])))
        ran_while_paused = int(fx.get(app.fx("ok")) or 0)
        assert ran_while_paused <= 100
        assert all(r.status.value == "queued" and r.attempts == 0 for r in records(store, ids))
        assert not dr.pause(store, actor="ok").changed
        assert [(p.kind, p.name) for p in dr.paused(store)] == [("actor", "ok")]
        # When it is resumed
        assert dr.resume(store, actor="ok").changed
        resumed_at = time.monotonic()
        all_ids = [m.message_id for m in first + rest]
        wait_until(lambda: all(r.status.value == "done" for r in records(store, all_ids)), timeout=90, what="done")
        # Then each job ran once, on its first attempt: nothing lost, no attempt spent
        assert int(fx.get(app.fx("ok"))) == 300 and fx.scard(app.fx("ok:ids")) == 300
        assert all(r.attempts == 1 for r in records(store, all_ids))
        # And a whole queue can be paused and resumed the same way
        pausing = dr.pause(store, queue=server_env.queue)
        assert pausing.changed
        wait_until(lambda: heard(store, pausing.since), what="every worker to hear of the pause")
        more = [app.ok.send(i) for i in range(300, 320)]
        wait_until(lambda: all(held(r) for r in records(store, [m.message_id for m in more])), timeout=60)
        assert dr.resume(store, queue=server_env.queue).changed
        wait_until(lambda: all(r.status.value == "done" for r in records(store, [m.message_id for m in more])))
        print(  # figures for the report
            f"\n[{server_env.kind}] held {len(ids)} jobs in {resumed_at - paused_at:.1f}s;"
            f" all done {time.monotonic() - resumed_at:.1f}s after resume"
        )


def test_cancel_queued_delayed_and_running_jobs(server_env: ServerEnv, artifacts: Path) -> None:
    app = build(server_env)
    store = server_env.store()
    fx = app.effects
    with DramatiqProcess("apps.control", server_env, artifacts / "worker.log", threads=4):
        # Given queued jobs (held by a pause), a delayed one, a job running in steps and one that spins
        pausing = dr.pause(store, actor="ok")
        wait_until(lambda: heard(store, pausing.since), what="every worker to hear of the pause")
        queued = [app.ok.send(i) for i in range(100)]
        wait_until(lambda: all(held(r) for r in records(store, [m.message_id for m in queued])), timeout=60)
        delayed = app.ok.send_with_options(args=(1000,), delay=3000)
        stepping = app.steps.send("a", 400)
        spinning = app.spin.send("b", 60)
        both = [stepping.message_id, spinning.message_id]
        wait_until(lambda: [r.status.value for r in records(store, both)] == ["running"] * 2, what="both running")

        # When the queued ones are cancelled in bulk, the others by id, and the actor resumed
        cancelled_at = time.monotonic()
        bulk = dr.cancel_where(store, actor="ok", status="queued", by="test")
        assert len(bulk) == 101 and all(r.changed for r in bulk)
        by_id = dr.cancel(store, [stepping.message_id, spinning.message_id], by="test")
        assert [r.was for r in by_id] == ["running", "running"]
        dr.resume(store, actor="ok")

        # Then none of the queued or delayed ones runs: each delivery is acked without running
        ids = [m.message_id for m in queued] + [delayed.message_id]
        wait_until(
            lambda: all(r.events[-1].detail == "delivery skipped: the job was cancelled" for r in records(store, ids)),
            timeout=60,
            what="every cancelled delivery skipped",
        )
        skipped_after = time.monotonic() - cancelled_at
        assert int(fx.get(app.fx("ok")) or 0) == 0
        # And the running ones stop: at the next step, or at once when interruptible
        stopped_after = []
        for message in (stepping, spinning):
            wait_until(
                lambda m=message: store.get_job(m.message_id).events[-1].detail.startswith("stopped"), timeout=30
            )
            stopped_after.append(time.monotonic() - cancelled_at)
        print(  # figures for the report
            f"\n[{server_env.kind}] cancelled {len(bulk)} waiting jobs: every delivery skipped after"
            f" {skipped_after:.1f}s; running jobs stopped after {stopped_after[0]:.1f}s (step),"
            f" {stopped_after[1]:.1f}s (interrupt)"
        )
        assert 0 < int(fx.get(app.fx("steps"))) < 400
        assert fx.get(app.fx("finished:a")) is None and fx.get(app.fx("finished:b")) is None
        for record in records(store, [*ids, stepping.message_id, spinning.message_id]):
            assert record.status.value == "cancelled" and record.attempts <= 1
        # And cancelling again, or a finished or unknown job, changes nothing
        assert [r.state for r in dr.cancel(store, [stepping.message_id, "no-such-job"])] == ["cancelled", "unknown"]
    # Nothing was dead-lettered
    assert list(store.dead_letters()) == []


def test_retry_now_runs_a_retrying_job_once(server_env: ServerEnv, artifacts: Path) -> None:
    app = build(server_env)
    store = server_env.store()
    with DramatiqProcess("apps.control", server_env, artifacts / "worker.log", threads=2):
        # Given a job whose next attempt is two minutes away
        message = app.late.send("x")
        wait_until(lambda: getattr(store.get_job(message.message_id), "status", None) == dr.Status.RETRYING)
        # When it is retried now
        assert dr.retry_now(store, message.message_id, by="test").state == "now"
        # Then it runs at once, and once
        wait_until(lambda: store.get_job(message.message_id).status == dr.Status.DONE, timeout=30)
        assert int(app.effects.get(app.fx("late:x"))) == 2
        record = store.get_job(message.message_id)
        assert record.attempts == 2
        assert dr.retry_now(store, message.message_id).state == "done"


def test_replay_and_purge_by_error(server_env: ServerEnv, artifacts: Path, capsys) -> None:
    from tests.apps.dead import build as build_dead
    from tests.integration.test_dead_letters import all_in, run, run_json, xq_count

    app = build_dead(server_env)
    store = server_env.store()
    app.switch(True)
    with DramatiqProcess("apps.dead", server_env, artifacts / "worker.log"):
        # Given dead letters of two errors: "SMTP timed out for I (attempt 2)" and "SMTP timed out"
        fragile = [app.fragile.send(i).message_id for i in range(3)]
        mailer = [app.mailer.send(i).message_id for i in range(2)]
        wait_until(lambda: all_in(store, fragile + mailer, "failed"), timeout=30, what="dead-lettered")
        wait_until(lambda: xq_count(server_env) == 5, timeout=10, what="5 in the XQ")
        app.switch(False)
        # When the dead letters whose error names order 1 are replayed in one command
        code, out, err = run(capsys, server_env, "dead", "replay", "--error", "for 1 (", "--since", "1h", "--yes")
        assert code == 0, err
        assert out.splitlines()[-1] == "1 replayed"
        # Then that job alone runs again, to the end
        wait_until(lambda: all_in(store, [fragile[1]], "done"), timeout=30)
        assert all_in(store, [fragile[0], fragile[2], *mailer], "failed")
        # When the other fragile ones are purged by their error, and nothing matches a third text
        code, out, err = run(capsys, server_env, "dead", "purge", "--error", "smtp timed out for", "--yes")
        assert code == 0, err
        assert out.splitlines()[-1] == "2 purged"
        code, out, _ = run(capsys, server_env, "dead", "purge", "--error", "no such error", "--yes")
        assert code == 0 and "No dead letters match." in out
        code, out, _ = run(capsys, server_env, "dead", "purge", "--older-than", "1h", "--yes")
        assert code == 0 and "No dead letters match." in out
        # Then only the mailer's remain dead, in the store and in the broker
        assert sorted(x["id"] for x in run_json(capsys, server_env, "dead", "list")) == sorted(mailer)
        wait_until(lambda: xq_count(server_env) == 2, timeout=10)


def test_workers_shows_processes_busy_threads_and_jobs(server_env: ServerEnv, artifacts: Path, capsys) -> None:
    import json

    from dramatiq_reliable.cli import main

    app = build(server_env)
    store = server_env.store()
    with DramatiqProcess("apps.control", server_env, artifacts / "worker.log", threads=4):
        # Given three long jobs running on two processes (one may have taken all three)
        sent = [app.spin.send(f"w{i}", 60) for i in range(3)]
        wait_until(lambda: all(app.effects.get(app.fx(f"started:w{i}")) for i in range(3)), what="all running")
        # When an operator lists the workers
        wait_until(lambda: sum(w.busy for w in dr.workers(store)) == 3, what="3 jobs in the fleet's view")
        capsys.readouterr()
        code = main(["--store", f"{server_env.store_url}?prefix={server_env.prefix}", "workers", "--json"])
        found = json.loads(capsys.readouterr().out)
        # Then each process says what it is, how busy it is and what it runs, since when
        assert code == 0 and len(found) == 2 and all(w["alive"] for w in found)
        assert {w["broker"] for w in found} == {server_env.kind}
        assert all(w["threads"] == 4 and server_env.queue in w["queues"] for w in found)
        assert all(w["last_heartbeat"] and w["pid"] for w in found)
        jobs = [j for w in found for j in w["jobs"]]
        assert sorted(j["id"] for j in jobs) == sorted(m.message_id for m in sent)
        assert all(j["actor"] == "spin" and j["age"] > 0 and j["attempt"] == 1 for j in jobs)
        code = main(["--store", f"{server_env.store_url}?prefix={server_env.prefix}", "workers"])
        out = capsys.readouterr().out
        assert code == 0 and out.count(" alive ") == 2 and "threads busy" in out and "spin  attempt 1  running" in out
        # (the interruptible jobs end at once)
        dr.cancel(store, [m.message_id for m in sent])
        wait_until(lambda: sum(w.busy for w in dr.workers(store)) == 0, what="no job running")


def test_cron_run_pause_and_resume_by_hand(server_env: ServerEnv, artifacts: Path) -> None:
    import os
    import subprocess

    from tests.apps.cron import build as build_cron
    from tests.helpers import TESTS

    # Given a yearly schedule (it never fires during the test by itself) and a worker
    env = ServerEnv(server_env)
    env.__dict__.update(server_env.__dict__)
    env["DR_TEST_CRON_EXPR"] = "0 0 1 1 *"
    app = build_cron(env)
    store = server_env.store()
    schedule = dr.registry_of(app.broker).get("tick")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).with_name("dramatiq-reliable")), *args, "--path", str(TESTS)],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    with DramatiqProcess("apps.cron", env, artifacts / "worker.log"):
        # When it is run by hand
        done = cli("cron", "run", "apps.cron", "tick")
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.split()[-1]
        # Then one tick is enqueued and runs
        wait_until(lambda: getattr(store.get_job(job_id), "status", None) == dr.Status.DONE)
        # And a second run of the same second is the same, claimed tick: nothing more is enqueued
        now = (int(time.time()) + 5) * 1000
        assert dr.cron_run(app.broker, store, "tick", now=now)[0] == "enqueued"
        assert dr.cron_run(app.broker, store, "tick", now=now + 300) == ("taken", schedule.job_id(now))

        # When it is paused, a scheduler's tick is claimed and recorded paused, not enqueued
        paused = cli("cron", "pause", "apps.cron", "tick")
        assert paused.returncode == 0 and paused.stdout.startswith("tick: paused"), paused.stderr
        assert "already paused" in cli("cron", "pause", "apps.cron", "tick").stdout
        scheduler = dr.Scheduler(app.broker, store, schedules=[schedule])
        fire = (int(time.time()) + 10) * 1000
        assert scheduler.fire(schedule, fire) == "paused"
        assert store.cron_last(["tick"])["tick"].state == "paused"
        assert store.get_job(schedule.job_id(fire)) is None
        assert ("cron", "tick") in [(p.kind, p.name) for p in dr.paused(store)]
        listing = cli("cron", "list", "apps.cron").stdout
        assert listing.splitlines()[1].split()[-1] == "paused"
        # And once resumed, the next tick is enqueued
        assert cli("cron", "resume", "apps.cron", "tick").returncode == 0
        assert scheduler.fire(schedule, fire + 1000) == "enqueued"
        wait_until(lambda: getattr(store.get_job(schedule.job_id(fire + 1000)), "status", None) == dr.Status.DONE)
        # And an unknown schedule is one line, exit 1
        unknown = cli("cron", "pause", "apps.cron", "nope")
        # (the store's log lines, such as another library version on the server, may come before it)
        errors = [line for line in unknown.stderr.splitlines() if line.startswith("error:")]
        assert unknown.returncode == 1 and errors == ["error: no cron schedule 'nope' in apps.cron (known: tick)"]
