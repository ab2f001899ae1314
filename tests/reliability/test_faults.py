"""Faults during a burst of jobs, on real ``dramatiq`` worker processes, Redis and RabbitMQ.

Each scenario sends a burst of ``order`` jobs (``tests/apps/faults.py``: ``dr.once`` steps, an
``idempotency_key``, side effects counted in Redis outside the worker), injects its fault
while they run, lets the fleet recover as a supervisor would (restarting a stopped
``dramatiq`` instance at once), then counts jobs lost, side effects duplicated and jobs left
non-terminal, which must all be 0, and the time to recover. Each appends its figures as one
JSON line to ``tests/artifacts/reliability.jsonl`` (see ``tests/reliability/README.md``).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import dramatiq_reliable as dr
from tests.apps.faults import build
from tests.conftest import ServerEnv, delete_prefix, make_env
from tests.helpers import DramatiqProcess, wait_until
from tests.reliability.burst import Burst
from tests.reliability.conftest import PrivateRabbitMQ, Report, Size

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

#: Worker processes and threads, as a production instance.
PROCESSES, THREADS = 2, 8
#: A draining worker process waits up to 30 s (Dramatiq takes milliseconds) for its running jobs.
SHUTDOWN = ("--worker-shutdown-timeout", "30000")


def workers(env: dict[str, str], log: Path) -> DramatiqProcess:
    return DramatiqProcess("apps.faults", env, log, processes=PROCESSES, threads=THREADS, extra=SHUTDOWN)


def settle_timeout(size: Size) -> float:
    return 90 + 2 * size.outage + size.jobs * size.work / THREADS


def check(figures: dict[str, Any]) -> None:
    assert (figures["lost"], figures["duplicated"], figures["non_terminal"]) == (0, 0, 0), figures


def test_kill_9_a_worker_process_three_times(server_env: ServerEnv, size: Size, report: Report, artifacts: Path):
    # Given a burst of jobs on a worker instance of 2 processes x 8 threads
    app = build(server_env)
    fleet = workers(server_env, artifacts / "workers.log").start()
    burst = Burst(app, size.jobs, size.work).send()
    left_at_kill = []
    try:
        # When a worker process is killed -9 three times while the burst runs, and the
        # instance (which Dramatiq stops when one of its processes dies) is restarted at once
        for n, fraction in enumerate((0.1, 0.3, 0.5)):
            burst.wait_done(fraction)
            left_at_kill.append(size.jobs - burst.done())
            killed_at = time.time()
            fleet.kill_worker(n % PROCESSES, sig=signal.SIGUSR2)  # it SIGKILLs itself (see the app)
            assert fleet.proc is not None
            fleet.proc.wait(timeout=90)
            assert "exited unexpectedly (code -9)" in fleet.log()
            fleet.start()
            burst.fault(killed_at, time.time())
        # Then every job finishes
        settled = burst.settle(settle_timeout(size))
    finally:
        fleet.stop()
    figures = burst.figures("kill -9 x3", server_env.kind, settled=settled, left_at_kill=left_at_kill)
    report.write(figures)
    check(figures)
    assert all(left > 0 for left in left_at_kill), "a kill came after the burst ended"


def test_sigterm_drains_and_loses_nothing(server_env: ServerEnv, size: Size, report: Report, artifacts: Path):
    # Given a burst of jobs running
    app = build(server_env)
    fleet = workers(server_env, artifacts / "workers.log").start()
    burst = Burst(app, size.jobs, size.work).send()
    try:
        burst.wait_done(0.3)
        left = size.jobs - burst.done()
        # When the instance gets SIGTERM (a deploy)
        stopped_at = time.time()
        assert fleet.stop(timeout=120) == 0
        drained_s = time.time() - stopped_at
        # Then it drained: no job is left running or abandoned by it
        in_flight = app.store.count_jobs(["running", "abandoned", "stuck"])
        # And when it is started again, every job finishes
        fleet.start()
        burst.fault(stopped_at, time.time())
        settled = burst.settle(settle_timeout(size))
    finally:
        fleet.stop()
    figures = burst.figures(
        "SIGTERM", server_env.kind, settled=settled, left_at_stop=left, drain_s=round(drained_s, 1), in_flight=in_flight
    )
    report.write(figures)
    check(figures)
    assert sum(in_flight.values()) == 0, in_flight
    assert left > 0, "the SIGTERM came after the burst ended"


def test_the_store_redis_down_during_a_burst(
    server_env: ServerEnv, private_redis: Any, size: Size, report: Report, artifacts: Path
):
    # Given the store on a Redis server of its own (append-only, so its data survives a restart),
    # side effects counted on the shared Redis, and a burst of jobs running
    env = server_env.with_options()
    env["DR_TEST_EFFECTS"] = server_env.store_url
    env["DR_TEST_STORE"] = env.store_url = private_redis.url + "/0"
    private_redis.stop()
    private_redis.start_args = ["--appendonly", "yes", "--appendfsync", "always"]
    private_redis.start()
    app = build(env)
    fleet = workers(env, artifacts / "workers.log").start()
    burst = Burst(app, size.jobs, size.work).send()
    try:
        burst.wait_done(0.2)
        left = size.jobs - burst.done()
        # When the store's Redis goes away for DR_FAULT_OUTAGE seconds
        down_at = time.time()
        private_redis.stop()
        time.sleep(size.outage)
        private_redis.start()
        burst.fault(down_at, time.time())
        # Then every job finishes once it is back
        settled = burst.settle(settle_timeout(size))
    finally:
        fleet.stop()
    figures = burst.figures("store Redis down", server_env.kind, settled=settled, left_at_outage=left)
    report.write(figures)
    check(figures)
    assert left > 0, "the outage came after the burst ended"


def test_rabbitmq_restarted_during_a_burst(
    private_rabbitmq: PrivateRabbitMQ, redis_server: str, ns: str, size: Size, report: Report, artifacts: Path
):
    # Given a burst of jobs running on a RabbitMQ node of this test's own
    env = make_env("rabbitmq", redis_server, private_rabbitmq.url, ns)
    try:
        app = build(env)
        fleet = workers(env, artifacts / "workers.log").start()
        burst = Burst(app, size.jobs, size.work).send()
        try:
            burst.wait_done(0.2)
            left = size.jobs - burst.done()
            # When the RabbitMQ node is restarted (stopped, then started again on its data)
            down_at = time.time()
            private_rabbitmq.stop()
            private_rabbitmq.start()
            burst.fault(down_at, time.time())
            # Then the workers reconnect and every job finishes
            settled = burst.settle(settle_timeout(size))
        finally:
            fleet.stop()
        figures = burst.figures("RabbitMQ restart", "rabbitmq", settled=settled, left_at_restart=left)
    finally:
        delete_prefix(env.redis(), env.prefix + ":")
    report.write(figures)
    check(figures)
    assert left > 0, "the restart came after the burst ended"


def test_a_poison_message(server_env: ServerEnv, size: Size, report: Report, artifacts: Path):
    # Given a burst of good jobs with one poison message among them (it fails on every attempt)
    app = build(server_env)
    fleet = workers(server_env, artifacts / "workers.log").start()
    burst = Burst(app, size.jobs, size.work)
    half = size.jobs // 2
    burst.sent = [app.order.send(order_id=i, work=size.work) for i in range(half)]
    poison = app.poison.send(order_id=4711)
    burst.extra = [poison]
    burst.sent += [app.order.send(order_id=i, work=size.work) for i in range(half, size.jobs)]
    sent_at = time.time()
    try:
        settled = burst.settle(settle_timeout(size))
        wait_until(lambda: app.effects.llen(app.fx("alerts")) >= 1, timeout=30, what="the alert")
    finally:
        fleet.stop()  # a stopping worker sends the alerts it still holds
    alerts = [json.loads(a) for a in app.effects.lrange(app.fx("alerts"), 0, -1)]
    attempts = int(app.effects.hget(app.fx("poison"), "4711") or 0)
    record = app.store.get_job(poison.message_id)
    [stats] = dr.queue_stats(server_env.broker(), [server_env.queue])
    stored = app.store.dead_letters(queue=server_env.queue).items
    figures = burst.figures(
        "poison message",
        server_env.kind,
        settled=settled,
        dead_after_s=round(record.finished_at.timestamp() - sent_at, 1) if record and record.finished_at else None,
        attempts=attempts,
        dead_letters_store=len(stored),
        dead_letters_broker=stats.dead,
        alerts=len(alerts),
    )
    report.write(figures)
    check(figures)
    # Then it ran max_retries + 1 times, left exactly one dead letter and raised exactly one alert
    assert attempts == 4
    assert record is not None and record.status is dr.Status.FAILED and record.attempts == 4
    assert [letter.id for letter in stored] == [poison.message_id]
    assert stats.dead == 1
    assert [(a["kind"], a["actor"], a["error_type"]) for a in alerts] == [("failed", "poison", "ValueError")], alerts
