"""A store outage under put-back churn, on real ``dramatiq`` worker processes and brokers.

While the store's Redis is down, keyed jobs cannot be checked and are put back again and
again (each time with writes for the record), while keyless jobs keep running and their final
writes wait in each worker process's buffer. The buffer is small here (``DR_TEST_MAX_BACKLOG``)
so that a few seconds of churn overflow it as a long outage overflows the default.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.apps.outage import build
from tests.conftest import ServerEnv
from tests.helpers import DramatiqProcess, wait_until

pytestmark = pytest.mark.integration

#: Writes each worker process may buffer: fewer than the jobs the outage below puts back, so
#: that even collapsed, their churn overflows it.
MAX_BACKLOG = 50
#: Worker processes and threads.
PROCESSES, THREADS = 2, 4
#: Seconds the store stays down (less than the Watchdog's abandon_after, 30 s).
OUTAGE = 8.0
#: How far (ms) an event's time may be from the moment the job noted, outside the store.
SLACK_MS = 1000


def ms(t: float) -> int:
    return int(t * 1000)


def test_a_store_outage_with_put_back_churn_keeps_every_final_state(
    server_env: ServerEnv, private_redis: Any, artifacts: Path
) -> None:
    # Given the bundle, its store on a Redis server of its own that keeps its data (AOF), and
    # worker processes whose write buffer holds MAX_BACKLOG writes
    env = server_env.with_options()
    env["DR_TEST_EFFECTS"] = server_env.store_url
    env["DR_TEST_STORE"] = env.store_url = private_redis.url + "/0"
    env["DR_TEST_MAX_BACKLOG"] = str(MAX_BACKLOG)
    private_redis.stop()
    private_redis.start_args = ["--appendonly", "yes", "--appendfsync", "always"]
    private_redis.start()
    app = build(env)
    effects, fx = app.effects, app.fx
    workers = DramatiqProcess(
        "apps.outage", env, artifacts / "workers.log", processes=PROCESSES, threads=THREADS
    ).start()
    try:
        before = [app.plain.send(i) for i in range(10)]
        wait_until(lambda: effects.hlen(fx("ended")) >= 10, timeout=30, what="the first jobs done")
        # and as many jobs running as the workers have threads
        slow = [app.plain.send(100 + i, work=2.0) for i in range(PROCESSES * THREADS)]
        wait_until(
            lambda: effects.hlen(fx("ran")) >= 10 + PROCESSES * THREADS, timeout=30, what="the slow jobs running"
        )

        # When the store goes away while they run, and keyed and keyless jobs keep coming (those
        # that cannot be checked are put back every second, with writes for their records each time)
        down_at = time.time()
        private_redis.stop()
        keyed = [app.keyed.send(i) for i in range(40)]
        during = [app.plain.send(200 + i) for i in range(30)]
        ran_during = {m.message_id for m in slow}
        wait_until(lambda: ran_during <= set(effects.hkeys(fx("ended"))), timeout=30, what="the slow jobs done")
        time.sleep(max(0.0, OUTAGE - (time.time() - down_at)))  # the outage lasts OUTAGE s
        up_at = ms(time.time())
        private_redis.start()

        # Then every job runs, and every record reaches its final status
        jobs = before + slow + keyed + during
        ids = [m.message_id for m in jobs]
        wait_until(lambda: set(ids) <= set(effects.hkeys(fx("ended"))), timeout=60, what="every job run")
        store = env.store()

        def left() -> list[str]:
            records = {i: store.get_job(i) for i in ids}
            return [
                f"{i}: {r.status.value if r else 'missing'}"
                for i, r in records.items()
                if not (r and r.status.terminal)
            ]

        try:
            wait_until(lambda: not left(), timeout=30, what="every record terminal")
        except AssertionError:
            pass
        non_terminal = left()
    finally:
        workers.stop()
    log = workers.log()
    assert non_terminal == [], f"{len(non_terminal)} records left non-terminal: {non_terminal[:10]}"

    # And each record says when things happened, not when the buffered writes were replayed
    ran = {k: int(v) for k, v in effects.hgetall(fx("ran")).items()}
    ended = {k: int(v) for k, v in effects.hgetall(fx("ended")).items()}
    for message in jobs:
        record = store.get_job(message.message_id)
        assert record is not None and record.status.value == "done", record
        statuses = [e.status for e in record.events]
        assert statuses[-2:] == ["running", "done"], (message.message_id, record.events)
        assert record.events[0].detail == "enqueued", (message.message_id, record.events)
        running, done = record.events[-2], record.events[-1]
        assert abs(ms(running.at.timestamp()) - ran[message.message_id]) <= SLACK_MS, (record.id, running)
        assert abs(ms(done.at.timestamp()) - ended[message.message_id]) <= SLACK_MS, (record.id, done)
        if message.message_id in ran_during:  # ended during the outage: written after it
            assert ms(done.at.timestamp()) < up_at, (record.id, done, up_at)

    # And the put-back churn was collapsed or dropped, never a final write, and the log says so
    assert "Store unreachable" in log and "buffered writes applied" in log
    assert (
        "Store write buffer full (50 writes): 1 dropped since the store went away (0 final, 0 record, 1 noise)" in log
    )
    assert " dropped (0 final, " in log and "collapsed into them" in log
    abandoned = [a for a in map(json.loads, effects.lrange(fx("alerts"), 0, -1)) if a.get("kind") == "abandoned"]
    assert abandoned == []
