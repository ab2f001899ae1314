"""The fleet-wide alert throttle, the same over every store (``store/lua/50_alerts.lua``)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

import dramatiq_reliable as dr
from dramatiq_reliable._clock import now_ms

T0 = 1_700_000_000_000
WIN = 60_000


def occur(
    store: dr.Store,
    now: int,
    *,
    kind: str = "failed",
    actor: str = "send_invoice",
    etype: str = "SMTPError",
    job: str = "j1",
    win: int = WIN,
    **extra: Any,
) -> dict[str, Any]:
    section = {"kind": kind, "actor": actor, "etype": etype, "queue": "default", "msg": f"boom {job}", "window_ms": win}
    section.update(extra)
    result = store.apply({"now_ms": now, "ops": [{"k": "alert", "id": job, "al": section}]})[0]
    assert "error" not in result, result
    return dict(result["alert"])


def due(store: dr.Store, now: int) -> list[dict[str, Any]]:
    result = store.apply({"now_ms": now, "ops": [{"k": "alerts_due", "id": "-", "al": {"limit": 100}}]})[0]
    assert "error" not in result, result
    entries = result.get("due")
    return list(entries) if isinstance(entries, list) else []  # Lua encodes an empty list as {}


def test_one_notification_per_window_then_the_count(store: dr.Store) -> None:
    # Given a first failure: it is notified
    assert occur(store, T0) == {"notify": 1, "sup": 0}

    # When more come within the window, they are suppressed and counted
    for i in range(1, 5):
        assert occur(store, T0 + i * 1000, job=f"j{i + 1}") == {"notify": 0, "sup": i}

    # Then the first one after the window carries how many, and since when
    assert occur(store, T0 + WIN, job="j9") == {"notify": 1, "sup": 4, "since": T0 + 1000}
    # And a new window starts with nothing suppressed
    assert occur(store, T0 + WIN + 1, job="j10") == {"notify": 0, "sup": 1}


def test_keys_are_kind_actor_and_error_type(store: dr.Store) -> None:
    assert occur(store, T0)["notify"] == 1
    assert occur(store, T0 + 1)["notify"] == 0
    assert occur(store, T0 + 2, etype="KeyError")["notify"] == 1
    assert occur(store, T0 + 3, actor="other")["notify"] == 1
    assert occur(store, T0 + 4, kind="retrying")["notify"] == 1
    assert occur(store, T0 + 5, kind="retrying")["notify"] == 0


def test_summary_is_due_when_the_window_ends_and_handed_out_once(store: dr.Store) -> None:
    # Given one notification and three suppressed occurrences
    occur(store, T0, job="a")
    for i, job in enumerate(["b", "c", "d"], 1):
        occur(store, T0 + i * 1000, job=job, keys={"order_id": job})

    # Then nothing is due before the window ends
    assert due(store, T0 + WIN - 1) == []

    # When it ends, one caller gets the summary: the count, the span, the latest example
    [entry] = due(store, T0 + WIN)
    assert entry["summary"] == 1
    assert (entry["kind"], entry["actor"], entry["etype"]) == ("failed", "send_invoice", "SMTPError")
    assert entry["q"] == "default" and json.loads(entry["keys"]) == {"order_id": "d"}
    assert int(entry["sup"]) == 3
    assert int(entry["since"]) == T0 + 1000 and int(entry["seen"]) == T0 + 3000
    assert entry["jid"] == "d" and entry["msg"] == "boom d"
    assert int(entry["win"]) == WIN

    # And nobody else gets it
    assert due(store, T0 + WIN + 1) == []

    # And the summary counts as the window's notification: the next occurrence is throttled
    assert occur(store, T0 + WIN + 2, job="e") == {"notify": 0, "sup": 1}
    [again] = due(store, T0 + 2 * WIN)
    assert int(again["sup"]) == 1


def test_a_new_notification_folds_in_the_pending_summary(store: dr.Store) -> None:
    occur(store, T0)
    occur(store, T0 + 1000)
    # The next occurrence after the window carries the count ...
    assert occur(store, T0 + WIN + 5)["sup"] == 1
    # ... so no summary is left to send
    assert due(store, T0 + 3 * WIN) == []


def test_nothing_suppressed_means_no_summary(store: dr.Store) -> None:
    occur(store, T0)
    assert due(store, T0 + 2 * WIN) == []


def test_late_occurrences_are_counted_not_notified(store: dr.Store) -> None:
    # Given an occurrence applied long after it happened (buffered while the store was down)
    assert occur(store, T0 + 30_000, at_ms=T0) == {"notify": 0, "sup": 1}
    # Then its summary is due at once
    [entry] = due(store, T0 + 30_001)
    assert int(entry["sup"]) == 1 and entry["summary"] == 1


def test_recovered_when_quiet_for_a_window(store: dr.Store) -> None:
    # Given a notified occurrence and a suppressed one, with recovered notices on
    occur(store, T0, quiet=True)
    occur(store, T0 + 10_000, quiet=True, job="j2")

    # When the window after the latest occurrence passes, the summary comes first
    [summary] = due(store, T0 + WIN)
    assert summary["summary"] == 1 and int(summary["sup"]) == 1
    assert due(store, T0 + WIN + 5_000) == []

    # Then the key is reported recovered once it was quiet for a whole window
    [recovered] = due(store, T0 + 10_000 + WIN)
    assert recovered["recovered"] == 1 and recovered["jid"] == "j2"
    assert due(store, T0 + 3 * WIN) == []

    # And the next occurrence starts afresh
    assert occur(store, T0 + 10_000 + WIN + 1, quiet=True) == {"notify": 1, "sup": 0}


def test_no_recovered_notice_unless_asked(store: dr.Store) -> None:
    occur(store, T0)
    assert due(store, T0 + 10 * WIN) == []


def test_decided_in_the_same_call_as_the_jobs_final_write(store: dr.Store) -> None:
    # Given a job's finish op carrying JobState's section and Alerts' section
    job = {"actor": "send_invoice", "queue": "default", "outcome": "failed", "att": 1, "detail": "dead-lettered"}
    al = {"kind": "failed", "actor": "send_invoice", "etype": "SMTPError", "window_ms": WIN}
    now = now_ms()
    [result] = store.apply({"now_ms": now, "ops": [{"k": "finish", "id": "job-1", "job": job, "al": al}]})

    # Then one call wrote the record and decided the alert
    assert result["alert"] == {"notify": 1, "sup": 0}
    record = store.get_job("job-1")
    assert record is not None and record.status == dr.Status.FAILED


def test_one_notification_when_many_processes_race(redis_store: dr.RedisStore) -> None:
    # Given 8 clients (as 8 worker processes) reporting 400 failures of one key at once
    stores = [dr.RedisStore(_url(redis_store), prefix=redis_store.prefix[:-1]) for _ in range(8)]
    notified: list[int] = []
    lock = threading.Lock()

    def worker(s: dr.Store, n: int) -> None:
        for i in range(50):
            decision = occur(s, T0 + i, job=f"{n}-{i}")
            with lock:
                notified.append(decision["notify"])

    threads = [threading.Thread(target=worker, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Then exactly one was notified, and the others are all counted for the summary
    assert len(notified) == 400 and sum(notified) == 1
    [entry] = due(redis_store, T0 + WIN)
    assert int(entry["sup"]) == 399
    for s in stores:
        s.close()


def _url(store: dr.RedisStore) -> str:
    kw = store.client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw['db']}"


def test_throttle_state_expires(store: dr.RedisStore) -> None:
    # A throttle is kept two windows and a minute after its latest occurrence, no longer
    occur(store, T0, win=1000)
    ttl = store.client.pttl(store.k("alert", "failed:send_invoice:SMTPError"))
    assert 0 < ttl <= 2 * 1000 + 60_000


@pytest.mark.parametrize("limit", [1])
def test_due_takes_at_most_limit(store: dr.Store, limit: int) -> None:
    for actor in ("a", "b", "c"):
        occur(store, T0, actor=actor)
        occur(store, T0 + 1, actor=actor)
    result = store.apply({"now_ms": T0 + WIN, "ops": [{"k": "alerts_due", "id": "-", "al": {"limit": limit}}]})[0]
    assert len(result["due"]) == 1
    assert len(due(store, T0 + WIN)) == 2
