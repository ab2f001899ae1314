"""Cron with real ``dramatiq-reliable scheduler`` processes on real Redis and RabbitMQ.

Each tick's enqueue is counted by fire time in the scheduler processes (``tests/apps/cron.py``),
and each run in a real ``dramatiq`` worker, so a tick enqueued twice, or run twice, or lost,
shows up in the counts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import dramatiq
import pytest

import dramatiq_reliable as dr
from dramatiq_reliable._clock import now_ms
from tests.apps.cron import build
from tests.conftest import ServerEnv
from tests.helpers import TESTS, DramatiqProcess, wait_until

pytestmark = pytest.mark.integration

SCRIPT = Path(sys.executable).with_name("dramatiq-reliable")


def cli() -> list[str]:
    return [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "dramatiq_reliable.cli"]


class SchedulerProcess:
    """A ``dramatiq-reliable scheduler apps.cron`` process."""

    def __init__(self, env: dict[str, str], log: Path, *options: str) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_path = log
        self.options = options
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, ready: bool = True) -> SchedulerProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*cli(), "scheduler", "apps.cron", "--path", str(TESTS), *self.options],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if ready:
            wait_until(self.ready, timeout=60, interval=0.1, what="the scheduler to start")
        return self

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"scheduler exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        return "runs 1 schedule(s)" in self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM; the exit code (the process group is killed if it does not exit in 30 s)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode


def counts(env: ServerEnv, what: str) -> dict[int, int]:
    """Fire time (ms) -> how many times a tick was enqueued (``enq``) or run (``ran``)."""
    r = env.redis()
    prefix = f"{env.prefix}:fx:{what}:"
    return {int(key[len(prefix) :]): int(r.get(key) or 0) for key in r.scan_iter(match=prefix + "*", count=1000)}


def with_env(env: ServerEnv, **extra: str) -> ServerEnv:
    copy = ServerEnv(env)
    copy.__dict__.update(env.__dict__)
    copy.update(extra)
    return copy


def schedule_of(env: ServerEnv) -> dr.Schedule:
    schedule = dr.registry_of(build(env).broker).get("tick")
    assert schedule is not None
    return schedule


def contiguous(fires: list[int], step: int = 1000) -> bool:
    return sorted(fires) == list(range(min(fires), max(fires) + step, step))


FAST = ("--misfire-grace", "10s", "--claim-lease", "2s")


def test_three_schedulers_enqueue_each_tick_once_even_when_one_is_killed(
    server_env: ServerEnv, artifacts: Path
) -> None:
    # Given a worker and three schedulers of a per-second schedule
    schedule = schedule_of(server_env)
    counting = with_env(server_env, DR_TEST_CRON_COUNT="1")
    with DramatiqProcess("apps.cron", server_env, artifacts / "worker.log"):
        schedulers = [SchedulerProcess(counting, artifacts / f"scheduler{i}.log", *FAST) for i in range(3)]
        for s in schedulers:
            s.start(ready=False)
        for s in schedulers:
            wait_until(s.ready, timeout=60, interval=0.1, what="the schedulers to start")
        wait_until(lambda: len(counts(server_env, "enq")) >= 4, timeout=30, what="4 ticks")

        # When one scheduler is killed -9 midway
        schedulers[0].kill()
        killed_at = now_ms()
        wait_until(
            lambda: len([f for f in counts(server_env, "enq") if f > killed_at]) >= 6,
            timeout=30,
            what="6 ticks after the kill",
        )
        # And the others are stopped with SIGTERM
        assert [s.stop() for s in schedulers[1:]] == [0, 0]
        enqueued = counts(server_env, "enq")
        wait_until(lambda: counts(server_env, "ran") == enqueued, timeout=30, what="every tick to run")

    # Then every tick of the run was enqueued exactly once, and ran exactly once: none lost, none twice
    assert contiguous(list(enqueued)), sorted(enqueued)
    assert set(enqueued.values()) == {1}
    assert len(enqueued) >= 10
    # And each tick's job record, under the id derived from its claim, is done
    store = server_env.store()
    statuses = {store.get_job(schedule.job_id(f)).status.value for f in enqueued}  # type: ignore[union-attr]
    assert statuses == {"done"}
    # And all three schedulers enqueued ticks (they share the work)
    assert all("enqueued as job" in s.log() for s in schedulers[1:])

    # And `cron list` shows the schedule, its last tick and that job's status
    last = max(enqueued)
    table = subprocess.run(
        [*cli(), "cron", "list", "apps.cron", "--path", str(TESTS)],
        env={**os.environ, **server_env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    header, row = table.splitlines()
    columns = ["NAME", "ACTOR", "SCHEDULE", "TIMEZONE", "NEXT RUN", "LAST TICK", "LAST JOB", "STATUS"]
    assert re.split(r"\s{2,}", header) == columns
    assert row.startswith("tick  tick   * * * * * *  UTC")
    assert row.split()[-2:] == [schedule.job_id(last), "done"]
    listing = json.loads(
        subprocess.run(
            [*cli(), "cron", "list", "apps.cron", "--path", str(TESTS), "--json"],
            env={**os.environ, **server_env},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert listing[0]["last_job"] == {"id": schedule.job_id(last), "status": "done"}
    assert listing[0]["last_tick"]["state"] == "sent"
    assert listing[0]["args"] == [7] and listing[0]["expression"] == "* * * * * *"


def test_a_scheduler_killed_between_claim_and_enqueue_loses_no_tick(server_env: ServerEnv, artifacts: Path) -> None:
    schedule = schedule_of(server_env)
    # Given a scheduler that dies (SIGKILL) right after claiming its first tick, before the enqueue
    dying = SchedulerProcess(with_env(server_env, DR_TEST_CRON_DIE="1"), artifacts / "dying.log", *FAST)
    dying.start(ready=False)
    assert dying.proc is not None
    assert dying.proc.wait(timeout=60) == -signal.SIGKILL
    r = server_env.redis()
    claims = list(r.scan_iter(match=f"{server_env.prefix}:cron:tick:tick:*"))
    assert len(claims) == 1
    claimed = json.loads(r.get(claims[0]) or "{}")
    assert claimed["st"] == "pending"
    orphan = int(claims[0].rsplit(":", 1)[1])
    assert counts(server_env, "enq") == {}

    # When another scheduler runs (catching up every missed tick, not only the latest)
    healthy = SchedulerProcess(
        with_env(server_env, DR_TEST_CRON_COUNT="1"), artifacts / "healthy.log", *FAST, "--no-coalesce"
    ).start()
    wait_until(lambda: counts(server_env, "enq").get(orphan) == 1, timeout=30, what="the orphaned tick")
    started = now_ms()
    wait_until(lambda: max(counts(server_env, "enq")) > started + 2000, timeout=30, what="more ticks")
    assert healthy.stop() == 0

    # Then it took the orphaned tick over, under the tick's job id, and no tick is missing or doubled
    enqueued = counts(server_env, "enq")
    assert min(enqueued) == orphan
    assert contiguous(list(enqueued)), sorted(enqueued)
    assert set(enqueued.values()) == {1}
    assert "taking over tick" in healthy.log()
    record = server_env.store().get_job(schedule.job_id(orphan))
    assert record is not None and record.status.value == "queued"


def sparse_expression(t0: int) -> str:
    """A schedule whose only fire times near ``t0`` are t0-260 s, t0-80 s and t0-20 s."""
    times = [datetime.fromtimestamp((t0 - back) / 1000, tz=timezone.utc) for back in (260_000, 80_000, 20_000)]
    minutes = ",".join(str(m) for m in sorted({t.minute for t in times}))
    hours = ",".join(str(h) for h in sorted({t.hour for t in times}))
    return f"{times[0].second} {minutes} {hours} * * *"


@pytest.mark.parametrize("coalesce", [True, False])
def test_a_scheduler_starting_after_a_gap_fires_per_the_misfire_policy(
    server_env: ServerEnv, artifacts: Path, coalesce: bool
) -> None:
    # Given a schedule that ticked last 5 minutes ago, then missed ticks 260 s, 80 s and 20 s ago
    t0 = now_ms() // 1000 * 1000
    env = with_env(server_env, DR_TEST_CRON_EXPR=sparse_expression(t0), DR_TEST_CRON_COUNT="1")
    schedule = schedule_of(env)
    missed = [t0 - 260_000, t0 - 80_000, t0 - 20_000]
    assert schedule.fires_between(t0 - 300_000, t0 + 120_000) == missed
    store = server_env.store()
    last = t0 - 300_000
    store.cron_claim("tick", last, schedule.job_id(last), owner="gone", lease_ms=1000, grace_ms=10_000, now=last)
    store.cron_confirm("tick", last, owner="gone", now=last)

    # When a scheduler starts with a misfire grace of 150 s
    flag = "--coalesce" if coalesce else "--no-coalesce"
    scheduler = SchedulerProcess(env, artifacts / "scheduler.log", "--misfire-grace", "150s", flag).start()
    wait_until(lambda: t0 - 20_000 in counts(server_env, "enq"), timeout=30, what="the catch-up tick")
    assert scheduler.stop() == 0

    # Then the tick older than the grace is skipped (and said so), not fired in a burst
    expected = missed[2:] if coalesce else missed[1:]
    assert counts(server_env, "enq") == dict.fromkeys(expected, 1)
    assert "1 tick(s) since" in scheduler.log() and "missed by more than misfire_grace" in scheduler.log()
    # And the latest tick is recorded, with its job
    tick = store.cron_last(["tick"])["tick"]
    assert tick.fire_at.timestamp() * 1000 == t0 - 20_000
    assert (tick.job_id, tick.state) == (schedule.job_id(t0 - 20_000), "sent")


def test_an_unreachable_broker_stops_the_scheduler_at_start_with_exit_3(server_env: ServerEnv) -> None:
    dead = "redis://127.0.0.1:1/0" if server_env.kind == "redis" else "amqp://guest:guest@127.0.0.1:1/%2F"
    result = subprocess.run(
        [*cli(), "scheduler", "apps.cron", "--path", str(TESTS)],
        env={**os.environ, **server_env, "DR_TEST_BROKER": dead},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    # One line says why (the scheduler's log lines, such as the store's, are not part of it)
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("error: broker ") and " unreachable: " in lines[0], result.stderr


def test_the_rabbitmq_keepalive_replaces_a_dropped_connection(rabbitmq_server: str, ns: str) -> None:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    from dramatiq_reliable._ticks import keepalive

    broker = RabbitmqBroker(url=rabbitmq_server)
    queue = f"{ns}_keepalive"
    try:
        broker.declare_queue(queue)
        message = dramatiq.Message(queue_name=queue, actor_name="a", args=(), kwargs={}, options={})
        # Given this thread's connection is alive, the keepalive keeps it
        connection = broker.connection
        keepalive(broker)
        assert broker.connection is connection and connection.is_open
        # When the connection is dropped, the keepalive forgets it, and the next enqueue reconnects
        connection.close()
        keepalive(broker)
        assert broker.connection is not connection
        broker.enqueue(message)
        wait_until(lambda: broker.get_queue_message_counts(queue)[0] == 1, timeout=10, what="the message")
    finally:
        broker.channel.queue_delete(queue)
        broker.channel.queue_delete(f"{queue}.DQ")
        broker.channel.queue_delete(f"{queue}.XQ")
        broker.close()
