"""``dramatiq-reliable queues`` on real Redis and RabbitMQ: backlog figures and ``--check`` exit codes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dramatiq_reliable.cli import main
from tests.apps.watchdog import build
from tests.conftest import ServerEnv
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def run(env: ServerEnv, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["--broker", env.broker_url, "queues", "--namespace", env["DR_TEST_NAMESPACE"], *args])
    return code, capsys.readouterr().out


def stats(env: ServerEnv, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out = run(env, capsys, "-q", env.queue, "--json", *args)
    assert code == 0
    [item] = json.loads(out)
    return item  # type: ignore[no-any-return]


def dead_letter_one(env: ServerEnv, broker: Any) -> None:
    """Take one message like a worker and nack it: it goes to the dead-letter queue."""
    consumer = broker.consume(env.queue, prefetch=1, timeout=200)
    message = wait_until(lambda: next(consumer), timeout=10, what="a message")
    consumer.nack(message)
    if env.kind == "rabbitmq":
        next(consumer)  # the nack is sent when the consumer pumps its connection
    consumer.close()  # (RabbitMQ puts back what it delivered meanwhile)


def test_queues_shows_the_backlog_and_check_exits_1_past_a_limit(
    server_env: ServerEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a queue without workers: 4 messages sent (one then dead-lettered), one delayed
    app = build(server_env)
    for i in range(4):
        app.busy.send(i)
    app.busy.send_with_options(args=(9,), delay=600_000)
    dead_letter_one(server_env, server_env.broker())

    # Then the backlog shows them
    wait_until(lambda: stats(server_env, capsys)["dead"] == 1, timeout=10, what="the dead letter counted")
    item = stats(server_env, capsys)
    assert (item["exists"], item["depth"], item["delayed"], item["dead"], item["problems"]) == (True, 3, 1, 1, [])
    if server_env.kind == "redis":
        assert item["in_flight"] == 0 and item["oldest_age_seconds"] is not None
    else:
        # AMQP cannot read the age without taking the message; --peek does, and puts it back
        assert item["consumers"] == 0 and item["oldest_age_seconds"] is None
        peeked = stats(server_env, capsys, "--peek")
        assert peeked["oldest_age_seconds"] is not None and peeked["depth"] == 3

    # And --check exits 1 only when a limit is crossed
    assert run(server_env, capsys, "-q", server_env.queue, "--check", "--max-depth", "3")[0] == 0
    code, out = run(server_env, capsys, "-q", server_env.queue, "--check", "--max-depth", "2")
    assert code == 1 and "depth 3 > 2" in out
    peek = ("--peek",) if server_env.kind == "rabbitmq" else ()
    age = ("-q", server_env.queue, "--check", "--max-age")
    assert run(server_env, capsys, *age, "1h", *peek)[0] == 0
    wait_until(lambda: run(server_env, capsys, *age, "1s", *peek)[0] == 1, timeout=15, what="the age limit crossed")
    code, out = run(server_env, capsys, *age, "1s", *peek, "--json")
    assert code == 1 and json.loads(out)[0]["problems"][0].startswith("oldest waiting")

    # And nothing was taken from the queue by looking at it
    assert stats(server_env, capsys)["depth"] == 3


def test_queues_are_found_on_redis_and_named_on_rabbitmq(
    server_env: ServerEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    app = build(server_env)
    app.busy.send(1)
    if server_env.kind == "redis":
        # Given no queue named, the namespace is scanned
        code, out = run(server_env, capsys, "--json")
        assert code == 0 and [q["queue"] for q in json.loads(out)] == [server_env.queue]
    else:
        # RabbitMQ cannot list queues over AMQP
        assert run(server_env, capsys)[0] == 2
        # A queue that does not exist is reported, and fails a check
        code, out = run(server_env, capsys, "-q", f"{server_env.queue}-missing", "--check", "--max-depth", "9")
        assert code == 1 and "does not exist" in out
    # The table names the columns
    code, out = run(server_env, capsys, "-q", server_env.queue)
    assert code == 0 and out.split()[:4] == ["QUEUE", "DEPTH", "DELAYED", "DEAD"]
