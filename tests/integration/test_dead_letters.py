"""DeadLetters, replay and purge with real ``dramatiq`` worker processes on real Redis and RabbitMQ.

The ``dead`` commands run in-process through ``cli.main`` against the servers, as an operator
would run them; ``DR_TEST_DEAD_N`` sizes the bulk replay (default 1,000).
"""

from __future__ import annotations

import io
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

import dramatiq_reliable as dr
from dramatiq_reliable.brokers import broker_from_url, dead_queue
from dramatiq_reliable.cli import main
from tests.apps.dead import build
from tests.conftest import ServerEnv
from tests.helpers import DramatiqProcess, wait_until
from tests.proxy import TcpProxy

pytestmark = pytest.mark.integration

#: Dead letters replayed at once in the bulk test.
BULK = int(os.getenv("DR_TEST_DEAD_N", "1000"))


def with_dead(env: ServerEnv, on: bool) -> ServerEnv:
    copy = ServerEnv(env)
    copy.__dict__.update(env.__dict__)
    copy["DR_TEST_DEAD"] = "on" if on else "off"
    return copy


def broker_url(env: ServerEnv, url: str | None = None) -> str:
    url = url or env.broker_url
    return f"{url}?namespace={env['DR_TEST_NAMESPACE']}" if env.kind == "redis" else url


def run(capsys: pytest.CaptureFixture[str], env: ServerEnv, *args: str, broker: str | None = None) -> Any:
    """``dramatiq-reliable --store … --broker … ARGS``: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(["--store", f"{env.store_url}?prefix={env.prefix}", "--broker", broker or broker_url(env), *args])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], env: ServerEnv, *args: str) -> Any:
    code, out, err = run(capsys, env, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def xq_count(env: ServerEnv) -> int:
    dq = dead_queue(env.broker())
    try:
        return dq.counts([env.queue])[env.queue]
    finally:
        dq.close()


def statuses(store: dr.Store, ids: list[str]) -> list[str | None]:
    return [getattr(store.get_job(i), "status", None) for i in ids]


def all_in(store: dr.Store, ids: list[str], status: str) -> bool:
    return all(s == status for s in statuses(store, ids))


def test_capture_list_show_stats_and_replay(server_env: ServerEnv, artifacts: Path, capsys: Any) -> None:
    app = build(server_env)
    store = server_env.store()
    app.switch(True)
    with DramatiqProcess("apps.dead", server_env, artifacts / "worker.log"):
        # Given jobs that die while the mail server is down: retried once, or a `throws` error
        fragile = [app.fragile.send(i).message_id for i in range(3)]
        mailer = [app.mailer.send(i).message_id for i in range(2)]
        ids = fragile + mailer
        wait_until(lambda: all_in(store, ids, "failed"), timeout=30, what="dead-lettered")
        wait_until(lambda: xq_count(server_env) == 5, timeout=10, what="5 in the XQ")

        # Then each is listed with its final error (the broker's copy holds only the first)
        listed = run_json(capsys, server_env, "dead", "list")
        assert sorted(x["id"] for x in listed) == sorted(ids)
        by_id = {x["id"]: x for x in listed}
        for job_id in fragile:
            x = by_id[job_id]
            assert x["status"] == "failed" and x["attempts"] == 2 and x["recorded"] is True
            assert x["error"]["type"] == "SMTPTimeout" and "(attempt 2)" in x["error"]["message"]
            assert "SMTPTimeout" in x["error"]["traceback"]
            assert x["message"]["message_id"] == job_id and x["message"]["actor_name"] == "fragile"
            assert x["dead_at"].endswith("Z") and x["queue"] == server_env.queue
        assert by_id[mailer[0]]["attempts"] == 1
        assert len(run_json(capsys, server_env, "dead", "list", "--actor", "mailer")) == 2
        assert len(run_json(capsys, server_env, "dead", "list", "--error", "attempt 2")) == 3
        assert len(run_json(capsys, server_env, "dead", "list", "--since", "1h", "--queue", server_env.queue)) == 5
        assert run_json(capsys, server_env, "dead", "list", "--queue", "nothing-here") == []

        code, out, _ = run(capsys, server_env, "dead", "show", fragile[0])
        assert code == 0 and "SMTPTimeout" in out and "attempt 2" in out and f"dead replay {fragile[0]}" in out
        assert run_json(capsys, server_env, "dead", "show", fragile[0])["message"]["args"] == [0]

        stats = run_json(capsys, server_env, "dead", "stats")
        kinds = {(k["actor"], k["error_type"]): k["count"] for k in stats["by_actor_error"]}
        assert kinds == {("fragile", "SMTPTimeout"): 3, ("mailer", "SMTPTimeout"): 2}
        assert stats["in_broker"][server_env.queue] == 5 and stats["by_queue"][server_env.queue] == 5
        code, out, _ = run(capsys, server_env, "dead", "stats")
        assert code == 0 and "3  fragile  died of SMTPTimeout" in out

        # When the cause is fixed and one, then all the others, are replayed
        app.switch(False)
        code, out, err = run(capsys, server_env, "dead", "replay", fragile[0])
        assert code == 0, err
        assert out.startswith("replayed") and fragile[0] in out
        code, out, err = run(capsys, server_env, "dead", "replay", "--all", "--yes")
        assert code == 0, err
        assert "4 replayed" in out

        # Then every job is done, with its id and its history, and the XQ is empty
        wait_until(lambda: all_in(store, ids, "done"), timeout=30, what="all done")
        assert xq_count(server_env) == 0
        assert run_json(capsys, server_env, "dead", "list") == []
        record = store.get_job(fragile[1])
        assert record is not None and record.attempts == 1
        statuses_seen = [e.status for e in record.events]
        assert statuses_seen[-4:] == ["failed", "queued", "running", "done"]
        assert record.events[-3].detail.startswith("replayed from the dead-letter queue")

        # And a second replay of the same ids enqueues nothing
        code, out, _ = run(capsys, server_env, "dead", "replay", *ids, "--yes")
        assert code == 1 and out.splitlines()[-1] == "5 not dead"
        marker = app.ok.send(1).message_id  # jobs sent after it would have run before it finishes
        wait_until(lambda: all_in(store, [marker], "done"), timeout=30)
    assert app.runs("fragile") == {"0": 3, "1": 3, "2": 3}
    assert app.runs("mailer") == {"0": 2, "1": 2}


def test_replay_a_thousand_at_once(server_env: ServerEnv, artifacts: Path, capsys: Any) -> None:
    app = build(server_env)
    store = server_env.store()
    app.switch(True)
    with DramatiqProcess("apps.dead", server_env, artifacts / "worker.log"):
        ids = [app.mailer.send(i).message_id for i in range(BULK)]
        wait_until(lambda: xq_count(server_env) == BULK, timeout=60, what=f"{BULK} in the XQ")
        wait_until(lambda: store.dead_letter_stats().total == BULK, timeout=30, what="all captured")
        app.switch(False)

        started = time.perf_counter()
        results = run_json(capsys, server_env, "dead", "replay", "--all", "--yes")
        elapsed = time.perf_counter() - started
        assert len(results) == BULK and all(r["outcome"] == "replayed" for r in results)
        (artifacts / "replay_rate.txt").write_text(
            f"{server_env.kind}: {BULK} replayed in {elapsed:.2f} s ({BULK / elapsed:.0f}/s), busy machine\n"
        )

        wait_until(lambda: store.count_jobs(["done"])["done"] == BULK, timeout=120, what="all done")
    assert xq_count(server_env) == 0
    assert store.dead_letter_stats().total == 0
    assert set(statuses(store, ids[:: max(BULK // 50, 1)])) == {"done"}
    runs = app.runs("mailer")
    assert len(runs) == BULK and set(runs.values()) == {2}


def test_purge_leaves_live_and_in_flight_messages(server_env: ServerEnv, artifacts: Path, capsys: Any) -> None:
    app = build(server_env)
    store = server_env.store()
    app.switch(True)
    # One worker thread, so live messages wait in the queue behind one in flight
    with DramatiqProcess("apps.dead", server_env, artifacts / "worker.log", processes=1, threads=1):
        dead = [app.mailer.send(i).message_id for i in range(3)]
        wait_until(lambda: xq_count(server_env) == 3 and all_in(store, dead, "failed"), timeout=30)
        in_flight = app.slow.send(4, "in-flight").message_id
        wait_until(lambda: all_in(store, [in_flight], "running"), timeout=30, what="in flight")
        live = [app.ok.send(i).message_id for i in range(3)]

        # When every dead letter is purged
        code, out, err = run(capsys, server_env, "dead", "purge", "--all", "--yes")
        assert code == 0, err
        assert "3 purged" in out
        assert xq_count(server_env) == 0
        assert statuses(store, [in_flight]) == ["running"]

        # Then the message in flight and the live ones are still processed
        wait_until(lambda: all_in(store, [in_flight, *live], "done"), timeout=60, what="live jobs done")
    assert app.runs("slow") == {"in-flight": 1}
    assert app.runs("ok") == {"0": 1, "1": 1, "2": 1}
    assert not store.dead_letters().items
    record = store.get_job(dead[0])
    assert record is not None and record.status.value == "failed"
    assert record.events[-1].detail.startswith("purged from the dead-letter queue")


def test_dead_lettered_without_the_middleware_is_listed_and_replayable(
    server_env: ServerEnv, artifacts: Path, capsys: Any
) -> None:
    env = with_dead(server_env, on=False)
    app = build(env)
    store = server_env.store()
    app.switch(True)
    with DramatiqProcess("apps.dead", env, artifacts / "worker.log"):
        ids = [app.fragile.send(i).message_id for i in range(2)]
        wait_until(lambda: all_in(store, ids, "failed") and xq_count(server_env) == 2, timeout=30)
        assert not store.dead_letters().items  # nothing captured

        listed = run_json(capsys, server_env, "dead", "list", "--queue", server_env.queue)
        assert sorted(x["id"] for x in listed) == sorted(ids)
        for x in listed:
            assert x["recorded"] is False and x["malformed"] is None
            # The broker's copy carries the error of the attempt before the last
            assert x["error"]["type"] == "SMTPTimeout" and "(attempt 1)" in x["error"]["message"]
            assert x["attempts"] == 2  # JobState's record
            died = datetime.fromisoformat(x["dead_at"].replace("Z", "+00:00"))
            assert abs((datetime.now(timezone.utc) - died).total_seconds()) < 300  # the broker's time of death

        app.switch(False)
        code, out, err = run(capsys, server_env, "dead", "replay", "--all", "--yes")
        assert code == 0 and "2 replayed" in out, err
        wait_until(lambda: all_in(store, ids, "done"), timeout=30)
    assert xq_count(server_env) == 0
    assert app.runs("fragile") == {"0": 3, "1": 3}


def _plant(env: ServerEnv, app: Any, bodies: list[bytes]) -> None:
    """Put raw entries in the queue's dead-letter queue, as a broker would have dead-lettered them."""
    if env.kind == "redis":
        client = redis.Redis.from_url(env.broker_url)
        xq = f"{env['DR_TEST_NAMESPACE']}:{env.queue}.XQ"
        for i, body in enumerate(bodies):
            client.zadd(xq, {f"planted-{i}": time.time() * 1000})
            client.hset(xq + ".msgs", f"planted-{i}", body)
        client.zadd(xq, {"no-payload": time.time() * 1000})  # a member without its payload
        return
    import pika

    app.broker.declare_queue(env.queue, ensure=True)  # as the app's broker does
    connection = pika.BlockingConnection(pika.URLParameters(env.broker_url))
    channel = connection.channel()
    for body in [*bodies, b"\xff\xfe not utf-8"]:
        channel.basic_publish("", f"{env.queue}.XQ", body, pika.BasicProperties(delivery_mode=2))
    connection.close()


def test_malformed_entries_are_listed_and_purgeable(server_env: ServerEnv, capsys: Any, monkeypatch: Any) -> None:
    # Given a dead-letter queue holding a good entry, garbage, and (Redis) an entry without payload
    app = build(server_env)
    app.store.journal.flush()  # the app's queue is known to the store
    good = app.ok.message(7)
    live = app.broker.enqueue(app.ok.message(8))  # and a live message in the same queue
    _plant(server_env, app, [good.encode(), b"{not json"])

    # Then the listing shows them all; the broken ones as malformed
    listed = run_json(capsys, server_env, "dead", "list")
    assert len(listed) == 3
    bad = [x for x in listed if x["malformed"]]
    (ok,) = [x for x in listed if not x["malformed"]]
    assert len(bad) == 2 and all(x["id"].startswith(f"malformed:{server_env.queue}:") for x in bad)
    assert ok["id"] == good.message_id and ok["recorded"] is False
    stats = run_json(capsys, server_env, "dead", "stats")
    assert {(k["actor"], k["error_type"]): k["count"] for k in stats["by_actor_error"]} == {
        ("?", "malformed"): 2,
        ("ok", "?"): 1,
    }

    # A bulk purge asks first; "no" (or no answer) changes nothing
    for answer in ("n\n", ""):
        monkeypatch.setattr("sys.stdin", io.StringIO(answer))
        code, out, err = run(capsys, server_env, "dead", "purge", "--all")
        assert code == 1 and "Purge 3 dead letters?" in err and "Aborted." in err and out == ""
    assert xq_count(server_env) == 3

    # A malformed entry cannot be replayed; it can be purged
    code, out, _ = run(capsys, server_env, "dead", "replay", bad[0]["id"])
    assert code == 1 and out.startswith("malformed")
    code, out, err = run(capsys, server_env, "dead", "purge", *[x["id"] for x in bad], "--yes")
    assert code == 0 and "2 purged" in out, err
    assert xq_count(server_env) == 1

    # The good one is replayed next to the live message, which is untouched
    code, out, err = run(capsys, server_env, "dead", "replay", good.message_id)
    assert code == 0, err
    assert xq_count(server_env) == 0
    assert sorted(_live_ids(server_env)) == sorted([good.message_id, live.message_id])


def _live_ids(env: ServerEnv) -> list[str]:
    """The message ids waiting in the live queue (read without consuming)."""
    from dramatiq import Message

    if env.kind == "redis":
        client = redis.Redis.from_url(env.broker_url)
        key = f"{env['DR_TEST_NAMESPACE']}:{env.queue}"
        return [Message.decode(client.hget(key + ".msgs", x)).message_id for x in client.lrange(key, 0, -1)]
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(env.broker_url))
    channel = connection.channel()
    out = []
    while True:
        method, _, body = channel.basic_get(env.queue, auto_ack=False)
        if method is None:
            break
        out.append(Message.decode(body).message_id)
    connection.close()  # puts them back
    return out


class CuttingStore(dr.RedisStore):
    """A store that cuts the tool's broker connection right after a replay's first step."""

    proxy: TcpProxy

    def apply(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        results = super().apply(batch)
        if any(op["k"] == "replay" for op in batch["ops"]):
            self.proxy.cut()
        return results


def test_replay_while_the_broker_is_briefly_unreachable(server_env: ServerEnv, artifacts: Path, capsys: Any) -> None:
    app = build(server_env)
    store = server_env.store()
    host_port = urlsplit(server_env.broker_url).port or 0
    proxy = TcpProxy("127.0.0.1", host_port)
    via_proxy = server_env.broker_url.replace(f":{host_port}/", f":{proxy.port}/")
    app.switch(True)
    try:
        with DramatiqProcess("apps.dead", server_env, artifacts / "worker.log"):
            ids = [app.mailer.send(i).message_id for i in range(3)]
            wait_until(lambda: xq_count(server_env) == 3 and all_in(store, ids, "failed"), timeout=30)
            app.switch(False)

            # Down before anything starts: one line, exit 3, or one line per id
            proxy.cut()
            code, out, err = run(
                capsys, server_env, "dead", "replay", "--all", "--yes", broker=broker_url(server_env, via_proxy)
            )
            assert (
                code == 3
                and out == ""
                and err.startswith("error: broker ")
                and " unreachable: " in err
                and err.count("\n") == 1
            )
            code, out, _ = run(
                capsys, server_env, "dead", "replay", *ids, "--yes", broker=broker_url(server_env, via_proxy)
            )
            assert code == 3 and out.splitlines()[-1] == "3 unreachable"
            assert xq_count(server_env) == 3 and all_in(store, ids, "failed")

            # Down in the middle of a replay (after the records were requeued, before the move)
            proxy.restore()
            cutting = CuttingStore(server_env.store_url, prefix=server_env.prefix)
            cutting.proxy = proxy
            tool = broker_from_url(broker_url(server_env, via_proxy))
            results = dr.replay(cutting, tool, ids)
            assert [r.outcome for r in results] == ["unreachable"] * 3
            tool.close()

            # Then nothing was lost: still dead letters, records back to failed
            assert xq_count(server_env) == 3
            assert all_in(store, ids, "failed")
            assert [x.id for x in store.get_dead_letters(ids) if x] == ids
            assert store.get_job(ids[0]).events[-1].detail.startswith("not replayed: ")  # type: ignore[union-attr]

            # And once the broker answers again, a replay does it
            proxy.restore()
            tool = broker_from_url(broker_url(server_env, via_proxy))
            assert [r.outcome for r in dr.replay(store, tool, ids)] == ["replayed"] * 3
            tool.close()
            wait_until(lambda: all_in(store, ids, "done"), timeout=30)
        assert xq_count(server_env) == 0
        assert app.runs("mailer") == {"0": 2, "1": 2, "2": 2}
    finally:
        proxy.close()


def test_bad_input_gets_one_line(server_env: ServerEnv, capsys: Any) -> None:
    build(server_env).store.journal.flush()
    cases = [
        (("dead", "replay"), 2, "give the ids of dead letters, or --all"),
        (("dead", "replay", "x", "--all"), 2, "not both"),
        (("dead", "purge", "--all", "--older-than", "soon"), 2, "--older-than: not a duration"),
        (("dead", "list", "--since", "yesterday"), 2, "--since: not a duration"),
        (("dead", "show", "no-such-id"), 1, "no dead letter 'no-such-id'"),
    ]
    for args, expected, text in cases:
        code, out, err = run(capsys, server_env, *args)
        assert (code, out) == (expected, ""), (args, code, out, err)
        assert err.startswith("error: ") and text in err and err.count("\n") == 1, (args, err)

    code, out, _ = run(capsys, server_env, "dead", "replay", "no-such-id")
    assert code == 1 and out.startswith("not found")

    unreachable = "redis://127.0.0.1:1/0" if server_env.kind == "redis" else "amqp://guest:guest@127.0.0.1:1/%2F"
    code, out, err = run(capsys, server_env, "dead", "list", broker=unreachable)
    assert (
        code == 3
        and out == ""
        and err.startswith("error: broker ")
        and " unreachable: " in err
        and err.count("\n") == 1
    )
    code, out, err = run(capsys, server_env, "dead", "list", broker="ftp://nowhere")
    assert code == 2 and "unsupported broker URL" in err and err.count("\n") == 1


def _xq_ids(env: ServerEnv) -> list[str]:
    """The message ids in the dead-letter queue, in order (read without consuming)."""
    from dramatiq import Message

    if env.kind == "redis":
        client = redis.Redis.from_url(env.broker_url)
        xq = f"{env['DR_TEST_NAMESPACE']}:{env.queue}.XQ"
        return [Message.decode(client.hget(xq + ".msgs", x)).message_id for x in client.zrange(xq, 0, -1)]
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(env.broker_url))
    channel = connection.channel()
    out = []
    while True:
        method, _, body = channel.basic_get(f"{env.queue}.XQ", auto_ack=False)
        if method is None:
            break
        out.append(Message.decode(body).message_id)
    connection.close()
    wait_until(lambda: xq_count(env) == len(out), timeout=10, what="put back")
    return out


def test_entries_anywhere_in_a_long_queue(server_env: ServerEnv, capsys: Any, monkeypatch: Any) -> None:
    from dramatiq_reliable.dead import xq_rabbitmq

    # Read RabbitMQ in windows of 7 messages, so 40 entries span six channels
    monkeypatch.setattr(xq_rabbitmq, "WINDOW", 7)
    app = build(server_env)
    app.store.journal.flush()
    messages = [app.ok.message(i) for i in range(40)]
    if server_env.kind == "redis":
        client = redis.Redis.from_url(server_env.broker_url)
        xq = f"{server_env['DR_TEST_NAMESPACE']}:{server_env.queue}.XQ"
        for i, m in enumerate(messages):
            client.zadd(xq, {f"x{i}": 1_700_000_000_000 + i})
            client.hset(xq + ".msgs", f"x{i}", m.encode())
    else:
        import pika

        app.broker.declare_queue(server_env.queue, ensure=True)
        connection = pika.BlockingConnection(pika.URLParameters(server_env.broker_url))
        channel = connection.channel()
        for m in messages:
            channel.basic_publish("", f"{server_env.queue}.XQ", m.encode(), pika.BasicProperties(delivery_mode=2))
        connection.close()
    order = [m.message_id for m in messages]

    listed = run_json(capsys, server_env, "dead", "list", "--limit", "100")
    assert sorted(x["id"] for x in listed) == sorted(order)

    targets = [order[i] for i in (3, 15, 22, 39)]
    code, out, err = run(capsys, server_env, "dead", "replay", *targets, "--yes")
    assert code == 0 and out.splitlines()[-1] == "4 replayed", err
    doomed = [order[i] for i in (30, 31)]
    code, out, err = run(capsys, server_env, "dead", "purge", *doomed, "--yes")
    assert code == 0 and out.splitlines()[-1] == "2 purged", err

    # The others are still there, in their order; the replayed ones wait in the live queue
    assert _xq_ids(server_env) == [i for i in order if i not in targets and i not in doomed]
    assert sorted(_live_ids(server_env)) == sorted(targets)
    assert len(run_json(capsys, server_env, "dead", "list", "--limit", "100")) == 34


def test_rabbitmq_connection_lost_between_two_windows(server_env: ServerEnv, capsys: Any, monkeypatch: Any) -> None:
    if server_env.kind != "rabbitmq":
        pytest.skip("a Redis replay is one script: it has no second batch to lose")
    import pika
    from pika.adapters.blocking_connection import BlockingChannel

    from dramatiq_reliable.dead import xq_rabbitmq

    # Given 9 dead letters read in windows of 3 (three channels, three transactions)
    monkeypatch.setattr(xq_rabbitmq, "WINDOW", 3)
    app = build(server_env)
    app.store.journal.flush()
    app.broker.declare_queue(server_env.queue, ensure=True)
    messages = [app.ok.message(i) for i in range(9)]
    connection = pika.BlockingConnection(pika.URLParameters(server_env.broker_url))
    channel = connection.channel()
    for m in messages:
        channel.basic_publish("", f"{server_env.queue}.XQ", m.encode(), pika.BasicProperties(delivery_mode=2))
    connection.close()
    ids = [m.message_id for m in messages]
    assert len(run_json(capsys, server_env, "dead", "list")) == 9

    # When the connection is lost right after the first transaction was committed
    port = urlsplit(server_env.broker_url).port or 5672
    proxy = TcpProxy("127.0.0.1", port)
    commit = BlockingChannel.tx_commit

    def commit_then_cut(self: Any) -> Any:
        result = commit(self)
        proxy.cut()
        return result

    try:
        monkeypatch.setattr(BlockingChannel, "tx_commit", commit_then_cut)
        tool = broker_from_url(server_env.broker_url.replace(f":{port}/", f":{proxy.port}/"))
        results = dr.replay(app.store, tool, ids)
        monkeypatch.setattr(BlockingChannel, "tx_commit", commit)

        # Then the first window is replayed, the others stay dead letters: nothing lost, nothing twice
        assert [r.outcome for r in results] == ["replayed"] * 3 + ["unreachable"] * 6
        wait_until(lambda: xq_count(server_env) == 6, timeout=10, what="the others put back")
        assert sorted(_live_ids(server_env)) == sorted(ids[:3])
        assert sorted(x.id for x in app.store.dead_letters()) == sorted(ids[3:])

        # And once the broker answers again, the rest is replayed
        proxy.restore()
        tool = broker_from_url(server_env.broker_url.replace(f":{port}/", f":{proxy.port}/"))
        assert [r.outcome for r in dr.replay(app.store, tool, ids)] == ["not found"] * 3 + ["replayed"] * 6
        assert xq_count(server_env) == 0 and sorted(_live_ids(server_env)) == sorted(ids)
    finally:
        proxy.close()
