"""The CLI over the library: output, JSON shapes, exit codes, one-line errors."""

from __future__ import annotations

import json

import pytest

from dramatiq_reliable.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def store_url(redis_store) -> str:
    # A store with three jobs, written through the real ops
    now = 1_763_700_000_000
    creation = {"actor": "invoice", "queue": "default", "maxr": 3, "enq_ms": now, "args": '{"order_id":4711}'}
    redis_store.apply(
        {
            "now_ms": now,
            "ops": [
                {
                    "k": "start",
                    "id": "a1",
                    "job": {**creation, "keys": {"order_id": "4711"}, "att": 1, "worker": "h:1:T"},
                },
                {"k": "finish", "id": "a1", "job": {"outcome": "done", "att": 1, "detail": "ok"}},
                {"k": "start", "id": "b2", "job": {**creation, "keys": {"order_id": "4712"}, "att": 1}},
                {
                    "k": "finish",
                    "id": "b2",
                    "job": {"outcome": "failed", "att": 1, "err": {"type": "SMTPTimeout", "message": "timed out"}},
                },
                {"k": "enqueue", "id": "c3", "job": {**creation, "actor": "report"}},
            ],
        }
    )
    url = redis_store.url
    return f"{url}" if "prefix" not in url else url


def test_jobs_show_human_and_json(capsys, redis_store, store_url) -> None:
    env = ["--store", store_url]
    code, out, err = run(capsys, *env, "jobs", "show", "b2")
    assert code == 0 and err == ""
    assert "failed" in out and "SMTPTimeout: timed out" in out and "order_id=4712" in out
    code, out, _ = run(capsys, *env, "jobs", "show", "a1", "--json")
    data = json.loads(out)
    assert code == 0
    assert set(data) >= {
        "id", "actor", "queue", "status", "attempts", "max_retries", "enqueued_at", "started_at", "finished_at",
        "next_retry_at", "worker", "keys", "args", "error", "duplicate_of", "stack", "events",
    }  # fmt: skip
    assert data["status"] == "done" and data["keys"] == {"order_id": "4711"} and data["args"] == {"order_id": 4711}
    assert data["events"][0] == {"at": data["events"][0]["at"], "status": "running", "detail": "attempt 1 on h:1:T"}


def test_jobs_list_filters_and_json(capsys, redis_store, store_url) -> None:
    env = ["--store", store_url]
    code, out, _ = run(capsys, *env, "jobs", "list", "--key", "order_id=4711", "--json")
    assert code == 0 and [j["id"] for j in json.loads(out)] == ["a1"]
    code, out, _ = run(capsys, *env, "jobs", "list", "--status", "failed")
    assert code == 0 and "b2" in out and "a1" not in out and "SMTPTimeout" in out
    code, out, _ = run(capsys, *env, "jobs", "list", "--actor", "report", "--json")
    assert [j["id"] for j in json.loads(out)] == ["c3"]
    code, out, _ = run(capsys, *env, "jobs", "list", "--actor", "nobody")
    assert code == 0 and "No jobs match." in out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["jobs", "show", "nope"], 1, "no job 'nope'"),
        (["jobs", "list", "--key", "order_id"], 2, "--key takes NAME=VALUE"),
        (["jobs", "list", "--status", "lost"], 2, "Invalid value for '--status'"),
        (["jobs", "list", "--limit", "0"], 2, "Invalid value for '--limit'"),
        (["jobs", "list", "--cursor", "garbage"], 2, "malformed cursor"),
        (["jobs", "frobnicate"], 2, "No such command"),
    ],
)
def test_bad_input_is_one_line_and_the_right_exit_code(capsys, store_url, argv, code, message) -> None:
    got, _out, err = run(capsys, "--store", store_url, *argv)
    assert got == code
    assert message in err
    assert err.startswith("error: ") and len(err.strip().splitlines()) <= 2  # the message, maybe a --help hint


@pytest.mark.parametrize(
    ("store", "code", "message"),
    [
        ("foo://x", 2, "unsupported store URL"),
        ("redis://127.0.0.1:notaport/1", 2, "malformed Redis URL"),
        ("redis://127.0.0.1:1/1", 3, "unreachable"),
    ],
)
def test_bad_or_unreachable_store(capsys, store, code, message) -> None:
    got, out, err = run(capsys, "--store", store, "jobs", "list")
    assert got == code and message in err and out == ""
    assert len(err.strip().splitlines()) == 1


def test_store_from_the_environment(capsys, monkeypatch, store_url) -> None:
    monkeypatch.setenv("DRAMATIQ_RELIABLE_STORE", store_url)
    code, out, _ = run(capsys, "jobs", "show", "a1")
    assert code == 0 and "invoice" in out


def test_demo_runs_without_a_server(capsys) -> None:
    code, out, _ = run(capsys, "demo")
    assert code == 0
    assert "Every job reached the status it should" in out
    assert "dead-lettered after 2 attempts" in out


def test_queues_and_metrics_take_the_namespace_of_the_broker_url(capsys, redis_server, ns) -> None:
    import redis

    # Given one message waiting in a queue of a RedisBroker namespaced by this test
    client = redis.Redis.from_url(f"{redis_server}/14")
    prefix = f"dramatiq-{ns}:"
    client.rpush(prefix + "q", "m1")
    client.hset(prefix + "q.msgs", "m1", "{}")
    url = f"{redis_server}/14?namespace=dramatiq-{ns}"
    try:
        # When queues and the exporter read it through a URL that carries the namespace
        code, out, err = run(capsys, "--broker", url, "queues", "-q", "q", "--json")
        assert code == 0, err
        assert json.loads(out)[0]["depth"] == 1
        code, out, err = run(capsys, "--store", "memory://", "--broker", url, "metrics", "--once", "-Q", "q")
        assert code == 0, err
        assert 'dramatiq_reliable_queue_depth{queue="q"} 1.0' in out
        # And --namespace still wins over it
        code, out, _ = run(capsys, "--broker", url, "queues", "-q", "q", "--namespace", "elsewhere", "--json")
        assert code == 0 and json.loads(out)[0]["exists"] is False
    finally:
        client.delete(prefix + "q", prefix + "q.msgs")


def test_the_bare_command_prints_its_help_and_exits_2(capsys) -> None:
    # Exit 2: no command ran, so a script that calls it by mistake does not take it for success
    code, out, err = run(capsys)
    assert code == 2 and err == ""
    assert out.startswith("Usage: dramatiq-reliable") and "Commands:" in out and "error" not in out


def test_a_global_option_after_the_subcommand_says_where_it_goes(capsys) -> None:
    code, out, err = run(capsys, "jobs", "list", "--store", "redis://127.0.0.1:6379/1")
    assert code == 2 and out == ""
    assert err.strip() == (
        "error: --store is a global option: put it before the subcommand (dramatiq-reliable --store URL jobs list ...)"
    )
    code, _, err = run(capsys, "dead", "show", "--broker=amqp://x", "ID")
    assert code == 2 and "--broker is a global option" in err
    code, _, err = run(capsys, "jobs", "list", "--bogus")
    assert code == 2 and "No such option '--bogus'" in err
