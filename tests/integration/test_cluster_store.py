"""The store on a Redis Cluster (``redis+cluster://``), in shards over its primaries.

A private 3-primary Cluster (``tests/servers.py``) holds the store; real ``dramatiq`` worker
processes use the shared test Redis as their broker. Side effects are counted on the shared
Redis (``DR_TEST_EFFECTS``).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

import dramatiq_reliable as dr
from dramatiq_reliable.cli import main
from dramatiq_reliable.store.cluster import ClusterStore
from dramatiq_reliable.web import create_app
from tests.conftest import STORE_DB, ServerEnv, delete_prefix, make_env
from tests.helpers import DramatiqProcess, wait_until

pytestmark = pytest.mark.integration


def enqueue_op(job_id: str) -> dict[str, Any]:
    job = {"actor": "a", "queue": "q", "maxr": 0, "enq_ms": int(time.time() * 1000), "args": "{}", "keys": {}}
    return {"k": "enqueue", "id": job_id, "job": {**job, "detail": "enqueued"}}


@pytest.fixture
def cluster_env(shared_cluster: Any, redis_server: str, ns: str) -> Iterator[ServerEnv]:
    """Workers' environment: broker on the shared Redis, store on the private Cluster."""
    env = make_env("redis", redis_server, None, ns)
    env.store_url = shared_cluster.url
    env["DR_TEST_STORE"] = shared_cluster.url
    env["DR_TEST_EFFECTS"] = f"{redis_server}/{STORE_DB}"
    yield env
    delete_prefix(redis.Redis.from_url(f"{redis_server}/{STORE_DB}"), ns + ":")
    delete_prefix(redis.Redis.from_url(env.broker_url), env["DR_TEST_NAMESPACE"] + ":")
    client = shared_cluster.client()
    for pattern in ("{" + ns + "}:*", "{" + ns + ":*"):
        for key in list(client.scan_iter(match=pattern, count=1000)):
            client.delete(key)
    client.close()


def cli(capsys: pytest.CaptureFixture[str], env: ServerEnv, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    broker = f"{env.broker_url}?namespace={env['DR_TEST_NAMESPACE']}"
    code = main(["--store", f"{env.store_url}?prefix={env.prefix}", "--broker", broker, *args])
    out, err = capsys.readouterr()
    return code, out, err


def fcalls(cluster: Any) -> list[int]:
    """FCALLs each primary has run so far."""
    stats = [node.client(decode_responses=True).info("commandstats") for node in cluster.nodes]
    return [int(s.get("cmdstat_fcall", {}).get("calls", 0)) for s in stats]


def statuses(store: dr.Store, ids: list[str]) -> list[str]:
    return [(r.status.value if (r := store.get_job(i)) else "-") for i in ids]


def test_jobs_idempotency_listings_and_dead_letters_with_real_workers(
    shared_cluster: Any, cluster_env: ServerEnv, artifacts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.apps.basic import build

    app = build(cluster_env)
    store = app.store
    assert isinstance(store, ClusterStore) and store.shards == 16
    before = fcalls(shared_cluster)
    with DramatiqProcess("apps.basic", cluster_env, artifacts / "workers.log", processes=2, threads=4):
        # Given jobs sent to workers whose store is the Cluster, an idempotent one twice
        oks = [app.ok.send(i).message_id for i in range(24)]
        twice = [app.invoice.send(order_id=7, customer_id=1).message_id for _ in range(2)]
        # Then every job runs, the idempotent one once (the other is a duplicate, skipped)
        wait_until(lambda: statuses(store, oks) == ["done"] * 24, timeout=60, what="the jobs done")
        wait_until(lambda: sorted(statuses(store, twice)) == ["done", "skipped"], timeout=60, what="invoice 7")
        assert int(app.effects.get(app.fx("charge:7")) or 0) == 1

        # And the records are spread over the shards, and the store's calls over every primary
        assert len({store._router.of_id(i) for i in oks}) >= 6
        assert all(after > was for after, was in zip(fcalls(shared_cluster), before, strict=True))

        # And listings merge the shards, newest first, page by page with their cursors
        done_ids = {*oks, *(i for i in twice if store.get_job(i).status.value == "done")}  # type: ignore[union-attr]
        seen: list[dr.JobRecord] = []
        cursor = None
        while True:
            page = store.find_jobs(status="done", limit=5, cursor=cursor)
            seen.extend(page.items)
            cursor = page.cursor
            if cursor is None:
                break
        assert [r.id for r in seen if r.id in done_ids] == [r.id for r in seen] and len(seen) == len(done_ids) == 25
        ends = [r.finished_at for r in seen]
        assert all(a is not None and b is not None and a >= b for a, b in itertools.pairwise(ends))
        by_actor = [r.id for r in store.find_jobs(actor="ok", limit=1000)]
        assert sorted(by_actor) == sorted(oks)
        assert sorted(r.id for r in store.find_jobs(key=("order_id", 7))) == sorted(twice)
        assert store.count_jobs(["done", "skipped"]) == {"done": 25, "skipped": 1}

        # And the CLI lists and shows them from the Cluster URL
        code, out, err = cli(capsys, cluster_env, "jobs", "list", "--actor", "ok", "--limit", "100", "--json")
        assert code == 0, err
        assert sorted(x["id"] for x in json.loads(out)) == sorted(oks)
        code, out, err = cli(capsys, cluster_env, "jobs", "show", oks[0])
        assert code == 0 and oks[0] in out and "done" in out, err
        # And so does the support page, with the workers and the jobs they run
        page = TestClient(create_app(store, app.broker))
        found = page.get("/", params={"q": "order_id=7"})
        assert found.status_code == 200 and all(i in found.text for i in twice)
        assert page.get(f"/jobs/{oks[0]}").status_code == 200
        assert page.get("/workers").status_code == 200 and len(dr.workers(store)) == 2
        assert page.get("/activity").status_code == 200

        # When a job fails for good
        app.effects.set(app.fx("break_email"), 1)
        doomed = app.invoice.send(order_id=8, customer_id=2).message_id
        wait_until(lambda: statuses(store, [doomed]) == ["failed"], timeout=60, what="invoice 8 failed")
        # Then its dead letter is listed, by the store and by the CLI
        wait_until(lambda: [d.id for d in store.dead_letters()] == [doomed], timeout=30, what="the dead letter")
        code, out, err = cli(capsys, cluster_env, "dead", "list", "--json")
        assert code == 0 and [x["id"] for x in json.loads(out)] == [doomed], err
        assert store.dead_letter_stats().total == 1
        # When the cause is fixed and it is replayed
        app.effects.delete(app.fx("break_email"))
        code, out, err = cli(capsys, cluster_env, "dead", "replay", doomed)
        assert code == 0 and out.startswith("replayed"), err
        # Then it is done, its first step (charge) not run again, and no dead letter is left
        assert TestClient(create_app(store, app.broker)).get("/dead").status_code == 200
        wait_until(lambda: statuses(store, [doomed]) == ["done"], timeout=60, what="invoice 8 done")
        assert int(app.effects.get(app.fx("charge:8")) or 0) == 1
        assert store.dead_letters().items == []

    # And the per-minute counters add up the shards
    minute = int(time.time() * 1000) // 60000
    stats = store.stats_minutes(minute - 5, minute)
    assert sum(n for m in stats.values() for f, n in m.items() if f == "a\tok\tdone") == 24


def test_a_killed_workers_job_is_abandoned_and_runs_again(
    shared_cluster: Any, cluster_env: ServerEnv, artifacts: Path
) -> None:
    from tests.apps.watchdog import FAST, build

    app = build(cluster_env)
    store = app.store
    sweeper = DramatiqProcess(
        "apps.watchdog", cluster_env, artifacts / "sweeper.log", processes=1, threads=1, extra=("-Q", "elsewhere")
    )
    workers = DramatiqProcess("apps.watchdog", cluster_env, artifacts / "workers.log", processes=1, threads=2)
    try:
        sweeper.start(ready=False)
        workers.start()
        sweeper.wait_ready()
        # Given a job running that holds the lease of its key (in the key's shard)
        charged = app.charge.send(order_id=7, tag="c").message_id
        wait_until(lambda: statuses(store, [charged]) == ["running"], timeout=30, what="the job running")
        lease = store._shard_prefixes[store._router.of_key("charge:charge:7")] + "idem:lease:charge:charge:7"
        client = shared_cluster.client()
        assert client.exists(lease)
        # When its worker process is killed (kill -9)
        record = store.get_job(charged)
        assert record is not None and record.worker is not None
        os.kill(int(record.worker.split(":")[1]), signal.SIGKILL)
        assert workers.proc is not None
        workers.proc.wait(timeout=60)
        # Then the sweeper marks it abandoned and releases the lease of its key
        deadline = FAST["abandon_after"] + FAST["sweep_interval"] + 15
        wait_until(lambda: statuses(store, [charged]) == ["abandoned"], timeout=deadline, what="abandoned")
        assert not client.exists(lease)
        assert [p.alive for p in store.worker_processes() if p.running] == [False]
        # And once workers run again, it runs again and is done
        workers.start()
        app.effects.set(app.fx("release:c"), 1)
        wait_until(lambda: statuses(store, [charged]) == ["done"], timeout=30, what="done")
        client.close()
    finally:
        workers.stop()
        sweeper.stop()
    record = store.get_job(charged)
    assert record is not None
    history = [e.status for e in record.events if e.status != "queued"]
    assert history == ["running", "abandoned", "running", "done"], record.events


def test_a_cluster_node_named_as_one_server_is_refused_in_one_line(redis_cluster: Any) -> None:
    store = dr.RedisStore(f"redis://127.0.0.1:{redis_cluster.nodes[0].port}", prefix="tcluster")
    batch = {"ops": [enqueue_op("j1")]}
    calls = (store.check_server, lambda: store.apply(batch), lambda: store.apply_serial(batch))
    for call in calls:
        with pytest.raises(dr.StoreUnavailable) as caught:
            call()
        assert "is a Redis Cluster node: name the Cluster with a redis+cluster://" in str(caught.value)
        assert "\n" not in str(caught.value)
    assert all(node.client().dbsize() == 0 for node in redis_cluster.nodes)
    store.close()


def test_the_shard_count_is_fixed_at_first_use(
    shared_cluster: Any, ns: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a store made with 4 shards
    first = dr.RedisStore(f"{shared_cluster.url}?prefix={ns}&shards=4")
    first.apply({"ops": [enqueue_op("j1")]})
    # Then a process configured with 8 is refused in one line, before any write
    other = dr.open_store(f"{shared_cluster.url}?prefix={ns}&shards=8")
    with pytest.raises(dr.StoreUnavailable) as caught:
        other.apply({"ops": [enqueue_op("j2")]})
    assert "has 4 shards (fixed when it was first used), not 8" in str(caught.value)
    # And one that gives none uses the store's 4 (the CLI too)
    assert dr.open_store(f"{shared_cluster.url}?prefix={ns}").get_job("j1") is not None
    assert main(["--store", f"{shared_cluster.url}?prefix={ns}", "jobs", "show", "j1"]) == 0
    assert "j1" in capsys.readouterr().out and first.get_job("j2") is None


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("redis+cluster://127.0.0.1:7000/1", "names no database"),
        ("redis+cluster://127.0.0.1:7000?wait=1", "wait is not supported"),
        ("redis+cluster://127.0.0.1:7000?shards=0", "shards must be"),
        ("redis+cluster://127.0.0.1:7000?prefix=a{b}", "cannot hold braces"),
    ],
)
def test_a_malformed_cluster_url_is_bad_usage(url: str, said: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(dr.ConfigurationError, match=said):
        dr.open_store(url)
    assert main(["--store", url, "jobs", "list"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and said in err


def test_the_library_is_loaded_again_on_every_primary_that_lost_it(shared_cluster: Any, ns: str) -> None:
    from dramatiq_reliable.store import _library

    # Given a store in use, then every primary losing the library (restarted empty, say)
    store = dr.open_store(f"{shared_cluster.url}?prefix={ns}")
    store.apply({"ops": [enqueue_op(f"a{i}") for i in range(32)]})
    for node in shared_cluster.nodes:
        node.client().function_delete(_library.NAME)
    # When the next batch (over many shards) is applied
    results = store.apply({"ops": [enqueue_op(f"b{i}") for i in range(32)]})
    # Then it is, whole, and every primary has the library again
    assert not any("error" in r for r in results)
    assert store.count_jobs(["queued"]) == {"queued": 64}
    assert all(len(node.client().function_list(library=_library.NAME)) == 1 for node in shared_cluster.nodes)
    store.close()
