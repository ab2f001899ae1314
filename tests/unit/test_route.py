"""Routing ops over the shards of a store on a Redis Cluster (``store/_route.py``)."""

from __future__ import annotations

from dramatiq_reliable.store._route import FLEET, Plan, Router

R = Router(16)


def key_in_other_shard(job_id: str) -> str:
    """An idempotency key whose shard is not the job's."""
    return next(f"a:{i}" for i in range(100) if R.of_key(f"a:{i}") != R.of_id(job_id))


def test_a_jobs_ops_go_to_its_shard_and_a_keys_to_the_keys() -> None:
    assert R.plan({"k": "enqueue", "id": "j1", "job": {}}).parts == [
        (1, R.of_id("j1"), {"k": "enqueue", "id": "j1", "job": {}})
    ]
    claim = {"k": "claim", "id": "j1", "idem": {"key": "a:7", "token": "t", "lease_ms": 1}}
    assert R.plan(claim).parts == [(1, R.of_key("a:7"), claim)]
    # A message id's key lives with its job (its record's done index is its marker)
    assert R.of_key("msg:j1") == R.of_id("j1")
    assert R.plan({"k": "pause", "id": "-", "ctl": {}}).parts[0][1] == FLEET
    assert {R.of_id(f"job-{i}") for i in range(200)} == set(range(16))


def test_a_keyed_finish_marks_its_key_first_then_its_record_and_its_alert_in_the_fleet() -> None:
    key = key_in_other_shard("j1")
    idem = {"outcome": "done", "key": key, "token": "t", "ttl_ms": 5}
    op = {"k": "finish", "id": "j1", "idem": idem, "job": {"outcome": "done"}, "al": {"kind": "failed"}}
    parts = R.plan(op).parts
    assert parts == [
        (0, R.of_key(key), {"k": "finish", "id": "j1", "idem": idem}),
        (1, R.of_id("j1"), {"k": "finish", "id": "j1", "job": {"outcome": "done"}}),
        (1, FLEET, {"k": "alert", "id": "j1", "al": {"kind": "failed"}}),
    ]
    # A key of the job's own shard stays in one call
    own = {"outcome": "done", "key": "msg:j1"}
    assert R.plan({"k": "finish", "id": "j1", "idem": own}).parts == [
        (1, R.of_id("j1"), {"k": "finish", "id": "j1", "idem": own})
    ]


def test_a_unique_reservation_is_released_in_its_keys_shard() -> None:
    ukey = key_in_other_shard("j1")
    op = {"k": "finish", "id": "j1", "idem": {"outcome": "failed", "key": "msg:j1", "ukey": ukey}}
    assert R.plan(op).parts == [
        (0, R.of_key(ukey), {"k": "finish", "id": "j1", "idem": {"outcome": "failed", "ukey": ukey}}),
        (1, R.of_id("j1"), {"k": "finish", "id": "j1", "idem": {"outcome": "failed", "key": "msg:j1"}}),
    ]


def test_a_renew_is_split_by_the_shards_of_its_keys_and_a_start_registers_its_process_first() -> None:
    leases = {f"a:{i}": f"t{i}" for i in range(40)}
    parts = R.plan({"k": "renew", "id": "-", "idem": {"leases": leases, "lease_ms": 9}}).parts
    assert sorted(k for _, _, p in parts for k in p["idem"]["leases"]) == sorted(leases)
    assert all(R.of_key(k) == shard for _, shard, p in parts for k in p["idem"]["leases"])
    start = {"k": "start", "id": "j1", "wd": {"proc": "p", "abandon_ms": 3}}
    assert R.plan(start).parts == [
        (0, FLEET, {"k": "shard_register", "id": "-", "wd": {"proc": "p", "abandon_ms": 3}}),
        (1, R.of_id("j1"), {"k": "start", "id": "j1", "wd": {"proc": "p"}}),
    ]


def test_what_follows_a_sweep_a_goodbye_and_a_cancel() -> None:
    beat = Plan({"k": "beat", "id": "-", "wd": {"proc": "p", "keep_ms": 60, "hist": 5}})
    beat.result = {"sweep": {"dead": ["q"], "abandoned": {}}}
    more = R.followups(beat)
    assert len(more) == 16 and {s for s, _ in more} == set(range(16))
    assert more[0][1]["wd"] == {"procs": ["q"], "house": True, "keep_ms": 60, "hist": 5}
    R.merge(beat, {"abandoned": [{"id": "j1"}], "leases": [{"id": "j1", "lk": "a:1", "lt": "t"}]}, followup=True)
    assert beat.result["sweep"]["abandoned"] == [{"id": "j1"}] and beat.leases[0]["lk"] == "a:1"

    bye = R.plan({"k": "bye", "id": "-", "wd": {"proc": "p"}})
    assert len(bye.parts) == 16 and all(p["k"] == "shard_sweep" for _, _, p in bye.parts)
    assert R.followups(bye) == [(FLEET, {"k": "bye", "id": "-", "wd": {"proc": "p"}})]
    R.merge(bye, {"abandoned": [{"id": "j1"}]})
    assert R.followups(bye) == [(FLEET, {"k": "shard_bury", "id": "-", "wd": {"proc": "p"}})]

    cancel = Plan({"k": "cancel", "id": "j1", "ctl": {}}, result={"state": "cancelled", "seq": 3})
    assert R.followups(cancel) == [(FLEET, {"k": "shard_ctl", "id": "j1", "ctl": {"kind": "c"}})]


def test_the_first_error_of_a_split_op_stands() -> None:
    plan = Plan({"k": "finish", "id": "j1"})
    R.merge(plan, {"error": "first", "section": "idem"})
    R.merge(plan, {"error": "second"})
    R.merge(plan, {"lost": ["a"]})
    assert plan.result == {"error": "first", "section": "idem"}
