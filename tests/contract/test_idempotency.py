"""The store contract for idempotency ops: the same tests over MemoryStore and RedisStore."""

from __future__ import annotations

import time

NOW = 1_763_700_000_000


def apply(store, *ops, now=NOW):
    return store.apply({"now": now, "ops": list(ops)})


def start(job_id, key, token, lease=1000, **extra):
    return {"k": "claim", "id": job_id, "idem": {"key": key, "token": token, "lease": lease, **extra}}


def finish(job_id, key, token, outcome, **extra):
    return {
        "k": "finish",
        "id": job_id,
        "idem": {"key": key, "token": token, "outcome": outcome, "ttl": 60_000, **extra},
    }


def test_lease_then_complete_then_duplicate(store) -> None:
    assert apply(store, start("a", "k:x", "ta"))[0]["outcome"] == "run"
    busy = apply(store, start("b", "k:x", "tb"))[0]
    assert busy["outcome"] == "busy" and busy["owner"] == "ta" and 100 <= busy["retry_in"] <= 1000
    apply(store, finish("a", "k:x", "ta", "done"))
    dup = apply(store, start("b", "k:x", "tb"))[0]
    assert dup == {"outcome": "duplicate", "dup": "a"}


def test_a_failure_releases_the_lease_without_completing(store) -> None:
    apply(store, start("a", "k:y", "t1"))
    apply(store, finish("a", "k:y", "t1", "retrying"))
    assert apply(store, start("a", "k:y", "t2"))[0]["outcome"] == "run"


def test_only_the_owner_releases_a_lease(store) -> None:
    apply(store, start("a", "k:z", "t1"))
    apply(store, finish("a", "k:z", "someone-else", "failed"))
    assert apply(store, start("b", "k:z", "t2"))[0]["outcome"] == "busy"


def test_a_dead_owners_lease_expires(store) -> None:
    apply(store, start("a", "k:e", "t1", lease=150))
    time.sleep(0.3)
    assert apply(store, start("a", "k:e", "t2"))[0]["outcome"] == "run"


def test_renew_extends_own_leases_and_reports_lost_ones(store) -> None:
    apply(store, start("a", "k:r1", "t1"), start("b", "k:r2", "t2"))
    result = apply(store, {"k": "renew", "id": "-", "idem": {"leases": {"k:r1": "t1", "k:r2": "wrong"}, "lease": 5000}})
    assert result[0]["lost"] == ["k:r2"]


def test_a_completed_job_is_a_duplicate_even_when_replayed(store) -> None:
    # A replay is checked like any delivery: a replay delivered twice does the work once.
    apply(store, start("m", "msg:m", "t1"))
    apply(store, finish("m", "msg:m", "t1", "done"))
    assert apply(store, start("m", "msg:m", "t2"))[0] == {"outcome": "duplicate", "dup": "m"}
    assert apply(store, start("other", "msg:m", "t3"))[0]["outcome"] == "duplicate"


def test_unique_reserve_confirm_release(store) -> None:
    reserve = {"k": "reserve", "id": "u1", "idem": {"key": "k:u", "ttl": 60_000}}
    assert apply(store, reserve)[0]["outcome"] == "reserved"
    refused = apply(store, {"k": "reserve", "id": "u2", "idem": {"key": "k:u", "ttl": 60_000}})[0]
    assert refused == {"outcome": "refused", "holder": "u1"}
    apply(store, {"k": "confirm", "id": "u1", "idem": {"key": "k:u", "ttl": 60_000}})
    apply(store, finish("u1", "k:u", None, "done", unique=True))
    assert apply(store, {"k": "reserve", "id": "u3", "idem": {"key": "k:u", "ttl": 60_000}})[0]["outcome"] == "reserved"


def test_a_unique_key_held_by_a_finished_job_is_free(store) -> None:
    apply(store, {"k": "reserve", "id": "h1", "idem": {"key": "k:h", "ttl": 60_000}})
    apply(store, {"k": "start", "id": "h1", "job": {"actor": "a", "queue": "q", "att": 1}})
    apply(store, {"k": "finish", "id": "h1", "job": {"outcome": "failed", "att": 1}})
    assert apply(store, {"k": "reserve", "id": "h2", "idem": {"key": "k:h", "ttl": 60_000}})[0]["outcome"] == "reserved"


def test_checkpoints(store) -> None:
    assert store.once_get("j", "charge") is None
    store.once_set("j", "charge", '{"receipt": 1}', 60_000)
    assert store.once_get("j", "charge") == '{"receipt": 1}'
    apply(store, start("j", "k:c", "t"))
    apply(store, finish("j", "k:c", "t", "done"))
    assert store.once_get("j", "charge") is None


def job_finish(job_id, key, token, outcome, att, **extra):
    """A finish op with JobState's section beside Idempotency's, as the bundle commits it."""
    op = finish(job_id, key, token, outcome, **extra)
    op["job"] = {"outcome": outcome, "att": att, "actor": "a", "queue": "q", "detail": ""}
    return op


def test_the_done_record_is_the_marker_of_a_message_id(store) -> None:
    # With JobState keeping records at least ``ttl`` ("rec"), no separate marker is written:
    # the record's done index says the message id completed.
    apply(store, start("r1", "msg:r1", "t1", rec=1))
    apply(store, job_finish("r1", "msg:r1", "t1", "done", 1, rec=1))
    assert apply(store, start("r1", "msg:r1", "t2", rec=1))[0] == {"outcome": "duplicate", "dup": "r1"}
    # nothing under the marker's name: without "rec" the same check finds no marker
    assert apply(store, start("r1", "msg:r1", "t3"))[0]["outcome"] in ("run", "busy")


def test_a_failed_record_is_no_marker(store) -> None:
    apply(store, start("r2", "msg:r2", "t1", rec=1))
    apply(store, job_finish("r2", "msg:r2", "t1", "failed", 1, rec=1))
    assert apply(store, start("r2", "msg:r2", "t2", rec=1))[0]["outcome"] == "run"


def test_the_late_result_of_an_older_attempt_still_writes_the_marker(store) -> None:
    # Attempt 2 started (the record says so) when attempt 1's success arrives: the record stays
    # running, so the marker is written for the work attempt 1 did.
    apply(store, {"k": "start", "id": "r3", "job": {"att": 2, "worker": "w", "actor": "a", "queue": "q"}})
    apply(store, job_finish("r3", "msg:r3", "t1", "done", 1, rec=1))
    assert apply(store, start("r3", "msg:r3", "t2"))[0] == {"outcome": "duplicate", "dup": "r3"}


def test_a_key_always_gets_its_marker(store) -> None:
    apply(store, start("r4", "k:order-1", "t1"))
    apply(store, job_finish("r4", "k:order-1", "t1", "done", 1))
    assert apply(store, start("r5", "k:order-1", "t2"))[0] == {"outcome": "duplicate", "dup": "r4"}
