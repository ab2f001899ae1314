"""Secrets never leak, deep arguments never break recording: real ``dramatiq`` workers, both brokers.

A job whose ``password`` argument, and a DSN with a password, appear in its exception's message
and traceback: the values must be nowhere a person or a machine reads them (the record, the
CLI in text and JSON, the webhook body, the LogNotifier and the worker log), while the store's
dead letter keeps the message whole for replay.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dramatiq_reliable as dr
from dramatiq_reliable._snapshot import TOO_DEEP
from dramatiq_reliable.cli import main
from tests.apps.alerting import DSN, build
from tests.conftest import ServerEnv
from tests.helpers import DramatiqProcess, wait_until
from tests.webhook_server import Hook

pytestmark = pytest.mark.integration

PASSWORD = "hunter2-Tr0ub4dor"
DSN_PASSWORD = DSN.split(":")[2].split("@")[0]


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook([200], hang=None)
    yield server
    server.close()


def cli(capsys: pytest.CaptureFixture[str], env: ServerEnv, *args: str) -> str:
    capsys.readouterr()
    broker = f"{env.broker_url}?namespace={env['DR_TEST_NAMESPACE']}" if env.kind == "redis" else env.broker_url
    code = main(["--store", f"{env.store_url}?prefix={env.prefix}", "--broker", broker, *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def leaks(text: str) -> list[str]:
    return [value for value in (PASSWORD, DSN_PASSWORD) if value in text]


def test_a_password_in_an_error_is_masked_everywhere(
    server_env: ServerEnv, hook: Hook, artifacts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given workers with a webhook and a LogNotifier, and an actor whose error quotes its
    # password argument and a DSN with a password (retried once, then dead-lettered)
    env = ServerEnv(server_env)
    env.__dict__.update(server_env.__dict__)
    env.update(DR_TEST_WEBHOOK=hook.url, DR_TEST_LOG_NOTIFIER="1")
    app = build(env)
    store = server_env.store()
    workers = DramatiqProcess("apps.alerting", env, artifacts / "worker.log")
    with workers:
        # When the job fails both attempts
        job_id = app.login.send(4711, password=PASSWORD).message_id
        wait_until(lambda: getattr(store.get_job(job_id), "status", None) is dr.Status.FAILED, what="the failed job")
        [alert] = wait_until(hook.alerts, timeout=20, what="the webhook's alert")
        wait_until(lambda: "[failed] login" in workers.log(), timeout=20, what="the LogNotifier's line")
    log = workers.log()

    # Then the record's error, traceback and history are masked, and say so
    record = store.get_job(job_id)
    assert record is not None and record.error is not None and record.attempts == 2
    assert not leaks(json.dumps(record.to_json())), record.to_json()
    assert "[redacted]" in record.error.message and "postgresql://app:***@db.internal" in record.error.message
    assert "postgresql://app:***@db.internal" in record.error.traceback
    assert record.args == {"order_id": 4711, "password": "[redacted]"}

    # And so are the CLI's views of the job and of its dead letter, in text and JSON
    for argv in (
        ("jobs", "show", job_id),
        ("jobs", "show", job_id, "--json"),
        ("dead", "show", job_id),
        ("dead", "show", job_id, "--json"),
        ("dead", "list"),
        ("dead", "list", "--json"),
    ):
        out = cli(capsys, server_env, *argv)
        assert job_id in out and not leaks(out), (argv, out)
    shown = json.loads(cli(capsys, server_env, "dead", "show", job_id, "--json"))
    assert shown["message"]["kwargs"]["password"] == "[redacted]"

    # And the webhook's body, the LogNotifier's line, the DeadLetters line and Dramatiq's own
    # log lines (the message's arguments, the traceback)
    body = json.dumps(hook.requests[0]["body"])
    assert alert["job_id"] == job_id and not leaks(body), body
    assert not leaks(log), [line for line in log.splitlines() if leaks(line)]
    assert "Failed to process message login(4711, password=[redacted])" in log
    assert "dead-lettered to" in log and "refused by postgresql://app:***@db.internal" in log

    # And the store's dead letter keeps the message whole: a replay sends the real password
    letter = store.get_dead_letter(job_id)
    assert letter is not None and letter.message is not None
    assert letter.message["kwargs"]["password"] == PASSWORD


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def test_a_deeply_nested_argument_still_gets_a_record(server_env: ServerEnv, artifacts: Path) -> None:
    # Given workers, and a job whose argument is nested 600 levels deep
    app = build(server_env)
    store = server_env.store()
    workers = DramatiqProcess("apps.alerting", server_env, artifacts / "worker.log", processes=1, threads=2)
    with workers:
        # When it is sent and runs
        job_id = app.walk.send(nested(600), token=PASSWORD).message_id
        wait_until(lambda: getattr(store.get_job(job_id), "status", None) is dr.Status.DONE, what="the done job")
        log = workers.log()

    # Then it has a record whose snapshot degrades to a placeholder, secrets still redacted,
    # and the worker logged nothing about it
    record = store.get_job(job_id)
    assert record is not None and TOO_DEEP in json.dumps(record.args) and record.args["token"] == "[redacted]"
    assert [e.status for e in record.events] == ["queued", "running", "done"]
    assert "Traceback" not in log and len(log.splitlines()) < 30, log[-3000:]
