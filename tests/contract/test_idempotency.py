"""The store contract for idempotency ops: the same tests over MemoryStore and RedisStore."""

from __future__ import annotations

import time

import pytest

NOW = 1_763_700_000_000


def apply(store, *ops, now=NOW):
    return store.apply({"now_ms": now, "ops": list(ops)})


def start(job_id, key, token, lease=1000, **extra):
    return {"k": "claim", "id": job_id, "idem": {"key": key, "token": token, "lease_ms": lease, **extra}}


def finish(job_id, key, token, outcome, **extra):
    return {
        "k": "finish",
        "id": job_id,
        "idem": {
            k: v for k, v in {"key": key, "token": token, "outcome": outcome, "ttl_ms": 60_000, **extra}.items() if v
        },
    }


def test_lease_then_complete_then_duplicate(store) -> None:
    assert apply(store, start("a", "a:x", "ta"))[0]["outcome"] == "run"
    busy = apply(store, start("b", "a:x", "tb"))[0]
    assert busy["outcome"] == "busy" and busy["owner"] == "ta" and 100 <= busy["retry_in"] <= 1000
    apply(store, finish("a", "a:x", "ta", "done"))
    dup = apply(store, start("b", "a:x", "tb"))[0]
    assert dup == {"outcome": "duplicate", "dup": "a"}


def test_a_failure_releases_the_lease_without_completing(store) -> None:
    apply(store, start("a", "a:y", "t1"))
    apply(store, finish("a", "a:y", "t1", "retrying"))
    assert apply(store, start("a", "a:y", "t2"))[0]["outcome"] == "run"


def test_only_the_owner_releases_a_lease(store) -> None:
    apply(store, start("a", "a:z", "t1"))
    apply(store, finish("a", "a:z", "someone-else", "failed"))
    assert apply(store, start("b", "a:z", "t2"))[0]["outcome"] == "busy"


def test_a_dead_owners_lease_expires(store) -> None:
    apply(store, start("a", "a:e", "t1", lease=150))
    time.sleep(0.3)
    assert apply(store, start("a", "a:e", "t2"))[0]["outcome"] == "run"


def test_renew_extends_own_leases_and_reports_lost_ones(store) -> None:
    apply(store, start("a", "a:r1", "t1"), start("b", "a:r2", "t2"))
    result = apply(
        store, {"k": "renew", "id": "-", "idem": {"leases": {"a:r1": "t1", "a:r2": "wrong"}, "lease_ms": 5000}}
    )
    assert result[0]["lost"] == ["a:r2"]


def test_a_completed_job_is_a_duplicate_even_when_replayed(store) -> None:
    # A replay is checked like any delivery: a replay delivered twice does the work once.
    apply(store, start("m", "msg:m", "t1"))
    apply(store, finish("m", "msg:m", "t1", "done"))
    assert apply(store, start("m", "msg:m", "t2"))[0] == {"outcome": "duplicate", "dup": "m"}
    assert apply(store, start("other", "msg:m", "t3"))[0]["outcome"] == "duplicate"


def reserve(job_id, key):
    return {"k": "reserve", "id": job_id, "idem": {"key": key, "ttl_ms": 60_000}}


def test_unique_reserve_confirm_release(store) -> None:
    assert apply(store, reserve("u1", "a:u"))[0]["outcome"] == "reserved"
    refused = apply(store, reserve("u2", "a:u"))[0]
    assert refused == {"outcome": "refused", "holder": "u1"}
    apply(store, {"k": "confirm", "id": "u1", "idem": {"key": "a:u", "ttl_ms": 60_000}})
    apply(store, finish("u1", "a:u", None, "done", ukey="a:u"))
    assert apply(store, reserve("u3", "a:u"))[0]["outcome"] == "reserved"


@pytest.mark.parametrize(
    ("outcome", "freed"),
    [("done", True), ("failed", True), ("skipped", True), ("retrying", False), ("deferred", False)],
)
def test_a_unique_key_is_held_until_its_job_has_finished(store, outcome, freed) -> None:
    # Given a unique job that reserved its key at send
    apply(store, reserve("u1", "a:v"))
    # When an attempt of it ends with ``outcome`` (a skipped duplicate carries no claim)
    section = {"outcome": outcome, "ukey": "a:v"}
    apply(store, {"k": "finish", "id": "u1", "idem": section})
    # Then the same send is a new job only once the job has finished
    assert apply(store, reserve("u2", "a:v"))[0]["outcome"] == ("reserved" if freed else "refused")


def test_a_unique_job_without_a_key_leaves_no_completion_behind(store) -> None:
    # A unique actor without idempotency_key claims its message id and reserves a hash of its
    # arguments: its completion is the message id's, so the next send of the same arguments runs.
    apply(store, reserve("u1", "a:digest"))
    apply(store, start("u1", "msg:u1", "t1"))
    apply(store, finish("u1", "msg:u1", "t1", "done", ukey="a:digest"))
    assert apply(store, reserve("u2", "a:digest"))[0]["outcome"] == "reserved"
    assert apply(store, start("u2", "msg:u2", "t2"))[0]["outcome"] == "run"
    assert apply(store, start("u1", "msg:u1", "t3"))[0] == {"outcome": "duplicate", "dup": "u1"}


def test_a_release_by_another_job_leaves_the_reservation(store) -> None:
    apply(store, reserve("u1", "a:w"))
    apply(store, {"k": "finish", "id": "old", "idem": {"outcome": "done", "ukey": "a:w"}})
    assert apply(store, reserve("u2", "a:w"))[0] == {"outcome": "refused", "holder": "u1"}


def test_a_unique_key_held_by_a_finished_job_is_free(store) -> None:
    apply(store, {"k": "reserve", "id": "h1", "idem": {"key": "a:h", "ttl_ms": 60_000}})
    apply(store, {"k": "start", "id": "h1", "job": {"actor": "a", "queue": "q", "att": 1}})
    apply(store, {"k": "finish", "id": "h1", "job": {"outcome": "failed", "att": 1}})
    assert (
        apply(store, {"k": "reserve", "id": "h2", "idem": {"key": "a:h", "ttl_ms": 60_000}})[0]["outcome"] == "reserved"
    )


def test_checkpoints_belong_to_the_claimed_key(store) -> None:
    # Given a step stored by a job that claimed the key, then failed for good
    assert store.once_get("a:c", "charge") is None
    apply(store, start("j1", "a:c", "t1"))
    store.once_set("a:c", "charge", '{"receipt": 1}', 60_000)
    apply(store, finish("j1", "a:c", "t1", "failed"))
    # Then another job with the same key finds it, and a job of another key does not
    assert store.once_get("a:c", "charge") == '{"receipt": 1}'
    assert store.once_get("b:c", "charge") is None
    # And when a job that used them completes the key, they go (the completion answers for them)
    apply(store, start("j2", "a:c", "t2"))
    apply(store, finish("j2", "a:c", "t2", "done", once=1))
    assert store.once_get("a:c", "charge") is None


def test_checkpoints_expire_with_the_ttl_of_the_last_step(store) -> None:
    store.once_set("a:x", "charge", "1", 150)
    time.sleep(0.1)
    store.once_set("a:x", "email", "2", 150)  # the scope's ttl counts from its last step
    time.sleep(0.1)
    assert (store.once_get("a:x", "charge"), store.once_get("a:x", "email")) == ("1", "2")
    time.sleep(0.2)
    assert (store.once_get("a:x", "charge"), store.once_get("a:x", "email")) == (None, None)
    store.once_set("a:x", "email", "3", 1000)  # an expired scope does not come back
    assert store.once_get("a:x", "charge") is None


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
    apply(store, start("r4", "a:order-1", "t1"))
    apply(store, job_finish("r4", "a:order-1", "t1", "done", 1))
    assert apply(store, start("r5", "a:order-1", "t2"))[0] == {"outcome": "duplicate", "dup": "r4"}


def register(store, proc, now=NOW, abandon_ms=5000):
    """The Watchdog's beat of ``proc`` at ``now``: its deadline is ``now + abandon_ms``."""
    wd = {"proc": proc, "abandon_ms": abandon_ms, "info": {"ab": abandon_ms}}
    apply(store, {"k": "beat", "id": "-", "wd": wd}, now=now)


def test_the_lease_of_a_dead_process_is_taken_over_at_once(store) -> None:
    register(store, "h:1:dead", NOW - 10_000)  # its deadline passed 5 s ago
    assert apply(store, start("a", "a:k", "a|h:1:dead|1", lease=60_000))[0]["outcome"] == "run"
    again = apply(store, start("a", "a:k", "a|h:2:live|1", lease=60_000))[0]
    assert again == {"outcome": "run", "took": "h:1:dead", "detail": "taken over from dead process h:1:dead"}
    # The new holder owns the lease: the old token no longer releases it.
    apply(store, finish("a", "a:k", "a|h:1:dead|1", "failed"))
    register(store, "h:2:live", NOW)
    assert apply(store, start("b", "a:k", "b|h:3:x|1", lease=60_000))[0]["outcome"] == "busy"


def test_a_live_holder_keeps_its_lease(store) -> None:
    register(store, "h:1:live", NOW - 1000)  # deadline 4 s from now
    apply(store, start("a", "a:l", "a|h:1:live|1", lease=60_000))
    busy = apply(store, start("a", "a:l", "a|h:2:other|1", lease=60_000))[0]
    assert busy["outcome"] == "busy" and busy["owner"] == "a|h:1:live|1"
    # Checked again when the holder would count as dead, not when the 60 s lease expires.
    assert 100 <= busy["retry_in"] <= 4050


def test_a_buried_holder_is_dead(store) -> None:
    register(store, "h:1:gone", NOW - 10_000)
    apply(store, start("a", "a:b", "a|h:1:gone|1", lease=60_000))
    # The sweep buries it (moves it to wd:dead) and releases the leases it knows of; this one
    # it did not know of (its start op never reached the store).
    apply(
        store,
        {
            "k": "beat",
            "id": "-",
            "wd": {"proc": "h:9:sweeper", "abandon_ms": 5000, "sweep_ms": 1000, "keep_ms": 60_000},
        },
    )
    assert apply(store, start("a", "a:b", "a|h:2:x|1", lease=60_000))[0]["took"] == "h:1:gone"


def test_an_unknown_holder_keeps_its_lease_until_it_went_unrenewed_past_abandon(store) -> None:
    apply(store, start("a", "a:u", "a|h:1:unknown|1", lease=600))
    register(store, "h:2:x", abandon_ms=300)  # the claimer's abandon_after: 300 ms
    busy = apply(store, start("a", "a:u", "a|h:2:x|1", lease=600))[0]
    assert busy["outcome"] == "busy" and busy["retry_in"] <= 400
    # A claimer without a Watchdog (no abandon_after of its own) waits for the expiry.
    assert apply(store, start("a", "a:u", "a|h:3:nowd|1", lease=600))[0]["outcome"] == "busy"
    deadline = time.monotonic() + 10
    while (res := apply(store, start("a", "a:u", "a|h:2:x|3", lease=600))[0])["outcome"] == "busy":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert res == {"outcome": "run", "took": "h:1:unknown", "detail": "taken over from dead process h:1:unknown"}


def test_a_token_without_a_process_is_never_taken_over(store) -> None:
    register(store, "h:2:x", abandon_ms=1)
    apply(store, start("a", "a:t", "ta", lease=5000))
    assert apply(store, start("a", "a:t", "a|h:2:x|1", lease=5000))[0]["outcome"] == "busy"
