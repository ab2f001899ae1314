"""Idempotency with real ``dramatiq`` worker processes on real Redis and RabbitMQ."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import dramatiq_reliable as dr
from tests.apps.basic import build
from tests.conftest import ServerEnv
from tests.helpers import DramatiqProcess, wait_until

pytestmark = pytest.mark.integration


def final(store, messages) -> bool:
    return all(
        (r := store.get_job(m.message_id)) is not None and r.status.value in ("done", "skipped") for m in messages
    )


def counts(r, prefix: str, kind: str, ids) -> list[int]:
    return [int(r.get(f"{prefix}:fx:{kind}:{i}") or 0) for i in ids]


def recover_dead_redis_workers(env: ServerEnv) -> None:
    """What a supervisor does on Redis after a crash: run Dramatiq's own recovery of the dead
    workers' unacked messages now. Safe here because no worker of this test is alive."""
    from dramatiq.brokers.redis import RedisBroker

    tool = RedisBroker(
        url=env.broker_url, namespace=env["DR_TEST_NAMESPACE"], maintenance_chance=1_000_000, heartbeat_timeout=1
    )
    time.sleep(0.01)
    for queue in (env.queue, env.queue + ".DQ"):
        tool.do_qsize(queue)
    tool.close()


def test_kill_9_mid_burst_every_side_effect_happens_once(server_env: ServerEnv, artifacts: Path) -> None:
    # Given invoices that charge, work, then email, each step checkpointed with dr.once,
    # on two worker processes (one thread each, so a process runs one job at a time)
    env = server_env.with_options(lease=3)
    app = build(env)
    r, prefix = env.redis(), env.prefix
    orders = list(range(40))
    workers = DramatiqProcess("apps.basic", env, artifacts / "worker.log", processes=2, threads=1).start()
    sent = [app.invoice.send(order_id=i, customer_id=i, work=0.3) for i in orders]

    # When a worker process is killed -9 while its job is between the charge and the email
    victim = workers.workers()[0]
    wait_until(lambda: r.get(f"{prefix}:fx:mid:{victim}") and r.llen(f"{prefix}:fx:starts") > 4, timeout=30)
    workers.kill_worker(0)
    workers.proc.wait(timeout=60)  # Dramatiq's master stops the whole instance when a worker dies
    if env.kind == "redis":
        recover_dead_redis_workers(env)

    # And the workers are started again, as a supervisor would
    with DramatiqProcess("apps.basic", env, artifacts / "worker2.log", processes=2, threads=1):
        wait_until(lambda: final(app.store, sent), timeout=90, what="every invoice done or skipped")

    # Then every charge and every email happened exactly once, and no job was lost
    assert counts(r, prefix, "charge", orders) == [1] * len(orders)
    assert counts(r, prefix, "email", orders) == [1] * len(orders)
    interrupted = app.store.find_jobs(key=("order_id", r.get(f"{prefix}:fx:mid:{victim}") or "-1"))
    for record in interrupted:
        assert record.status.value == "done"


def test_two_deliveries_of_one_key_never_run_at_once(server_env: ServerEnv, artifacts: Path) -> None:
    app = build(server_env)
    r, prefix = server_env.redis(), server_env.prefix
    with DramatiqProcess("apps.basic", server_env, artifacts / "worker.log", processes=2, threads=2):
        # When four sends of the same order arrive at once on two processes
        sent = [app.invoice.send(order_id=77, customer_id=77, work=1.0) for _ in range(4)]
        wait_until(lambda: final(app.store, sent), timeout=60)

    # Then the work ran once, never concurrently, and the others point to it
    assert counts(r, prefix, "charge", [77]) == [1] and counts(r, prefix, "email", [77]) == [1]
    records = [app.store.get_job(m.message_id) for m in sent]
    done = [x for x in records if x.status is dr.Status.DONE]
    assert len(done) == 1
    assert all(x.duplicate_of == done[0].id for x in records if x is not done[0])
    ends = r.lrange(f"{prefix}:fx:ends", 0, -1)
    assert len(ends) == 1


def test_a_failed_attempt_releases_the_lease_and_only_the_failed_step_is_retried(
    server_env: ServerEnv, artifacts: Path
) -> None:
    app = build(server_env)
    r, prefix = server_env.redis(), server_env.prefix
    r.set(f"{prefix}:fx:break_email", 1)
    with DramatiqProcess("apps.basic", server_env, artifacts / "worker.log"):
        message = app.invoice.send(order_id=5, customer_id=5)

        def second_attempt_failed() -> bool:
            # From the history, not the status: "retrying" lasts only the ~0.2 s of the backoff.
            record = app.store.get_job(message.message_id)
            return record is not None and any(
                e.status == "retrying" and e.detail.startswith("attempt 2 failed") for e in record.events
            )

        wait_until(second_attempt_failed, timeout=30)
        r.delete(f"{prefix}:fx:break_email")
        wait_until(lambda: final(app.store, [message]), timeout=30)

    record = app.store.get_job(message.message_id)
    assert record.status is dr.Status.DONE and record.attempts >= 3
    assert counts(r, prefix, "charge", [5]) == [1]  # charged once across attempts
    assert counts(r, prefix, "email", [5]) == [1]
    assert record.error.type == "ConnectionError"


def test_completed_keys_expire_after_their_ttl(server_env: ServerEnv, artifacts: Path) -> None:
    app = build(server_env)
    r, prefix = server_env.redis(), server_env.prefix
    with DramatiqProcess("apps.basic", server_env, artifacts / "worker.log"):
        first = app.ping.send("a")
        wait_until(lambda: final(app.store, [first]), timeout=20)
        duplicate = app.ping.send("a")
        wait_until(lambda: final(app.store, [duplicate]), timeout=20)
        time.sleep(1.2)  # the actor's idempotency_ttl is 1 s
        later = app.ping.send("a")
        wait_until(lambda: final(app.store, [later]), timeout=20)

    assert app.store.get_job(duplicate.message_id).status is dr.Status.SKIPPED
    assert app.store.get_job(later.message_id).status is dr.Status.DONE
    assert r.get(f"{prefix}:fx:ping:a") == "2"


def test_unique_refuses_a_second_send_while_one_is_pending(server_env: ServerEnv, artifacts: Path) -> None:
    app = build(server_env)
    r, prefix = server_env.redis(), server_env.prefix
    with DramatiqProcess("apps.basic", server_env, artifacts / "worker.log"):
        first = app.report.send("mon", seconds=1.0)
        with pytest.raises(dr.DuplicateJob) as info:
            app.report.send("mon")
        assert info.value.job_id == first.message_id
        wait_until(lambda: app.store.get_job(first.message_id).status is dr.Status.RUNNING, timeout=20)
        with pytest.raises(dr.DuplicateJob):
            app.report.send("mon")
        wait_until(lambda: final(app.store, [first]), timeout=20)
        # The key freed itself when the job finished
        again = app.report.send("mon", seconds=0)
        wait_until(lambda: final(app.store, [again]), timeout=20)
    assert r.get(f"{prefix}:fx:report:mon") == "1"  # the second run was an idempotent duplicate


def test_store_down_during_a_burst_runs_nothing_unchecked_and_loses_nothing(
    server_env: ServerEnv, private_redis, artifacts: Path
) -> None:
    # Given the store on a Redis server of its own (with an append-only file, so it keeps its
    # data across the restart), and side effects counted on the shared Redis
    env = server_env.with_options()
    env["DR_TEST_EFFECTS"] = server_env.store_url
    env["DR_TEST_STORE"] = private_redis.url + "/0"
    env.store_url = private_redis.url + "/0"
    private_redis.stop()
    private_redis.start_args = ["--appendonly", "yes", "--appendfsync", "always"]
    private_redis.start()
    app = build(env)
    r, prefix = server_env.redis(), server_env.prefix
    orders = list(range(60))
    with DramatiqProcess("apps.basic", env, artifacts / "worker.log"):
        sent = [app.invoice.send(order_id=i, customer_id=i, work=0.05) for i in orders]
        wait_until(lambda: r.llen(f"{prefix}:fx:starts") >= 10, timeout=30)
        # When the store goes away for a few seconds in the middle of the burst
        private_redis.stop()
        down_at = time.time()
        time.sleep(4)
        up_at = time.time()
        private_redis.start()
        # Then everything completes once it is back
        wait_until(lambda: final(app.store, sent), timeout=90, what="all invoices done after the outage")

    assert counts(r, prefix, "charge", orders) == [1] * len(orders)
    assert counts(r, prefix, "email", orders) == [1] * len(orders)
    # Nothing started while the store was unreachable (jobs already past their check finish)
    starts = [float(line.split()[1]) for line in r.lrange(f"{prefix}:fx:starts", 0, -1)]
    assert not [t for t in starts if down_at + 1.0 < t < up_at]
    log = (artifacts / "worker.log").read_text()
    assert "put back" in log or "Store unreachable" in log


def test_store_down_mid_burst_keyless_jobs_keep_running_and_keyed_ones_wait(
    server_env: ServerEnv, private_redis, artifacts: Path
) -> None:
    # Given the store on a Redis server of its own (append-only, so it keeps its data across the
    # restart), side effects counted on the shared Redis, and a burst of keyless and keyed jobs
    env = server_env.with_options()
    env["DR_TEST_EFFECTS"] = server_env.store_url
    env["DR_TEST_STORE"] = private_redis.url + "/0"
    env.store_url = private_redis.url + "/0"
    private_redis.stop()
    private_redis.start_args = ["--appendonly", "yes", "--appendfsync", "always"]
    private_redis.start()
    app = build(env)
    r, prefix = server_env.redis(), server_env.prefix
    tags = [f"t{i}" for i in range(150)]
    orders = list(range(20))
    with DramatiqProcess("apps.basic", env, artifacts / "worker.log"):
        plain = [app.sleepy.send(0.05, tag) for tag in tags[:20]]
        wait_until(lambda: final(app.store, plain), timeout=60, what="the first keyless jobs done")
        # When the store goes away in the middle of the burst
        private_redis.stop()
        down_at = time.time()
        invoices = [app.invoice.send(order_id=i, customer_id=i) for i in orders]
        plain += [app.sleepy.send(0.05, tag) for tag in tags[20:]]
        log = artifacts / "worker.log"

        def put_back(m) -> bool:
            return f"Message {m.message_id!r} put back" in log.read_text()

        # Then every keyless job completes while it is down, and every keyed one is put back
        wait_until(
            lambda: counts(r, prefix, "sleepy", tags[20:]) == [1] * len(tags[20:]) and all(map(put_back, invoices)),
            timeout=90,
            what="keyless jobs done and keyed ones put back during the outage",
        )
        done_during = sum(counts(r, prefix, "sleepy", tags[20:]))
        started_keyed = r.llen(f"{prefix}:fx:starts")
        up_at = time.time()
        private_redis.start()
        # And everything is recorded once it is back, keyed jobs included
        wait_until(lambda: final(app.store, plain + invoices), timeout=120, what="every job's final record")

    assert done_during > 0 and started_keyed == 0
    assert counts(r, prefix, "sleepy", tags) == [1] * len(tags)
    assert counts(r, prefix, "charge", orders) == [1] * len(orders)
    assert all(app.store.get_job(m.message_id).status is dr.Status.DONE for m in plain + invoices)
    assert "Jobs without idempotency_key or unique keep running" in log.read_text()
    print(f"outage {up_at - down_at:.1f} s: {done_during} keyless jobs done meanwhile, {started_keyed} keyed started")
