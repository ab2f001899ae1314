"""The store contract for job records: the same tests over MemoryStore and RedisStore."""

from __future__ import annotations

import json

import pytest

import dramatiq_reliable as dr
from dramatiq_reliable.errors import ConfigurationError

NOW = 1_763_700_000_000


def creation(**extra):
    base = {"actor": "invoice", "queue": "default", "maxr": 3, "enq_ms": NOW, "args": '{"order_id":1}', "keys": {}}
    return {**base, **extra}


def apply(store, *ops, now=NOW, **header):
    return store.apply({"now_ms": now, "ops": list(ops), **header})


def test_enqueue_start_finish(store) -> None:
    apply(store, {"k": "enqueue", "id": "j1", "job": creation(detail="enqueued")})
    record = store.get_job("j1")
    assert record.status is dr.Status.QUEUED and record.attempts == 0 and record.args == {"order_id": 1}

    apply(store, {"k": "start", "id": "j1", "job": {"att": 1, "worker": "h:1:T"}}, now=NOW + 10)
    apply(store, {"k": "finish", "id": "j1", "job": {"outcome": "done", "att": 1, "detail": "ok"}}, now=NOW + 20)
    record = store.get_job("j1")
    assert record.status is dr.Status.DONE
    assert [e.status for e in record.events] == ["queued", "running", "done"]
    assert record.worker == "h:1:T" and record.attempts == 1
    assert record.started_at.timestamp() * 1000 == NOW + 10
    assert record.finished_at.timestamp() * 1000 == NOW + 20


def test_start_before_enqueue_creates_the_record_and_the_late_enqueue_keeps_the_status(store) -> None:
    apply(store, {"k": "start", "id": "j2", "job": {**creation(), "att": 1, "worker": "w"}})
    apply(store, {"k": "enqueue", "id": "j2", "job": creation(keys={"order_id": "1"})})
    record = store.get_job("j2")
    assert record.status is dr.Status.RUNNING
    assert record.actor == "invoice"
    assert [e.status for e in record.events] == ["queued", "running"]
    # the keys the late write brings are indexed: the job is found by its business key
    assert record.keys == {"order_id": "1"}
    assert [r.id for r in store.find_jobs(key=("order_id", "1"))] == ["j2"]


def test_running_again_without_a_retry_is_a_redelivery(store) -> None:
    apply(store, {"k": "start", "id": "j3", "job": {**creation(), "att": 1, "worker": "w1"}})
    apply(store, {"k": "start", "id": "j3", "job": {"att": 1, "worker": "w2"}}, now=NOW + 5)
    record = store.get_job("j3")
    assert record.events[-1].detail.startswith("redelivered: attempt 1 on w2")
    assert record.attempts == 1


def test_retrying_then_due_then_failed(store) -> None:
    apply(store, {"k": "start", "id": "j4", "job": {**creation(), "att": 1, "worker": "w"}})
    err = {"type": "ValueError", "message": "boom", "traceback": "Traceback..."}
    apply(
        store, {"k": "finish", "id": "j4", "job": {"outcome": "retrying", "att": 1, "err": err, "next_ms": NOW + 500}}
    )
    record = store.get_job("j4")
    assert record.status is dr.Status.RETRYING and record.next_retry_at.timestamp() * 1000 == NOW + 500
    apply(store, {"k": "due", "id": "j4", "job": {}}, now=NOW + 500)
    assert store.get_job("j4").status is dr.Status.QUEUED
    apply(store, {"k": "start", "id": "j4", "job": {"att": 2, "worker": "w"}}, now=NOW + 600)
    assert store.get_job("j4").next_retry_at is None
    apply(store, {"k": "finish", "id": "j4", "job": {"outcome": "failed", "att": 2, "err": err}}, now=NOW + 700)
    record = store.get_job("j4")
    assert record.status is dr.Status.FAILED and record.error.message == "boom" and record.attempts == 2


def test_a_start_that_overtakes_the_due_write_keeps_the_history_whole(store) -> None:
    apply(store, {"k": "start", "id": "j7", "job": {**creation(), "att": 1, "worker": "w"}})
    apply(store, {"k": "finish", "id": "j7", "job": {"outcome": "retrying", "att": 1, "next_ms": NOW + 5}})
    apply(store, {"k": "start", "id": "j7", "job": {"att": 2, "worker": "w"}})
    apply(store, {"k": "due", "id": "j7", "job": {}})  # late: ignored
    assert [e.status for e in store.get_job("j7").events] == ["running", "retrying", "queued", "running"]


def test_a_late_result_of_an_older_attempt_does_not_move_the_status(store) -> None:
    apply(store, {"k": "start", "id": "j5", "job": {**creation(), "att": 2, "worker": "w"}})
    apply(store, {"k": "finish", "id": "j5", "job": {"outcome": "retrying", "att": 1}})
    record = store.get_job("j5")
    assert record.status is dr.Status.RUNNING
    assert "late result of attempt 1" in record.events[-1].detail


def test_due_only_moves_retrying_jobs(store) -> None:
    apply(store, {"k": "enqueue", "id": "j6", "job": creation(due_ms=NOW + 1000)})
    apply(store, {"k": "due", "id": "j6", "job": {}})
    apply(store, {"k": "due", "id": "missing", "job": {}})
    assert store.get_job("j6").status is dr.Status.QUEUED and len(store.get_job("j6").events) == 1
    assert store.get_job("missing") is None


def test_indexes_follow_status_changes(store) -> None:
    for i in range(3):
        apply(store, {"k": "start", "id": f"s{i}", "job": {**creation(keys={"order_id": str(i)}), "att": 1}})
    apply(store, {"k": "finish", "id": "s1", "job": {"outcome": "done", "att": 1}})
    assert sorted(r.id for r in store.find_jobs(status="running")) == ["s0", "s2"]
    assert [r.id for r in store.find_jobs(status="done")] == ["s1"]
    assert [r.id for r in store.find_jobs(key=("order_id", "1"))] == ["s1"]
    assert [r.id for r in store.find_jobs(key=("order_id", "1"), status="running")] == []
    assert len(store.find_jobs(actor="invoice")) == 3
    assert len(store.find_jobs()) == 3


def test_paging_is_complete_and_newest_first(store) -> None:
    ops = [
        {"k": "enqueue", "id": f"p{i:03d}", "job": creation(enq_ms=NOW + (i // 3), keys={"customer": "c"})}
        for i in range(40)
    ]
    apply(store, *ops)
    seen, cursor, pages = [], None, 0
    while True:
        page = store.find_jobs(key=("customer", "c"), limit=7, cursor=cursor)
        seen += [r.id for r in page]
        pages += 1
        if page.cursor is None:
            break
        cursor = page.cursor
    assert len(seen) == 40 and len(set(seen)) == 40
    assert seen[0] == "p039" and seen[-1] == "p000"
    assert pages == 6


def test_retention_removes_records_and_their_index_entries(store) -> None:
    apply(store, {"k": "start", "id": "old", "job": {**creation(keys={"order_id": "9"}), "att": 1}})
    apply(store, {"k": "finish", "id": "old", "job": {"outcome": "done", "att": 1}})
    apply(store, {"k": "start", "id": "young", "job": {**creation(), "att": 1}}, now=NOW + 5_000)
    apply(store, {"k": "finish", "id": "young", "job": {"outcome": "done", "att": 1}}, now=NOW + 5_000)
    # A later batch cleans up what is older than the retention (here 3 s); on a Cluster, in the
    # shards its calls reach, and in one more in turn each second (here, every shard in turn)
    for _ in range(getattr(store, "shards", 1)):
        if hasattr(store, "shards"):
            store._turn_at = 0.0  # the next batch adds the next shard's cleanup at once
        apply(store, {"k": "due", "id": "x", "job": {}}, now=NOW + 6_000, retention_ms={"done": 3_000}, limit=10)
    assert store.get_job("old") is None
    assert store.get_job("young") is not None
    assert [r.id for r in store.find_jobs(actor="invoice")] == ["young"]
    assert not store.find_jobs(key=("order_id", "9")).items


def test_history_is_capped(store) -> None:
    apply(store, {"k": "start", "id": "h", "job": {**creation(), "att": 1, "hist": 3}})
    for i in range(2, 6):
        apply(store, {"k": "start", "id": "h", "job": {"att": i, "hist": 3}})
    events = store.get_job("h").events
    assert len(events) == 3 and events[-1].detail.startswith("attempt 5")


def test_bad_queries(store) -> None:
    with pytest.raises(ConfigurationError, match="unknown status"):
        store.find_jobs(status="lost")
    with pytest.raises(ConfigurationError, match="limit"):
        store.find_jobs(limit=0)
    with pytest.raises(ConfigurationError, match="malformed cursor"):
        store.find_jobs(cursor="nope")


def test_an_unknown_op_kind_is_an_error_result_not_a_crash(store) -> None:
    results = apply(store, {"k": "bogus", "id": "z"}, {"k": "enqueue", "id": "z2", "job": creation()})
    assert "unknown op kind" in results[0]["error"]
    assert store.get_job("z2") is not None


@pytest.mark.parametrize("intersect_max", [0, 20_000], ids=["walk", "intersect"])
def test_combined_filters_page_completely_and_check_the_other_index(store, intersect_max, monkeypatch) -> None:
    # Small indexes are intersected at once; larger ones walked with membership checks.
    from dramatiq_reliable.store import _paging

    monkeypatch.setattr(_paging, "INTERSECT_MAX", intersect_max)
    # 300 jobs of one actor, every 7th done, the others queued; two customers.
    ops = [
        {"k": "enqueue", "id": f"c{i:03d}", "job": creation(enq_ms=NOW + i, keys={"customer": str(i % 2)})}
        for i in range(300)
    ]
    apply(store, *ops)
    done = [f"c{i:03d}" for i in range(300) if i % 7 == 0]
    for job_id in done:
        apply(store, {"k": "start", "id": job_id, "job": {"att": 1, "worker": "w"}})
        apply(store, {"k": "finish", "id": job_id, "job": {"outcome": "done", "att": 1, "detail": ""}})

    def everything(**query):
        seen, cursor = [], None
        while True:
            page = store.find_jobs(limit=5, cursor=cursor, **query)
            seen += [r.id for r in page]
            if page.cursor is None:
                return seen
            cursor = page.cursor

    assert everything(actor="invoice", status="done") == sorted(done, reverse=True)
    assert everything(key=("customer", "0"), status="done") == sorted(
        (j for j in done if int(j[1:]) % 2 == 0), reverse=True
    )
    assert everything(key=("customer", "1"), actor="invoice", status="queued") == sorted(
        (f"c{i:03d}" for i in range(300) if i % 2 == 1 and i % 7 != 0), reverse=True
    )
    assert everything(key=("customer", "1"), actor="nobody") == []
    assert everything(actor="invoice", status="failed") == []


def test_a_replayed_write_keeps_the_time_it_was_made(store) -> None:
    # A start and an end buffered during an outage and replayed later, the end carrying the start
    apply(store, {"k": "enqueue", "id": "r1", "job": creation(detail="enqueued")})
    began = {"att": 1, "worker": "h:1:T", "at_ms": NOW + 10}
    end = {"outcome": "done", "att": 1, "detail": "ok", "began": began}
    apply(store, {"k": "finish", "id": "r1", "at_ms": NOW + 20, "job": end}, now=NOW + 60_000)
    record = store.get_job("r1")
    assert record.status is dr.Status.DONE and record.worker == "h:1:T" and record.attempts == 1
    assert [(e.status, e.at.timestamp() * 1000) for e in record.events] == [
        ("queued", NOW),
        ("running", NOW + 10),
        ("done", NOW + 20),
    ]
    assert record.started_at.timestamp() * 1000 == NOW + 10
    assert record.finished_at.timestamp() * 1000 == NOW + 20


def test_a_final_write_carrying_its_start_creates_a_missing_record(store) -> None:
    end = {**creation(), "outcome": "failed", "att": 1, "detail": "boom", "began": {"att": 1, "worker": "w"}}
    apply(store, {"k": "finish", "id": "r2", "at_ms": NOW + 5, "job": end}, now=NOW + 9)
    record = store.get_job("r2")
    assert record.status is dr.Status.FAILED and record.actor == "invoice" and record.args == {"order_id": 1}
    assert [e.status for e in record.events] == ["running", "failed"]


def test_a_late_put_back_goes_where_its_time_puts_it_with_the_status_of_then(store) -> None:
    apply(store, {"k": "enqueue", "id": "r3", "job": creation(detail="enqueued")})
    apply(store, {"k": "start", "id": "r3", "job": {"att": 1, "worker": "w"}}, now=NOW + 30)
    apply(store, {"k": "finish", "id": "r3", "job": {"outcome": "done", "att": 1}}, now=NOW + 40)
    # replayed afterwards by another process, made between the enqueue and the start
    put_back = {"outcome": "deferred", "att": 1, "detail": "put back: store unavailable"}
    apply(store, {"k": "finish", "id": "r3", "at_ms": NOW + 20, "job": put_back}, now=NOW + 90)
    record = store.get_job("r3")
    assert record.status is dr.Status.DONE
    assert [(e.status, e.at.timestamp() * 1000) for e in record.events] == [
        ("queued", NOW),
        ("queued", NOW + 20),
        ("running", NOW + 30),
        ("done", NOW + 40),
    ]


def test_a_late_enqueue_after_a_put_back_keeps_its_event_first(store) -> None:
    put_back = {**creation(), "outcome": "deferred", "att": 1, "detail": "put back: store unavailable"}
    apply(store, {"k": "finish", "id": "r4", "at_ms": NOW + 20, "job": put_back}, now=NOW + 90)
    apply(store, {"k": "enqueue", "id": "r4", "at_ms": NOW + 1, "job": creation(detail="enqueued")}, now=NOW + 95)
    apply(store, {"k": "enqueue", "id": "r4", "job": creation(detail="enqueued")}, now=NOW + 99)  # once only
    record = store.get_job("r4")
    assert [(e.status, e.detail) for e in record.events] == [
        ("queued", "enqueued"),
        ("queued", "put back: store unavailable"),
    ]


def test_the_indexes_a_call_writes_are_cleaned_at_once(store) -> None:
    # Given an old finished job, and the fleet-wide pass just run (it runs once a second)
    apply(store, {"k": "start", "id": "old", "job": {**creation(), "att": 1}})
    apply(store, {"k": "finish", "id": "old", "job": {"outcome": "done", "att": 1}})
    apply(store, {"k": "due", "id": "x", "job": {}}, now=NOW + 1, retention_ms={"done": 300}, limit=10)
    assert store.get_job("old") is not None
    # When a job of the same actor ends past the old one's retention, before the next such pass
    apply(store, {"k": "start", "id": "new", "job": {**creation(), "att": 1}}, now=NOW + 500)
    apply(
        store,
        {"k": "finish", "id": "new", "job": {"outcome": "done", "att": 1}},
        now=NOW + 500,
        retention_ms={"done": 300},
        limit=10,
    )
    # Then the call that wrote its index removed the old record
    assert store.get_job("old") is None
    assert [r.id for r in store.find_jobs(status="done")] == ["new"]
    assert store.count_jobs(["done"]) == {"done": 1}


def test_records_indexed_by_library_v2_are_moved_into_the_v3_indexes(store) -> None:
    if hasattr(store, "job_key"):  # a ClusterStore
        pytest.skip("a store on a Redis Cluster was never written by library v2 (it began with v3)")
    # Given records and indexes as library v2 wrote them (times since the epoch, ``ev``)
    client = store.client
    v2 = [("a", "done", "invoice"), ("b", "failed", "mail"), ("c", "done", "mail")]
    for i, (job_id, status, actor) in enumerate(v2):
        rec = {"actor": actor, "queue": "default", "status": status, "att": 1, "enq": NOW + i, "start": NOW + i}
        rec.update(fin=NOW + i + 5, worker="h:1:T", ev=[[NOW + i, "queued", "enqueued"], [NOW + i + 5, status, "x"]])
        client.set(store.k("job", job_id), json.dumps(rec))
        client.zadd(store.k("jobs", "status", status), {job_id: NOW + i + 5})
        client.zadd(store.k("jobs", "actor", actor), {job_id: NOW + i})
    assert store.get_job("a").finished_at.timestamp() * 1000 == NOW + 5  # v2 records read as they are
    # When a batch runs the fleet-wide cleanup pass
    apply(store, {"k": "due", "id": "x", "job": {}}, now=NOW + 10, retention_ms={"done": 86_400_000}, limit=100)
    # Then the v2 indexes are gone and the records are listed from the v3 ones
    assert not client.exists(*(store.k("jobs", "status", s.value) for s in dr.Status))
    assert not client.exists(store.k("jobs", "actor", "invoice"), store.k("jobs", "actor", "mail"))
    assert [r.id for r in store.find_jobs(actor="mail")] == ["c", "b"]
    assert [r.id for r in store.find_jobs(status="done")] == ["c", "a"]
    assert store.count_jobs(["done", "failed"]) == {"done": 2, "failed": 1}
    assert store.get_job("b").worker == "h:1:T"


def test_listings_merge_the_indexes_of_every_actor_and_status_page_by_page(store) -> None:
    # Given jobs of three actors, most of them ending at the same millisecond (ties broken by id)
    ids = []
    for i in range(30):
        job_id = f"m{i:02d}"
        ids.append(job_id)
        actor = ("a", "b", "c")[i % 3]
        apply(store, {"k": "start", "id": job_id, "job": {**creation(actor=actor), "att": 1}})
        outcome = "failed" if i % 5 == 0 else "done"
        apply(store, {"k": "finish", "id": job_id, "job": {"outcome": outcome, "att": 1}}, now=NOW + (i // 10))

    def walk(**query):
        seen, cursor = [], None
        while True:
            page = store.find_jobs(limit=7, cursor=cursor, **query)
            seen += [r.id for r in page]
            if page.cursor is None:
                return seen
            cursor = page.cursor

    # Then each listing holds each job once, newest first, ties by id descending
    newest_first = sorted(ids, key=lambda j: (int(j[1:]) // 10, j), reverse=True)
    assert walk() == newest_first
    assert walk(status="done") == [j for j in newest_first if int(j[1:]) % 5]
    assert walk(actor="b") == [j for j in newest_first if int(j[1:]) % 3 == 1]
    assert store.count_jobs(["done", "failed"]) == {"done": 24, "failed": 6}
