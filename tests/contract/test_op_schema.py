"""The op schema: what the loaded library registers is what ``store/ops.py`` documents, and an op
applies whole or not at all."""

from __future__ import annotations

import typing
from typing import Any

import pytest

import dramatiq_reliable as dr
from dramatiq_reliable.store import ops

LUA_TYPES = {str: "string", int: "number", float: "number", bool: "boolean", Any: "any"}


def lua_type(hint: Any) -> str:
    if hint in LUA_TYPES:
        return LUA_TYPES[hint]
    origin = typing.get_origin(hint)
    if origin in (dict, list) or typing.is_typeddict(hint):
        return "table"
    raise AssertionError(f"no Lua type for {hint!r}")


def documented(fields: type) -> dict[str, str]:
    hints = typing.get_type_hints(fields)
    required = fields.__required_keys__  # type: ignore[attr-defined]
    return {name: lua_type(hint) + ("" if name in required else "?") for name, hint in hints.items()}


def test_every_registered_kind_is_documented_with_its_fields(store: dr.RedisStore) -> None:
    # Given what the loaded library says it registered
    registered = store.kinds()
    # Then ops.KINDS has the same kinds, sections, priorities and fields (names, types, required)
    assert sorted(registered) == sorted(ops.KINDS)
    for kind, sections in ops.KINDS.items():
        assert sorted(registered[kind]) == sorted(sections), kind
        for section, (priority, fields) in sections.items():
            spec = registered[kind][section]
            assert spec["priority"] == priority, (kind, section)
            lua_fields = spec["fields"] if isinstance(spec["fields"], dict) else {}
            assert lua_fields == documented(fields), (kind, section)


def test_an_op_with_a_refused_section_applies_nothing(store: dr.Store) -> None:
    # Given a finish op whose job section is valid and whose dead-letter section lacks a field
    job = {"actor": "a", "queue": "q", "outcome": "failed", "att": 1, "detail": "boom"}
    op = {"k": "finish", "id": "j1", "job": job, "st": {"a": "a", "o": "failed"}, "dead": {"actor": "a"}}

    # When it is applied
    [result] = store.apply({"ops": [op]})

    # Then the result names the section, and neither the record nor the counters were written
    assert result["section"] == "dead" and "queue" in result["error"]
    assert store.get_job("j1") is None
    assert store.find_jobs().items == []


def test_unknown_fields_kinds_and_null_values_are_refused(store: dr.Store) -> None:
    cases = [
        ({"k": "enqueue", "id": "x", "job": {"actor": "a", "due": 5}}, "job", "unknown field due"),
        ({"k": "enqueue", "id": "x", "job": {"actor": None}}, "job", "actor must be a string"),
        ({"k": "enqueue", "id": "x", "idem": {"key": "k"}}, "idem", "takes no section idem"),
        ({"k": "claim", "id": "x", "idem": {"key": "k", "token": "t", "lease_ms": "60"}}, "idem", "lease_ms"),
    ]
    results = store.apply({"ops": [op for op, _, _ in cases] + [{"k": "nope", "id": "x"}]})
    for (_, section, text), result in zip(cases, results, strict=False):
        assert result["section"] == section and text in result["error"], result
    assert results[-1] == {"error": "unknown op kind: nope"}
    assert store.get_job("x") is None


def test_an_op_whose_later_handler_raises_applies_nothing(store: dr.Store) -> None:
    if hasattr(store, "job_key"):  # a ClusterStore
        pytest.skip(
            "on a Redis Cluster a keyed finish is two calls, its key's shard first (docs/scaling.md): "
            "the op is atomic per call, not across them"
        )
    # Given a running job holding its key's lease, with its record and checkpoints
    claim = {"k": "claim", "id": "j1", "idem": {"key": "a:x", "token": "t1", "lease_ms": 60_000}}
    start = {"k": "start", "id": "j1", "job": {"actor": "a", "queue": "q", "att": 1, "worker": "w"}}
    assert store.apply({"ops": [claim, start]})[0]["outcome"] == "run"
    store.once_set("a:x", "charge", '{"receipt": 1}', 60_000)
    before = store.get_job("j1")
    assert before is not None and before.status.value == "running"
    # And a finish op every section of which passes the schema check, but whose job section (run
    # after the idem section, which completes the key, frees the lease and drops the steps) carries
    # a start whose worker is not text, so its handler raises
    finish = {
        "k": "finish",
        "id": "j1",
        "idem": {"outcome": "done", "key": "a:x", "token": "t1", "ttl_ms": 60_000, "once": 1},
        "job": {"outcome": "done", "att": 1, "detail": "done", "began": {"att": 1, "worker": {"no": "text"}}},
        "st": {"a": "a", "o": "done", "q": "q", "wait_ms": 5},
    }

    # When it is applied
    [result] = store.apply({"ops": [finish]})

    # Then the result names the section that raised
    assert result["section"] == "job" and "error" in result, result
    # And nothing of the op was applied: the key is not completed (another job's claim finds it
    # busy, held by the same lease), the steps are kept, the record and the counters are unchanged
    claim2 = {"k": "claim", "id": "j2", "idem": {"key": "a:x", "token": "t2", "lease_ms": 60_000}}
    other = store.apply({"ops": [claim2]})
    assert other[0]["outcome"] == "busy" and other[0]["owner"] == "t1", other
    assert store.once_get("a:x", "charge") == '{"receipt": 1}'
    after = store.get_job("j1")
    assert after is not None and after.status.value == "running" and len(after.events) == len(before.events)
    minute = store.store_time_ms() // 60_000
    assert store.stats_minutes(minute - 2, minute + 1) == {}


def test_a_heartbeat_whose_sweep_raises_applies_nothing(store: dr.RedisStore) -> None:
    # Given a known process (the heartbeat writes at once: its sweep reads back what it wrote)
    first = {"proc": "h:1:a", "abandon_ms": 60_000, "info": {"host": "h", "pid": 1}}
    assert "error" not in store.apply({"ops": [{"k": "beat", "id": "-", "wd": first}]})[0]
    before = {k: store.client.dump(store.k("wd", k)) for k in ("procs", "info", "lock")}
    # When a heartbeat that passes the schema check but cannot sweep (no keep_ms) wins the sweep lock
    beat = {"proc": "h:1:a", "abandon_ms": 90_000, "info": {"host": "h", "pid": 2}, "sweep_ms": 5_000}
    [result] = store.apply({"ops": [{"k": "beat", "id": "-", "wd": beat}]})
    # Then the result names the section, and what it had written was put back as it was
    assert result["section"] == "wd" and "error" in result, result
    assert {k: store.client.dump(store.k("wd", k)) for k in ("procs", "info", "lock")} == before
    assert before["lock"] is None
