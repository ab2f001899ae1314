"""The cron claims of the store contract, on every store (MemoryStore and RedisStore)."""

from __future__ import annotations

import dramatiq_reliable as dr
from dramatiq_reliable._clock import now_ms

NOW = now_ms() // 1000 * 1000
LEASE, GRACE = 2_000, 10_000


def claim(store: dr.Store, fire: int, owner: str, now: int, name: str = "s") -> tuple[str, str]:
    return store.cron_claim(name, fire, f"job-{fire}", owner=owner, lease_ms=LEASE, grace_ms=GRACE, now=now)


def test_the_first_claim_wins_and_the_others_learn_the_holder(store: dr.Store) -> None:
    assert claim(store, NOW, "a", NOW) == ("claimed", "a")
    assert claim(store, NOW, "b", NOW + 1) == ("taken", "a")
    assert claim(store, NOW, "a", NOW + 2) == ("taken", "a")
    # Another tick, or another schedule's tick at the same time, is claimed on its own
    assert claim(store, NOW + 1000, "b", NOW + 1000) == ("claimed", "b")
    assert claim(store, NOW, "b", NOW, name="other") == ("claimed", "b")


def test_a_confirmed_tick_is_never_taken_over(store: dr.Store) -> None:
    claim(store, NOW, "a", NOW)
    assert store.cron_confirm("s", NOW, owner="a", now=NOW + 10) == ("confirmed", "a")
    assert store.cron_sweep(["s"], owner="b", lease_ms=LEASE, now=NOW + LEASE + 1) == []
    assert claim(store, NOW, "b", NOW + LEASE + 2) == ("taken", "a")


def test_a_lapsed_claim_is_retaken_within_the_grace_then_given_up(store: dr.Store) -> None:
    claim(store, NOW, "a", NOW)
    # Within the lease: nothing to take over
    assert store.cron_sweep(["s"], owner="b", lease_ms=LEASE, now=NOW + LEASE - 1) == []
    # After it: b takes the tick over (with its job id), once
    taken = store.cron_sweep(["s"], owner="b", lease_ms=LEASE, now=NOW + LEASE)
    assert taken == [{"o": "retake", "name": "s", "fire": NOW, "job": f"job-{NOW}", "by": "a"}]
    assert store.cron_sweep(["s"], owner="c", lease_ms=LEASE, now=NOW + LEASE + 1) == []
    # If b's claim lapses too and the grace is over, the tick is given up as missed
    missed = store.cron_sweep(["s"], owner="c", lease_ms=LEASE, now=NOW + GRACE + 1)
    assert missed == [{"o": "missed", "name": "s", "fire": NOW, "job": f"job-{NOW}", "by": "b"}]
    assert store.cron_last(["s"])["s"].state == "missed"
    assert store.cron_sweep(["s"], owner="c", lease_ms=LEASE, now=NOW + GRACE + 2) == []


def test_a_late_confirm_still_records_the_enqueue(store: dr.Store) -> None:
    claim(store, NOW, "a", NOW)
    store.cron_sweep(["s"], owner="b", lease_ms=LEASE, now=NOW + LEASE)
    # a enqueued it after all: told its claim was taken over, it still records the tick as sent
    assert store.cron_confirm("s", NOW, owner="a", now=NOW + LEASE + 1) == ("late", "b")
    # and b, which enqueued a second copy (the same job id), is told a sent it first
    assert store.cron_confirm("s", NOW, owner="b", now=NOW + LEASE + 2) == ("late", "a")
    last = store.cron_last(["s"])["s"]
    assert (last.state, last.by) == ("sent", "a")
    assert store.cron_confirm("s", NOW - 1000, owner="a", now=NOW) == ("gone", "")


def test_a_released_claim_can_be_retried_after_the_delay_by_anyone(store: dr.Store) -> None:
    claim(store, NOW, "a", NOW)
    assert not store.cron_release("s", NOW, owner="b", retry_ms=500, now=NOW + 1)
    assert store.cron_release("s", NOW, owner="a", retry_ms=500, now=NOW + 1)
    assert store.cron_sweep(["s"], owner="a", lease_ms=LEASE, now=NOW + 400) == []
    retake = store.cron_sweep(["s"], owner="a", lease_ms=LEASE, now=NOW + 501)
    assert [(t["o"], t["by"]) for t in retake] == [("retake", "a")]


def test_the_last_tick_is_the_latest_claimed(store: dr.Store) -> None:
    assert store.cron_last(["s", "t"]) == {}
    claim(store, NOW + 1000, "a", NOW + 1000)
    claim(store, NOW, "b", NOW + 1001)  # a late claim of an older tick does not replace it
    last = store.cron_last(["s", "t"])
    assert list(last) == ["s"]
    assert (last["s"].job_id, last["s"].state, last["s"].by) == (f"job-{NOW + 1000}", "pending", "a")
    assert last["s"].fire_at.timestamp() * 1000 == NOW + 1000
    store.cron_confirm("s", NOW, owner="b", now=NOW + 1002)
    assert store.cron_last(["s"])["s"].state == "pending"
    store.cron_confirm("s", NOW + 1000, owner="a", now=NOW + 1003)
    assert store.cron_last(["s"])["s"].state == "sent"


def test_sweeps_see_only_the_schedules_named(store: dr.Store) -> None:
    claim(store, NOW, "a", NOW, name="mine")
    claim(store, NOW, "a", NOW, name="theirs")
    taken = store.cron_sweep(["mine"], owner="b", lease_ms=LEASE, now=NOW + LEASE)
    assert [t["name"] for t in taken] == ["mine"]
