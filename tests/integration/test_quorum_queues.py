"""Dead letters on RabbitMQ quorum queues: reading them spends no delivery, so nothing is dropped.

The app declares its queues as quorum queues with ``x-delivery-limit`` 5, its ``.XQ`` included:
a read that handed the messages back would push each one past the limit within six reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

import dramatiq_reliable as dr
from dramatiq_reliable.brokers import dead_queue
from dramatiq_reliable.dead._rabbitmq_quorum import is_quorum
from dramatiq_reliable.dead.reconcile import sync
from tests.apps.dead import build
from tests.conftest import ServerEnv, cleanup_env, make_env
from tests.helpers import DramatiqProcess, wait_until
from tests.integration.test_dead_letters import all_in, run, run_json, xq_count

pytestmark = pytest.mark.integration

LIMIT = 5
READS = 10


@pytest.fixture
def quorum_env(redis_server: str, rabbitmq_server: str, ns: str) -> Iterator[ServerEnv]:
    env = make_env("rabbitmq", redis_server, rabbitmq_server, ns)
    env["DR_TEST_QUORUM"] = str(LIMIT)
    yield env
    cleanup_env(env, redis_server)


def delivery_counts(env: ServerEnv) -> list[int]:
    """``x-delivery-count`` of each message of the ``.XQ`` (read once more, then handed back)."""
    connection = pika.BlockingConnection(pika.URLParameters(env.broker_url))
    channel = connection.channel()
    counts = []
    for method, properties, _body in channel.consume(f"{env.queue}.XQ", inactivity_timeout=0.5):
        if method is None:
            break
        counts.append(int((properties.headers or {}).get("x-delivery-count", 0)))
    connection.close()
    return counts


def test_ten_dead_letter_reads_on_quorum_queues_lose_nothing(
    quorum_env: ServerEnv, artifacts: Path, capsys: Any
) -> None:
    # Given an app on quorum queues (delivery limit 5) and six jobs dead-lettered
    app = build(quorum_env)
    store = quorum_env.store()
    app.switch(True)
    with DramatiqProcess("apps.dead", quorum_env, artifacts / "worker.log"):
        ids = [app.mailer.send(i).message_id for i in range(6)]
        wait_until(lambda: all_in(store, ids, "failed"), timeout=30, what="dead-lettered")
        wait_until(lambda: xq_count(quorum_env) == 6, timeout=10, what="6 in the XQ")
        parameters = pika.URLParameters(quorum_env.broker_url)
        assert is_quorum(parameters, quorum_env.queue) and is_quorum(parameters, f"{quorum_env.queue}.XQ")

        # When the dead-letter queue is read ten times, by dry-run replays and full reconciliations
        for i in range(READS):
            if i % 2 == 0:
                code, out, err = run(capsys, quorum_env, "dead", "replay", "--all", "--dry-run")
                assert code == 0, err
                assert out.splitlines()[-1] == "6 would replay", out
            else:
                dq = dead_queue(quorum_env.broker())
                try:
                    report = sync(store, dq, force=True)
                finally:
                    dq.close()
                assert report.in_broker[quorum_env.queue] == 6 and report.forgotten == 0

        # Then every dead letter is still in the broker, listed, and none spent a delivery
        assert xq_count(quorum_env) == 6
        assert sorted(x["id"] for x in run_json(capsys, quorum_env, "dead", "list")) == sorted(ids)
        assert delivery_counts(quorum_env) == [0] * 6
        assert xq_count(quorum_env) == 6  # that read handed them back: one delivery each, below the limit

        # And all replay and run once more
        app.switch(False)
        code, out, err = run(capsys, quorum_env, "dead", "replay", "--all", "--yes")
        assert code == 0 and "6 replayed" in out, (out, err)
        wait_until(lambda: all_in(store, ids, "done"), timeout=30, what="all done")
    assert xq_count(quorum_env) == 0
    assert app.runs("mailer") == {str(i): 2 for i in range(6)}
    record = store.get_job(ids[0])
    assert isinstance(record, dr.JobRecord) and record.status.value == "done"
