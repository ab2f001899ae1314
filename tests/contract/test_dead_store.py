"""The dead-letter part of the store contract, over every store (MemoryStore and RedisStore)."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import dramatiq_reliable as dr
from dramatiq_reliable._clock import now_ms

DAY = 86_400_000


def message(job_id: str, actor: str = "send_invoice", queue: str = "default", **options: Any) -> str:
    return json.dumps(
        {
            "queue_name": queue,
            "actor_name": actor,
            "args": [7],
            "kwargs": {},
            "options": options,
            "message_id": job_id,
            "message_timestamp": 1_700_000_000_000,
        }
    )


def capture(
    store: dr.Store,
    job_id: str,
    *,
    actor: str = "send_invoice",
    queue: str = "default",
    etype: str = "SMTPTimeout",
    text: str = "timed out",
    now: int | None = None,
    ret: int = 30 * DAY,
    xid: str | None = None,
    with_job: bool = True,
) -> dict[str, Any]:
    """The finish op a worker commits when it dead-letters a message (JobState + DeadLetters)."""
    err = {"type": etype, "message": text, "traceback": f"Traceback ...\n{etype}: {text}\n"}
    dl = {
        "actor": actor,
        "queue": queue,
        "att": 4,
        "maxr": 3,
        "err": err,
        "msg": message(job_id, actor, queue),
        "retention_ms": ret,
    }
    if xid:
        dl["xid"] = xid
    op: dict[str, Any] = {"k": "finish", "id": job_id, "dead": dl}
    if with_job:
        op["job"] = {
            "actor": actor,
            "queue": queue,
            "outcome": "failed",
            "att": 4,
            "err": err,
            "detail": "dead",
            "hist": 50,
        }
    return store.apply({"now_ms": now or now_ms(), "ops": [op]})[0]


def apply(store: dr.Store, *ops: dict[str, Any], now: int | None = None) -> list[dict[str, Any]]:
    return store.apply({"now_ms": now or now_ms(), "ops": list(ops)})


def ids(page: dr.Page) -> list[str]:
    return [letter.id for letter in page]


def test_capture_keeps_message_error_and_indexes(store: dr.Store) -> None:
    # Given a job dead-lettered by a worker
    result = capture(store, "j1", xid="x1")

    # Then its dead letter has the final error, the message and the job's record
    assert "error" not in result
    letter = store.get_dead_letter("j1")
    assert letter is not None
    assert letter.id == "j1" and letter.actor == "send_invoice" and letter.queue == "default"
    assert letter.error is not None and letter.error.type == "SMTPTimeout" and "timed out" in letter.error.message
    assert letter.message is not None and letter.message["message_id"] == "j1" and letter.message["args"] == [7]
    assert letter.job.status.value == "failed" and letter.recorded and letter.malformed is None
    assert letter.broker_ids == ("x1",)
    assert abs(letter.dead_at.timestamp() * 1000 - now_ms()) < 60_000
    shape = letter.to_json()
    assert shape["id"] == "j1" and shape["status"] == "failed" and shape["dead_at"].endswith("Z")
    assert shape["message"]["message_id"] == "j1" and shape["error"]["type"] == "SMTPTimeout"

    # And it is found by queue, actor, time and error text
    assert ids(store.dead_letters()) == ["j1"]
    assert ids(store.dead_letters(queue="default")) == ["j1"]
    assert ids(store.dead_letters(actor="send_invoice")) == ["j1"]
    assert ids(store.dead_letters(error="smtptimeout")) == ["j1"]
    assert ids(store.dead_letters(error="TIMED OUT")) == ["j1"]
    assert not store.dead_letters(queue="other").items
    assert not store.dead_letters(actor="other").items
    assert not store.dead_letters(error="ValueError").items
    assert store.dead_letter_queues()["default"] == (1, 0)
    assert store.dead_letter_index("default") == ({"j1": int(letter.dead_at.timestamp() * 1000)}, {"x1": "j1"})


def test_without_a_job_record_the_view_is_built_from_the_dead_letter(store: dr.Store) -> None:
    capture(store, "j1", with_job=False)
    letter = store.get_dead_letter("j1")
    assert letter is not None
    assert letter.job.status.value == "failed" and letter.job.attempts == 4 and letter.job.max_retries == 3
    assert letter.job.enqueued_at == datetime.fromtimestamp(1_700_000_000, tz=timezone.utc)
    assert letter.error is not None and letter.error.type == "SMTPTimeout"


def test_listing_is_newest_first_paged_and_bounded_in_time(store: dr.Store) -> None:
    base = now_ms() - 10 * 60_000
    for i in range(7):
        capture(store, f"j{i}", actor="a" if i % 2 else "b", now=base + i * 60_000)
    assert ids(store.dead_letters()) == [f"j{i}" for i in range(6, -1, -1)]

    seen, cursor = [], None
    while True:
        page = store.dead_letters(limit=3, cursor=cursor)
        seen += ids(page)
        cursor = page.cursor
        if cursor is None:
            break
    assert seen == [f"j{i}" for i in range(6, -1, -1)]

    since = datetime.fromtimestamp((base + 3 * 60_000) / 1000, tz=timezone.utc)
    assert ids(store.dead_letters(since=since)) == ["j6", "j5", "j4", "j3"]
    assert ids(store.dead_letters(before=since)) == ["j2", "j1", "j0"]
    assert ids(store.dead_letters(actor="a", since=since)) == ["j5", "j3"]
    assert ids(store.dead_letters(queue="default", before=since, limit=2)) == ["j2", "j1"]


def test_bad_queries_are_refused(store: dr.Store) -> None:
    with pytest.raises(dr.ConfigurationError):
        store.dead_letters(limit=0)
    with pytest.raises(dr.ConfigurationError):
        store.dead_letters(cursor="garbage")
    with pytest.raises(dr.ConfigurationError):
        store.dead_letters(since=datetime(2020, 1, 1))  # naive


def test_stats_count_by_actor_and_error_type(store: dr.Store) -> None:
    for i in range(5):
        capture(store, f"i{i}", actor="send_invoice", etype="SMTPTimeout")
    capture(store, "r1", actor="report", etype="ValueError", queue="reports")
    stats = store.dead_letter_stats()
    assert stats.total == 6
    assert stats.by_kind == [("send_invoice", "SMTPTimeout", 5), ("report", "ValueError", 1)]
    assert stats.by_queue == {"default": 5, "reports": 1}
    assert stats.to_json()["by_actor_error"][0] == {"actor": "send_invoice", "error_type": "SMTPTimeout", "count": 5}


def test_a_second_capture_of_a_job_replaces_the_first(store: dr.Store) -> None:
    capture(store, "j1", xid="x1", etype="A")
    capture(store, "j1", xid="x2", etype="B")
    letter = store.get_dead_letter("j1")
    assert letter is not None and letter.error is not None and letter.error.type == "B"
    assert letter.broker_ids == ("x1", "x2")
    assert store.dead_letter_stats().by_kind == [("send_invoice", "B", 1)]
    assert len(store.dead_letters().items) == 1


def test_retention_removes_old_dead_letters_and_their_index_entries(store: dr.Store) -> None:
    # Given a dead letter whose retention is over
    old = now_ms() - 2 * DAY
    capture(store, "old", now=old, ret=DAY, xid="x-old", actor="gone")
    # Then it is no longer listed, even before the cleanup ran
    assert store.get_dead_letter("old") is None
    assert not store.dead_letters().items
    # When another dead letter is captured, the cleanup drops it with its indexes and counts
    capture(store, "new", xid="x-new")
    assert ids(store.dead_letters(actor="gone")) == []
    assert store.dead_letter_stats().by_kind == [("send_invoice", "SMTPTimeout", 1)]
    assert store.dead_letter_index("default")[1] == {"x-new": "new"}
    assert store.dead_letter_queues()["default"][0] == 1


def test_replay_moves_the_record_back_to_queued_with_a_fresh_attempt_count(store: dr.Store) -> None:
    capture(store, "j1")
    # Step 1: the record goes failed -> queued, history kept
    (r,) = apply(
        store, {"k": "replay", "id": "j1", "job": {"detail": "replayed from the dead-letter queue", "hist": 50}}
    )
    assert r.get("requeued") is True
    record = store.get_job("j1")
    assert record is not None and record.status.value == "queued" and record.attempts == 0
    assert [e.status for e in record.events][-2:] == ["failed", "queued"]
    assert record.events[-1].detail.startswith("replayed")
    assert record.error is not None and record.error.type == "SMTPTimeout"  # the last error is kept
    assert store.get_dead_letter("j1") is not None  # still dead until the broker moved it
    # Step 2: the broker moved it
    apply(store, {"k": "replayed", "id": "j1", "dead": {}})
    assert store.get_dead_letter("j1") is None
    assert store.dead_letter_stats().total == 0
    assert store.dead_letter_index("default") == ({}, {})


def test_replay_failed_puts_the_record_back(store: dr.Store) -> None:
    capture(store, "j1")
    apply(store, {"k": "replay", "id": "j1", "job": {"detail": "replayed", "hist": 50}})
    apply(store, {"k": "replay_failed", "id": "j1", "job": {"detail": "not replayed: broker down", "hist": 50}})
    record = store.get_job("j1")
    assert record is not None and record.status.value == "failed"
    assert record.events[-1].detail == "not replayed: broker down"
    assert store.get_dead_letter("j1") is not None


def test_replay_keeps_a_status_other_than_failed(store: dr.Store) -> None:
    apply(store, {"k": "finish", "id": "j1", "job": {"actor": "a", "queue": "q", "outcome": "done", "att": 1}})
    (r,) = apply(store, {"k": "replay", "id": "j1", "job": {"detail": "replayed", "hist": 50}})
    assert "requeued" not in r
    record = store.get_job("j1")
    assert record is not None and record.status.value == "done" and record.attempts == 1
    assert "so its status is kept" in record.events[-1].detail


def test_purge_and_forget(store: dr.Store) -> None:
    capture(store, "p1")
    capture(store, "f1")
    (r,) = apply(store, {"k": "dead_purge", "id": "p1", "dead": {}, "job": {"detail": "purged by me", "hist": 50}})
    assert r["removed"] is True
    assert store.get_dead_letter("p1") is None
    record = store.get_job("p1")
    assert record is not None and record.status.value == "failed" and record.events[-1].detail == "purged by me"

    # A copy younger than ``before`` is kept, an older one is forgotten
    forget = {"k": "dead_forget", "id": "f1", "job": {"detail": "no longer in the broker"}}
    (r,) = apply(store, {**forget, "dead": {"older_than_ms": 60_000}})
    assert "removed" not in r and store.get_dead_letter("f1") is not None
    (r,) = apply(store, {**forget, "dead": {"older_than_ms": 0}})
    assert r["removed"] is True and store.get_dead_letter("f1") is None
    assert store.get_job("f1").events[-1].detail == "no longer in the broker"  # type: ignore[union-attr]
    assert store.dead_letter_stats().total == 0


def test_import_of_an_entry_found_in_the_broker(store: dr.Store) -> None:
    # Given a job the store last saw running (its failure was never recorded)
    apply(store, {"k": "start", "id": "j1", "job": {"actor": "a", "queue": "default", "att": 1, "worker": "w"}})
    dead = now_ms() - 5_000
    imported = {
        "k": "dead_import",
        "id": "j1",
        "dead": {
            "queue": "default",
            "actor": "a",
            "att": 1,
            "dead_ms": dead,
            "retention_ms": DAY,
            "xid": "x1",
            "msg": message("j1", "a"),
        },
        "job": {"detail": "found in the dead-letter queue", "hist": 50},
    }
    (r,) = apply(store, imported)
    assert "known" not in r
    letter = store.get_dead_letter("j1")
    assert letter is not None and not letter.recorded and letter.error is None
    assert int(letter.dead_at.timestamp() * 1000) == dead
    assert letter.job.status.value == "failed"
    assert store.dead_letter_stats().by_kind == [("a", "?", 1)]

    # A second broker copy of the same job adds its id; nothing else changes
    (r,) = apply(store, {**imported, "dead": {**imported["dead"], "xid": "x2"}})
    assert r["known"] is True
    assert store.get_dead_letter("j1").broker_ids == ("x1", "x2")  # type: ignore[union-attr]
    assert store.dead_letter_stats().total == 1

    # An entry older than the retention is still kept while the broker holds it
    ancient = {**imported["dead"], "dead_ms": now_ms() - 90 * DAY, "xid": "x9"}
    apply(store, {"k": "dead_import", "id": "j9", "dead": ancient})
    assert store.get_dead_letter("j9") is not None and "j9" in ids(store.dead_letters())


def test_malformed_and_base64_entries(store: dr.Store) -> None:
    bad = {
        "queue": "default",
        "actor": "?",
        "dead_ms": now_ms(),
        "retention_ms": DAY,
        "bad": "cannot decode",
        "msg": "{nope",
    }
    apply(store, {"k": "dead_import", "id": "malformed:default:abc", "dead": bad})
    letter = store.get_dead_letter("malformed:default:abc")
    assert letter is not None and letter.malformed == "cannot decode" and letter.message is None
    assert letter.raw == "{nope" and letter.to_json()["raw"] == "{nope"
    assert ids(store.dead_letters(error="malformed")) == ["malformed:default:abc"]
    assert store.dead_letter_stats().by_kind == [("?", "malformed", 1)]

    text = message("j2", "a")
    b64 = base64.b64encode(text.encode()).decode()
    dl = {"queue": "default", "actor": "a", "dead_ms": now_ms(), "retention_ms": DAY, "msg": b64, "enc": "b64"}
    apply(store, {"k": "dead_import", "id": "j2", "dead": dl})
    assert store.get_dead_letter("j2").message["message_id"] == "j2"  # type: ignore[union-attr,index]


def test_queues_offsets_and_locks(store: dr.Store) -> None:
    apply(store, {"k": "dead_queue", "id": "-", "dead": {"queues": ["a", "b"]}})
    apply(store, {"k": "dead_sync", "id": "-", "dead": {"queue": "b", "offset": 2}})
    assert store.dead_letter_queues() == {"a": (0, 0), "b": (0, 2)}

    lock = {"k": "dead_lock", "id": "-", "dead": {"queue": "a", "token": "t1", "ttl_ms": 60_000}}
    assert apply(store, lock)[0]["ok"] is True
    (r,) = apply(store, {**lock, "dead": {**lock["dead"], "token": "t2"}})
    assert r["ok"] is False and r["holder"] == "t1"
    apply(store, {"k": "dead_unlock", "id": "-", "dead": {"queue": "a", "token": "t2"}})  # not the holder
    assert apply(store, {**lock, "dead": {**lock["dead"], "token": "t3"}})[0]["ok"] is False
    apply(store, {"k": "dead_unlock", "id": "-", "dead": {"queue": "a", "token": "t1"}})
    assert apply(store, {**lock, "dead": {**lock["dead"], "token": "t3"}})[0]["ok"] is True


def test_get_dead_letters_in_bulk(store: dr.Store) -> None:
    for i in range(3):
        capture(store, f"j{i}")
    got = store.get_dead_letters(["j2", "nope", "j0"])
    assert [x.id if x else None for x in got] == ["j2", None, "j0"]


def test_many_dead_letters_page_quickly(store: dr.Store) -> None:
    # Given a few thousand dead letters (captured in batches, as workers do)
    now = now_ms()
    batch = []
    for i in range(3000):
        job_id = uuid.uuid4().hex
        err = {"type": "SMTPTimeout" if i % 3 else "ValueError", "message": "x"}
        dl = {
            "actor": f"a{i % 4}",
            "queue": "default",
            "att": 1,
            "err": err,
            "msg": message(job_id),
            "retention_ms": DAY,
        }
        batch.append({"k": "finish", "id": job_id, "dead": dl})
        if len(batch) == 500:
            store.apply({"now_ms": now + i, "ops": batch})
            batch = []
    # Then the first page and the counts are right (their cost is measured in bench/)
    page = store.dead_letters(limit=20)
    stats = store.dead_letter_stats()
    assert len(page.items) == 20 and stats.total == 3000
    assert sum(n for a, t, n in stats.by_kind if t == "ValueError") == 1000
    assert ids(store.dead_letters(since=datetime.now(timezone.utc) + timedelta(days=1))) == []


def test_an_expired_dead_letter_goes_by_its_own_expiry_and_the_fleet_sweep(store: dr.RedisStore) -> None:
    # Given a dead letter kept one second
    now = now_ms()
    capture(store, "short", now=now, ret=1000)
    # Then its key expires by itself (a day after its retention: the sweep normally comes first)
    key = store.job_key("short", "dead", "short") if hasattr(store, "job_key") else store.k("dead", "short")
    ttl = store.client.pttl(key)
    assert 0 < ttl <= 1000 + DAY
    # When the Watchdog's sweep runs past its retention, with no dead-letter op in between
    beat = {"proc": "h:1:t", "abandon_ms": 30_000, "sweep_ms": 500, "keep_ms": 3_600_000}
    store.apply({"now_ms": now + 2000, "ops": [{"k": "beat", "id": "-", "wd": beat}]})
    # Then it is gone, with its index entries and its count
    assert not store.client.exists(key)
    assert store.dead_letter_stats().total == 0
    assert store.dead_letter_index("default") == ({}, {})
