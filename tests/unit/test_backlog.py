"""Backlog stats on StubBroker, and the ``queues`` command's usage and connection errors."""

from __future__ import annotations

import json
import time

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

import dramatiq_reliable as dr
from dramatiq_reliable.backlog import READY_OPTION, QueueStats, ready_since
from dramatiq_reliable.cli import main


def test_stub_backlog_counts_waiting_delayed_and_dead_messages() -> None:
    broker = StubBroker(fail_fast_default=False)

    @dramatiq.actor(broker=broker, queue_name="mail")
    def send(i: int) -> None: ...

    for i in range(3):
        send.send(i)
    send.send_with_options(args=(9,), delay=60_000)
    time.sleep(0.05)
    [stats] = dr.queue_stats(broker, ["mail"])
    assert (stats.depth, stats.delayed, stats.dead) == (3, 1, 0)
    assert stats.oldest_age is not None and 0 <= stats.oldest_age < 60
    [missing] = dr.queue_stats(broker, ["nope"])
    assert not missing.exists and missing.problems() == ["queue does not exist"]


def test_a_message_waits_since_it_became_ready() -> None:
    sent = {"message_timestamp": 1_000, "options": {}}
    retried = {"message_timestamp": 1_000, "options": {"requeue_timestamp": 5_000}}
    moved = {"message_timestamp": 1_000, "options": {"requeue_timestamp": 5_000, READY_OPTION: 9_000}}
    assert [ready_since(json.dumps(m)) for m in (sent, retried, moved)] == [1_000, 5_000, 9_000]
    assert ready_since(b"not json") is None and ready_since(None) is None


def test_limits_name_what_they_cross() -> None:
    stats = QueueStats(queue="q", depth=12, delayed=0, dead=0, oldest_age=700)
    assert stats.problems(max_depth=10, max_age=600) == ["depth 12 > 10", "oldest waiting 11m40s > 10m"]
    assert stats.problems(max_depth=12, max_age=700) == []
    assert QueueStats(queue="q", depth=None, oldest_age=None).problems(max_depth=0, max_age=1) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--broker", "redis://127.0.0.1:6379/0", "queues", "--check"],
        ["--broker", "redis://127.0.0.1:6379/0", "queues", "--max-age", "10x"],
        ["--broker", "redis://:x@/0", "queues", "-q", "a"],
        ["--broker", "kafka://127.0.0.1", "queues", "-q", "a"],
        ["queues", "-q", "a"],
        ["--broker", "amqp://guest:guest@127.0.0.1:1/%2F", "queues", "-q", "a", "--peek"],
        ["--broker", "redis://127.0.0.1:6379/0", "queues", "--app", "no_such_module_here"],
        ["--broker", "redis://127.0.0.1:6379/0", "queues", "--max-depth", "-1"],
    ],
)
def test_bad_usage_exits_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DRAMATIQ_RELIABLE_BROKER", raising=False)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ")


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "amqp://guest:guest@127.0.0.1:1/%2F?connection_attempts=1"])
def test_an_unreachable_broker_exits_3(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--broker", url, "queues", "-q", "a", "--json"]) == 3
    out, err = capsys.readouterr()
    assert out == "" and "unreachable" in err and len(err.strip().splitlines()) == 1
