"""The store contract for the per-minute counters: the same tests over MemoryStore and RedisStore."""

from __future__ import annotations

import dramatiq_reliable as dr
from tests.helpers import wait_until

NOW = 1_763_700_000_000
MINUTE = NOW // 60_000


def finish(job_id: str, outcome: str, *, actor: str = "invoice", wait: int | None = None, now: int = NOW) -> dict:
    st = {"a": actor, "q": "default", "o": outcome}
    if wait is not None:
        st["wait_ms"] = wait
    return {"k": "finish", "id": job_id, "job": {"outcome": outcome, "att": 1, "actor": actor}, "st": st}


def test_final_writes_count_per_minute_and_actor(store) -> None:
    # Given jobs ending in one batch: two done, one retried, one dead-lettered, one deferred
    ops = [
        finish("a", "done", wait=40),
        finish("b", "done", actor="email", wait=900),
        finish("c", "retrying", wait=10),
        finish("d", "failed"),
        finish("e", "deferred", wait=99_999),
    ]
    store.apply({"now_ms": NOW, "ops": ops})
    # and one more in the next minute
    store.apply({"now_ms": NOW + 60_000, "ops": [finish("f", "done", wait=0)]})
    # Then each minute holds its counters, a failed job counting as a failed attempt and a dead one
    got = store.stats_minutes(MINUTE - 1, MINUTE + 1)
    assert got[MINUTE] == {
        "a\tinvoice\tdone": 1,
        "a\temail\tdone": 1,
        "a\tinvoice\tfailed": 2,
        "a\tinvoice\tdead": 1,
        "w\tdefault": 900,
    }
    assert got[MINUTE + 1] == {"a\tinvoice\tdone": 1, "w\tdefault": 0}  # a wait of 0 is a wait
    assert MINUTE - 1 not in got
    # and the record itself was written as before, in the same call
    assert store.get_job("a").status.value == "done"


def test_the_counters_expire(store) -> None:
    # Given a minute's counters kept 1 ms
    store.apply({"now_ms": NOW, "ops": [{**finish("a", "done"), "st": {"a": "x", "o": "done", "retention_ms": 1}}]})
    # Then they are gone once that has passed on the store's clock
    if isinstance(store, dr.MemoryStore):
        store.clock = lambda: 10**14
    wait_until(lambda: store.stats_minutes(MINUTE, MINUTE) == {}, timeout=5, what="the counters to expire")


def test_a_write_replayed_after_an_outage_counts_in_the_minute_it_happened(store) -> None:
    # Given a final write made during an outage (it carries its own time) and applied 5 minutes later
    late = {**finish("a", "done", wait=5), "at_ms": NOW}
    store.apply({"now_ms": NOW + 5 * 60_000, "ops": [late]})
    # Then it counts in the minute it happened, not in the minute it reached the store
    got = store.stats_minutes(MINUTE, MINUTE + 5)
    assert got == {MINUTE: {"a\tinvoice\tdone": 1, "w\tdefault": 5}}
