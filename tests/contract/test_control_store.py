"""The store contract for operator controls: the same tests over MemoryStore and RedisStore."""

from __future__ import annotations

import dramatiq_reliable as dr
from dramatiq_reliable._clock import now_ms
from tests.contract.test_jobs import NOW, apply, creation


def beat(store, after=0, most=10_000):
    return apply(store, {"k": "ctl_beat", "id": "-", "ctl": {"after": after, "max": most}})[0]


def test_pause_and_resume_are_read_in_the_beat(store) -> None:
    first = apply(store, {"k": "pause", "id": "-", "ctl": {"target": "actor:a", "on": True, "by": "me"}})[0]
    assert first["changed"] is True and first["since"] == NOW
    again = apply(store, {"k": "pause", "id": "-", "ctl": {"target": "actor:a", "on": True}}, now=NOW + 5)[0]
    assert again["changed"] is False and again["since"] == NOW and again["by"] == "me"
    assert beat(store)["paused"] == {"actor:a": {"since": NOW, "by": "me"}}
    off = apply(store, {"k": "pause", "id": "-", "ctl": {"target": "actor:a", "on": False}})[0]
    assert off["changed"] is True and off["since"] == NOW
    assert apply(store, {"k": "pause", "id": "-", "ctl": {"target": "actor:a", "on": False}})[0]["changed"] is False
    assert not beat(store)["paused"]


def test_cancel_marks_unfinished_jobs_and_logs_them(store) -> None:
    apply(store, {"k": "enqueue", "id": "q1", "job": creation(detail="enqueued")})
    apply(store, {"k": "enqueue", "id": "d1", "job": creation(detail="enqueued")})
    apply(store, {"k": "finish", "id": "d1", "job": {"outcome": "done", "att": 1, "detail": "ok"}})
    results = apply(
        store,
        {"k": "cancel", "id": "q1", "ctl": {"by": "me"}},
        {"k": "cancel", "id": "q1", "ctl": {"by": "me"}},
        {"k": "cancel", "id": "d1", "ctl": {"by": "me"}},
        {"k": "cancel", "id": "zz", "ctl": {"by": "me"}},
        now=NOW + 10,
    )
    assert [r["state"] for r in results] == ["cancelled", "cancelled", "done", "unknown"]
    assert results[0]["was"] == "queued" and "was" not in results[1]
    record = store.get_job("q1")
    assert record.status is dr.Status.CANCELLED and record.finished_at.timestamp() * 1000 == NOW + 10
    assert record.events[-1].detail == "cancelled by me (was queued); it will not run"
    assert store.get_job("d1").status is dr.Status.DONE
    assert [r.id for r in store.find_jobs(status="cancelled")] == ["q1"]
    seen = beat(store)
    assert seen["log"] == ["c:q1"] and seen["seq"] >= 1
    assert beat(store, after=seen["seq"])["log"] in ([], {})


def test_a_cancelled_job_that_starts_stays_cancelled_and_is_not_retried(store) -> None:
    apply(store, {"k": "enqueue", "id": "j", "job": creation(detail="enqueued")})
    apply(store, {"k": "cancel", "id": "j", "ctl": {"by": "me"}}, now=NOW + 1)
    started = apply(store, {"k": "start", "id": "j", "job": {"att": 1, "worker": "w"}}, now=NOW + 2)[0]
    assert started.get("cancelled") is True
    assert store.get_job("j").status is dr.Status.CANCELLED
    apply(store, {"k": "finish", "id": "j", "job": {"outcome": "retrying", "att": 1, "next_ms": NOW + 99}}, now=NOW + 3)
    record = store.get_job("j")
    assert record.status is dr.Status.CANCELLED and record.next_retry_at is None
    assert record.events[-1].detail == "not retried: the job was cancelled"


def test_retry_now_only_for_retrying_jobs(store) -> None:
    apply(store, {"k": "start", "id": "r", "job": {**creation(), "att": 1, "worker": "w"}})
    apply(store, {"k": "finish", "id": "r", "job": {"outcome": "retrying", "att": 1, "next_ms": NOW + 60_000}})
    assert apply(store, {"k": "retry_now", "id": "nope", "ctl": {}})[0]["state"] == "unknown"
    result = apply(store, {"k": "retry_now", "id": "r", "ctl": {"by": "me"}}, now=NOW + 5)[0]
    assert result["state"] == "now"
    record = store.get_job("r")
    assert record.status is dr.Status.RETRYING and record.next_retry_at.timestamp() * 1000 == NOW + 5
    assert beat(store)["log"] == ["n:r"]
    apply(store, {"k": "finish", "id": "r", "job": {"outcome": "done", "att": 2}})
    assert apply(store, {"k": "retry_now", "id": "r", "ctl": {}})[0]["state"] == "done"


def test_the_beat_pages_the_log(store) -> None:
    for i in range(5):
        apply(store, {"k": "enqueue", "id": f"p{i}", "job": creation(detail="enqueued")})
        apply(store, {"k": "cancel", "id": f"p{i}", "ctl": {}})
    first = beat(store, most=3)
    assert first["log"] == ["c:p0", "c:p1", "c:p2"] and first["more"] is True
    rest = beat(store, after=first["seq"], most=3)
    assert rest["log"] == ["c:p3", "c:p4"] and rest["more"] is False


def test_workers_lists_live_and_dead_processes_with_their_jobs(store) -> None:
    from tests.contract.test_watchdog_store import AB, A, B, beat, enqueue, start

    t0 = now_ms()
    info = {"host": "h1", "pid": 11, "kind": "redis", "threads": 8, "queues": ["default", "default.DQ"], "ab": AB}
    beat(store, A, t0 - 2000, info=info)
    enqueue(store, "j1", t0 - 2000)
    start(store, "j1", A, t0 - 1500)
    (worker,) = dr.workers(store)
    assert (worker.id, worker.alive, worker.host, worker.pid, worker.broker) == (A, True, "h1", 11, "redis")
    assert worker.queues == ["default"] and worker.threads == 8 and worker.busy == 1
    assert worker.last_heartbeat.timestamp() * 1000 == t0 - 2000
    (job,) = worker.jobs
    assert job.id == "j1" and job.actor == "charge" and job.attempt == 1 and job.status == "running"
    assert job.age >= 1.5
    # When another process sweeps after A went silent, A is listed as dead, with the job it ran
    beat(store, B, t0 + AB + 1)
    dead = next(w for w in dr.workers(store) if w.id == A)
    assert not dead.alive and dead.dead_since is not None and dead.busy == 1
    assert dead.jobs[0].status == "abandoned"
    assert [w.alive for w in dr.workers(store)] == [True, False]


def test_find_jobs_by_queue_and_since(store) -> None:
    from datetime import datetime, timezone

    for i in range(6):
        queue = "mail" if i % 2 else "default"
        section = {**creation(), "queue": queue, "enq_ms": NOW + i * 1000, "detail": "enqueued"}
        apply(store, {"k": "enqueue", "id": f"s{i}", "job": section}, now=NOW + i * 1000)
    apply(store, {"k": "start", "id": "s5", "job": {"att": 1}}, now=NOW + 9000)

    def at(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)

    assert [r.id for r in store.find_jobs(queue="mail")] == ["s5", "s3", "s1"]
    assert [r.id for r in store.find_jobs(since=at(NOW + 3000))] == ["s5", "s4", "s3"]
    assert [r.id for r in store.find_jobs(queue="mail", since=at(NOW + 2000))] == ["s5", "s3"]
    assert [r.id for r in store.find_jobs(actor="invoice", status="queued", since=at(NOW + 3500))] == ["s4"]
    page = store.find_jobs(queue="default", limit=1)
    assert [r.id for r in page] == ["s4"] and page.cursor is not None
    assert [r.id for r in store.find_jobs(queue="default", limit=5, cursor=page.cursor)] == ["s2", "s0"]
