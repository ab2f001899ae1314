"""The control commands: jobs cancel / retry-now, pause, resume, paused. Output and exit codes."""

from __future__ import annotations

import json

import pytest

from dramatiq_reliable.cli import main

NOW = 1_763_700_000_000
CREATION = {"actor": "invoice", "queue": "default", "maxr": 3, "enq_ms": NOW, "args": "{}"}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def env(redis_store) -> list[str]:
    redis_store.apply(
        {
            "now_ms": NOW,
            "ops": [
                {"k": "enqueue", "id": "q1", "job": {**CREATION, "keys": {"order_id": "1"}}},
                {"k": "enqueue", "id": "q2", "job": {**CREATION, "keys": {"order_id": "2"}}},
                {"k": "enqueue", "id": "r1", "job": {**CREATION, "actor": "report"}},
                {"k": "start", "id": "d1", "job": {**CREATION, "att": 1}},
                {"k": "finish", "id": "d1", "job": {"outcome": "done", "att": 1}},
                {"k": "start", "id": "t1", "job": {**CREATION, "att": 1}},
                {"k": "finish", "id": "t1", "job": {"outcome": "retrying", "att": 1, "next_ms": NOW + 60_000}},
            ],
        }
    )
    return ["--store", redis_store.url]


def test_cancel_by_id_then_again_unknown_and_finished(capsys, env) -> None:
    code, out, err = run(capsys, *env, "jobs", "cancel", "q1", "--by", "alice")
    assert (code, err) == (0, "") and out == "q1: cancelled (was queued)\n"
    code, out, _ = run(capsys, *env, "jobs", "cancel", "q1")
    assert code == 0 and out == "q1: already cancelled; nothing changed\n"
    code, out, _ = run(capsys, *env, "jobs", "cancel", "nope", "--yes")
    assert code == 1 and "nope: no such job" in out
    code, out, _ = run(capsys, *env, "jobs", "cancel", "d1", "--json")
    assert code == 1 and json.loads(out) == [{"id": "d1", "state": "done", "was": None, "changed": False}]


def test_bulk_cancel_asks_unless_yes(capsys, env, monkeypatch) -> None:
    code, out, err = run(capsys, *env, "jobs", "cancel", "--actor", "invoice", "--status", "queued", "--yes")
    assert code == 0 and sorted(out.splitlines()) == ["q1: cancelled (was queued)", "q2: cancelled (was queued)"]
    code, out, err = run(capsys, *env, "jobs", "cancel", "--key", "order_id=1", "--yes")
    assert code == 1 and "No unfinished job matches; nothing changed." in err


def test_cancel_bad_usage(capsys, env) -> None:
    code, _, err = run(capsys, *env, "jobs", "cancel")
    assert code == 2 and err.startswith("error: give job ids")
    code, _, err = run(capsys, *env, "jobs", "cancel", "q1", "--actor", "invoice")
    assert code == 2 and "not both" in err
    code, _, err = run(capsys, *env, "jobs", "cancel", "--status", "done")
    assert code == 2
    code, _, err = run(capsys, *env, "jobs", "cancel", "--key", "order_id")
    assert code == 2 and "NAME=VALUE" in err


def test_retry_now(capsys, env) -> None:
    code, out, _ = run(capsys, *env, "jobs", "retry-now", "t1")
    assert code == 0 and out.startswith("t1: runs now")
    code, _, err = run(capsys, *env, "jobs", "retry-now", "d1")
    assert code == 1 and err == "error: job d1 is done, not retrying; nothing changed\n"
    code, _, err = run(capsys, *env, "jobs", "retry-now", "nope")
    assert code == 1 and "no job 'nope'" in err


def test_pause_resume_paused(capsys, env) -> None:
    code, out, _ = run(capsys, *env, "pause", "--actor", "invoice", "--by", "alice")
    assert code == 0 and out.startswith("actor invoice: paused (since ")
    code, out, _ = run(capsys, *env, "pause", "--actor", "invoice")
    assert code == 0 and "already paused since" in out and "nothing changed" in out
    code, out, _ = run(capsys, *env, "paused", "--json")
    data = json.loads(out)
    assert code == 0 and [(p["kind"], p["name"], p["by"]) for p in data] == [("actor", "invoice", "alice")]
    code, out, _ = run(capsys, *env, "resume", "--actor", "invoice")
    assert code == 0 and out.startswith("actor invoice: resumed")
    code, out, _ = run(capsys, *env, "resume", "--actor", "invoice")
    assert code == 0 and out == "actor invoice: not paused; nothing changed\n"
    code, out, _ = run(capsys, *env, "paused")
    assert out == "Nothing is paused.\n"
    code, _, err = run(capsys, *env, "pause", "--actor", "a", "--queue", "q")
    assert code == 2 and err == "error: give an actor or a queue (one of them)\n"


def test_unreachable_store(capsys) -> None:
    code, _, err = run(capsys, "--store", "redis://127.0.0.1:1/1", "pause", "--queue", "default")
    assert code == 3 and "unreachable" in err


def test_jobs_list_says_what_is_paused(capsys, env) -> None:
    run(capsys, *env, "pause", "--actor", "invoice", "--by", "alice")
    code, out, _ = run(capsys, *env, "jobs", "list", "--actor", "invoice")
    assert code == 0 and "actor invoice: paused since " in out and out.rstrip().endswith("by alice")
    code, out, _ = run(capsys, *env, "jobs", "list", "--actor", "report")
    assert "paused" not in out


def test_jobs_list_by_queue_and_since(capsys, env, redis_store) -> None:
    redis_store.apply({"now_ms": NOW, "ops": [{"k": "enqueue", "id": "m1", "job": {**CREATION, "queue": "mail"}}]})
    code, out, _ = run(capsys, *env, "jobs", "list", "--queue", "mail", "--json")
    assert code == 0 and [r["id"] for r in json.loads(out)] == ["m1"]
    code, out, _ = run(capsys, *env, "jobs", "list", "--since", "1h", "--json")
    assert code == 0 and json.loads(out) == []  # every job here was enqueued long ago
    code, _, err = run(capsys, *env, "jobs", "list", "--since", "yesterday")
    assert code == 2 and err.startswith("error: --since")
