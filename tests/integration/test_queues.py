"""``dramatiq-reliable queues`` on real Redis and RabbitMQ: backlog figures and ``--check`` exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dramatiq_reliable.cli import main
from tests.apps.watchdog import build
from tests.conftest import BROKER_DB, ServerEnv
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
    # Given a queue without workers: one message sent and dead-lettered, then 3 sent, one delayed
    app = build(server_env)
    app.busy.send(0)
    dead_letter_one(server_env, server_env.broker())
    for i in range(1, 4):
        app.busy.send(i)
    app.busy.send_with_options(args=(9,), delay=600_000)

    # Then the backlog shows them, and the oldest one's age (on RabbitMQ from the management
    # API, which refreshes its figures every few seconds)
    wait_until(lambda: stats(server_env, capsys)["dead"] == 1, timeout=10, what="the dead letter counted")

    def aged() -> dict[str, Any] | None:
        item = stats(server_env, capsys)
        return item if item["oldest_age_seconds"] is not None else None

    item = wait_until(aged, timeout=15, what="the oldest message's age")
    assert (item["exists"], item["depth"], item["delayed"], item["dead"], item["problems"]) == (True, 3, 1, 1, [])
    if server_env.kind == "redis":
        assert item["in_flight"] == 0
    else:
        assert item["consumers"] == 0

    # And --check exits 1 only when a limit is crossed, the age one included, on both brokers
    assert run(server_env, capsys, "-q", server_env.queue, "--check", "--max-depth", "3")[0] == 0
    code, out = run(server_env, capsys, "-q", server_env.queue, "--check", "--max-depth", "2")
    assert code == 1 and "depth 3 > 2" in out
    age = ("-q", server_env.queue, "--check", "--max-age")
    assert run(server_env, capsys, *age, "1h")[0] == 0
    wait_until(lambda: run(server_env, capsys, *age, "1s")[0] == 1, timeout=15, what="the age limit crossed")
    code, out = run(server_env, capsys, *age, "1s", "--json")
    assert code == 1 and json.loads(out)[0]["problems"][0].startswith("oldest waiting")

    # And nothing was taken from the queue by looking at it: on RabbitMQ no message was
    # delivered, so none is flagged redelivered
    assert stats(server_env, capsys)["depth"] == 3
    if server_env.kind == "rabbitmq":
        assert not any(redelivered(server_env))


def redelivered(env: ServerEnv) -> list[bool]:
    """Take the queue's messages (at the end of a test) and say which were delivered before."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(env.broker_url))
    channel = connection.channel()
    flags = []
    while True:
        method, _properties, _body = channel.basic_get(env.queue, auto_ack=True)
        if method is None:
            break
        flags.append(bool(method.redelivered))
    connection.close()
    return flags


def test_queues_are_found_on_both_brokers(server_env: ServerEnv, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a queue with one message
    app = build(server_env)
    app.busy.send(1)

    # When no queue is named, the broker lists them (Redis: SCAN; RabbitMQ: the management API)
    def listed() -> list[str]:
        code, out = run(server_env, capsys, "--json")
        assert code == 0
        return [q["queue"] for q in json.loads(out)]

    if server_env.kind == "redis":
        assert listed() == [server_env.queue]
    else:
        wait_until(lambda: server_env.queue in listed(), timeout=15, what="the queue listed by the API")

    # A queue that does not exist is reported, and fails a check
    code, out = run(server_env, capsys, "-q", f"{server_env.queue}-missing", "--check", "--max-depth", "9")
    assert code == 1 and "does not exist" in out
    # The table names the columns
    code, out = run(server_env, capsys, "-q", server_env.queue)
    assert code == 0 and out.split()[:4] == ["QUEUE", "DEPTH", "DELAYED", "DEAD"]


def test_check_without_any_queue_fails(redis_server: str, ns: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a Redis namespace with nothing in it
    broker = f"{redis_server}/{BROKER_DB}"
    # When the check runs, finding no queue is not a pass
    assert main(["--broker", broker, "queues", "--namespace", f"empty-{ns}", "--check", "--max-age", "10m"]) == 1
    captured = capsys.readouterr()
    assert "No queues found." in captured.out and "CHECK FAILED: no queues found" in captured.err
    # And without --check it is only said
    assert main(["--broker", broker, "queues", "--namespace", f"empty-{ns}"]) == 0


def test_app_queues_from_the_current_directory(
    server_env: ServerEnv, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an app module in the current directory, as `dramatiq app` finds it
    module = f"app_{server_env.prefix}"
    (tmp_path / f"{module}.py").write_text(
        "import dramatiq, os\n"
        "from dramatiq_reliable.brokers import broker_from_url\n"
        f"broker = broker_from_url({server_env.broker_url!r}"
        + (f", namespace={server_env['DR_TEST_NAMESPACE']!r})\n" if server_env.kind == "redis" else ")\n")
        + "dramatiq.set_broker(broker)\n"
        f"@dramatiq.actor(queue_name={server_env.queue!r})\n"
        "def idle():\n    pass\n"
    )
    monkeypatch.chdir(tmp_path)
    if server_env.kind == "rabbitmq":  # as a worker consuming it would
        server_env.broker().declare_queue(server_env.queue, ensure=True)

    # When its queue is idle (no message, so no key on Redis), the check still finds it and passes
    code = main(["queues", "--app", module, "--check", "--max-age", "10m", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert server_env.queue in [q["queue"] for q in json.loads(out)]
    # And an app that does not import is one line and exit 2
    assert main(["queues", "--app", "no_such_module_here", "--check", "--max-age", "10m"]) == 2
    assert "cannot import app module" in capsys.readouterr().err
