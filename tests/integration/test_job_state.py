"""JobState with real ``dramatiq`` worker processes (--processes 2) on real Redis and RabbitMQ."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.apps.basic import build
from tests.conftest import ServerEnv
from tests.helpers import DramatiqProcess, wait_until

pytestmark = pytest.mark.integration


def statuses(store, ids):
    return [getattr(store.get_job(i), "status", None) for i in ids]


def test_every_status_transition(server_env: ServerEnv, artifacts: Path) -> None:
    # Given the bundle on a real broker and two real worker processes
    basic = build(server_env)
    store = server_env.store()
    with DramatiqProcess("apps.basic", server_env, artifacts / "worker.log"):
        # When jobs that succeed, fail once, fail for good and are delayed are sent
        ok = basic.ok.send(1)
        flaky = basic.flaky.send(2, fails=1)
        doomed = basic.doomed.send(3)
        later = basic.ok.send_with_options(args=(4,), delay=1500)

        # Then the delayed job shows when it is due, before it runs
        queued = store.get_job(later.message_id)
        assert queued is not None and queued.status.value == "queued" and queued.due_at is not None

        # And every job reaches its final status
        wait_until(
            lambda: (
                statuses(store, [ok.message_id, flaky.message_id, doomed.message_id, later.message_id])
                == ["done", "done", "failed", "done"]
            ),
            timeout=30,
            what="final statuses",
        )

    record = store.get_job(flaky.message_id)
    assert record.attempts == 2
    assert [e.status for e in record.events] == ["queued", "running", "retrying", "queued", "running", "done"]
    assert record.error is not None and record.error.type == "ValueError"
    assert record.worker and record.worker.count(":") == 2

    dead = store.get_job(doomed.message_id)
    assert dead.attempts == 2 and dead.max_retries == 1
    assert dead.error.type == "RuntimeError" and "doomed 3 cannot succeed" in dead.error.message
    assert "RuntimeError" in dead.error.traceback
    assert [e.status for e in dead.events][-1] == "failed"
    assert dead.finished_at is not None

    retrying = next(e for e in record.events if e.status == "retrying")
    assert "next attempt at" in retrying.detail

    delayed = store.get_job(later.message_id)
    assert delayed.started_at >= delayed.due_at


def test_business_keys_and_listing(server_env: ServerEnv, artifacts: Path) -> None:
    basic = build(server_env)
    store = server_env.store()
    with DramatiqProcess("apps.basic", server_env, artifacts / "worker.log"):
        sent = [basic.invoice.send(order_id=4700 + i, customer_id=i % 3) for i in range(12)]
        wait_until(lambda: all(s == "done" for s in statuses(store, [m.message_id for m in sent])), timeout=30)

    # Business keys are found as strings
    found = store.find_jobs(key=("order_id", "4711"))
    assert [r.id for r in found] == [sent[11].message_id]
    assert found.items[0].keys == {"order_id": "4711", "customer_id": "2"}

    # Paging over an actor's jobs returns each job once, newest first
    seen, cursor = [], None
    while True:
        page = store.find_jobs(actor="invoice", limit=5, cursor=cursor)
        seen += [r.id for r in page]
        cursor = page.cursor
        if cursor is None:
            break
    assert sorted(seen) == sorted(m.message_id for m in sent) and len(seen) == 12

    by_customer = store.find_jobs(key=("customer_id", "1"), status="done")
    assert len(by_customer) == 4
    assert not store.find_jobs(status="running").items


def test_retention_drops_finished_records_and_their_index_entries(server_env: ServerEnv, artifacts: Path) -> None:
    env = server_env.with_options(retention=1)
    basic = build(env)
    store = server_env.store()
    r = server_env.redis()
    with DramatiqProcess("apps.basic", env, artifacts / "worker.log"):
        old = [basic.invoice.send(order_id=i, customer_id=1) for i in range(5)]
        wait_until(lambda: all(s == "done" for s in statuses(store, [m.message_id for m in old])), timeout=30)
        time.sleep(1.5)
        # Later batches clean up what is past retention
        new = [basic.ok.send(i) for i in range(20)]
        wait_until(lambda: all(s == "done" for s in statuses(store, [m.message_id for m in new])), timeout=30)
        wait_until(lambda: all(store.get_job(m.message_id) is None for m in old), timeout=10, what="old records gone")

    prefix = server_env.prefix
    assert r.zcard(f"{prefix}:jobs:s:done:invoice") == 0
    assert r.zcard(f"{prefix}:jobs:key:order_id=3") == 0
    done = {m for k in r.scan_iter(match=f"{prefix}:jobs:s:done:*") for m in r.zrange(k, 0, -1)}
    assert not done & {m.message_id for m in old}


def test_store_outage_jobs_still_run_and_are_acked(server_env: ServerEnv, private_redis, artifacts: Path) -> None:
    # Given JobState alone, its store on a Redis server of its own that keeps its data (AOF)
    env = server_env.with_options()
    env["DR_TEST_MIDDLEWARE"] = "JobState"
    env["DR_TEST_EFFECTS"] = server_env.store_url
    env["DR_TEST_STORE"] = env.store_url = private_redis.url + "/0"
    private_redis.stop()
    private_redis.start_args = ["--appendonly", "yes", "--appendfsync", "always"]
    private_redis.start()
    basic = build(env)
    r, prefix = server_env.redis(), server_env.prefix
    workers = DramatiqProcess("apps.basic", env, artifacts / "worker.log").start()
    try:
        before = [basic.ok.send(i) for i in range(20)]
        wait_until(lambda: r.get(f"{prefix}:fx:ok") == "20", timeout=30)

        # When the store goes away while jobs keep coming (sent by a producer without the bundle)
        private_redis.stop()
        producer = server_env.broker()
        from dramatiq import Message

        during = [
            Message(queue_name=env.queue, actor_name="ok", args=(i,), kwargs={}, options={}) for i in range(20, 60)
        ]
        for message in during:
            producer.enqueue(message)

        # Then every job still runs, and its message is acked (the queue drains)
        wait_until(lambda: r.get(f"{prefix}:fx:ok") == "60", timeout=30, what="jobs run during the outage")
        time.sleep(1.0)
        assert "Store unreachable" in workers.log()

        # And once the store is back, the buffered writes land: every record is complete
        private_redis.start()
        store = env.store()
        wait_until(
            lambda: all(s == "done" for s in statuses(store, [m.message_id for m in before + during])),
            timeout=30,
            what="buffered records written",
        )
        assert "buffered writes applied" in workers.log()
    finally:
        workers.stop()
    assert r.get(f"{prefix}:fx:ok") == "60"  # each job ran once
