"""The Watchdog's store handlers (``30_watchdog.lua``), over every store.

Time is the batch's ``now``: each test moves it by hand, so nothing here waits.
"""

from __future__ import annotations

from typing import Any

import pytest

import dramatiq_reliable as dr
from dramatiq_reliable._clock import now_ms

A, B, C = "host:1:aaaaaa", "host:2:bbbbbb", "host:3:cccccc"
AB = 3000  # abandon_after, ms
KEEP = 3_600_000


@pytest.fixture
def t0() -> int:
    return now_ms()


def apply(store: dr.Store, at: int, *ops: dict[str, Any]) -> list[dict[str, Any]]:
    return store.apply({"now_ms": at, "ops": list(ops)})


def beat(store: dr.Store, proc: str, at: int, *, sweep: bool = True, info: dict[str, Any] | None = None) -> Any:
    section: dict[str, Any] = {"proc": proc, "abandon_ms": AB, "hist": 50, "info": info or {"host": "host", "pid": 1}}
    if sweep:
        section.update(sweep_ms=500, keep_ms=KEEP)
    return apply(store, at, {"k": "beat", "id": "-", "wd": section})[0]


def swept(result: dict[str, Any]) -> dict[str, Any]:
    """The sweep part of a beat's result, with Lua's empty objects read as empty lists."""
    sweep = result["sweep"]
    return {k: (v if isinstance(v, list) else []) for k, v in sweep.items()}


def enqueue(store: dr.Store, job: str, at: int) -> None:
    section = {"actor": "charge", "queue": "default", "maxr": 3, "enq_ms": at, "keys": {"order_id": "7"}, "hist": 50}
    apply(store, at, {"k": "enqueue", "id": job, "job": section})


def start(store: dr.Store, job: str, proc: str, at: int, *, att: int = 1, idem: dict[str, Any] | None = None) -> Any:
    """A job's start as the bundle writes it: Idempotency's claim first (if any), then the start."""
    claim: dict[str, Any] = {"outcome": "run"}
    wd: dict[str, Any] = {"proc": proc, "abandon_ms": AB, "a": "charge", "q": "default"}
    if idem is not None:
        claim = apply(store, at, {"k": "claim", "id": job, "idem": idem})[0]
        if claim["outcome"] != "run":
            return claim  # the job does not run: nothing else is written
        wd.update(lk=idem["key"], lt=idem["token"])
    op: dict[str, Any] = {
        "k": "start",
        "id": job,
        "job": {"att": att, "worker": f"{proc.rsplit(':', 1)[0]}:Thread-1", "hist": 50},
        "wd": wd,
    }
    return {**claim, **apply(store, at, op)[0]}


def finish(store: dr.Store, job: str, proc: str, at: int, *, outcome: str = "done", att: int = 1) -> None:
    op = {
        "k": "finish",
        "id": job,
        "job": {"outcome": outcome, "att": att, "detail": outcome, "hist": 50},
        "wd": {"proc": proc},
    }
    apply(store, at, op)


def status(store: dr.Store, job: str) -> str:
    record = store.get_job(job)
    assert record is not None
    return record.status.value


def processes(store: dr.Store) -> dict[str, dr.WorkerProcess]:
    return {p.id: p for p in store.worker_processes()}


def test_the_jobs_of_a_silent_process_become_abandoned_after_its_deadline(store: dr.Store, t0: int) -> None:
    # Given process A running a job, and process B alive
    beat(store, A, t0, sweep=False)
    enqueue(store, "j1", t0)
    start(store, "j1", A, t0 + 10)
    assert processes(store)[A].running == 1

    # When B sweeps before A's deadline, nothing happens
    assert swept(beat(store, B, t0 + AB - 1))["abandoned"] == []
    assert status(store, "j1") == "running"

    # When B sweeps after it, A is dead and its job abandoned
    sweep = swept(beat(store, B, t0 + AB + 600))
    assert sweep["dead"] == [A]
    [item] = sweep["abandoned"]
    assert item["id"] == "j1" and item["proc"] == A and item["actor"] == "charge" and item["att"] == 1
    assert item["keys"] == {"order_id": "7"} and item["maxr"] == 3
    record = store.get_job("j1")
    assert record is not None and record.status.value == "abandoned"
    assert A in record.events[-1].detail and "stopped heartbeating" in record.events[-1].detail
    assert record.attempts == 1

    # And the process is listed dead, with the job it ran
    found = processes(store)
    assert not found[A].alive and found[A].running == 1 and found[A].dead_since is not None
    assert found[B].alive


def test_a_process_that_beats_is_never_swept(store: dr.Store, t0: int) -> None:
    for at in (t0, t0 + 2000, t0 + 4000, t0 + 6000):
        beat(store, A, at, sweep=False)
    start(store, "j1", A, t0 + 1)
    assert swept(beat(store, B, t0 + 6500))["abandoned"] == []
    assert status(store, "j1") == "running"


def test_one_sweep_per_sweep_interval_across_processes(store: dr.Store, t0: int) -> None:
    # Given two processes beating at the same moment, only one of them sweeps
    results = [beat(store, A, t0), beat(store, B, t0)]
    assert ["sweep" in r for r in results] == [True, False]
    # Not again before the interval (500 ms) is over, then again
    assert "sweep" not in beat(store, B, t0 + 499)
    assert "sweep" in beat(store, B, t0 + 500)


def test_a_job_redelivered_to_another_process_is_not_abandoned(store: dr.Store, t0: int) -> None:
    # Given a job started on A, then delivered again to B (RabbitMQ redelivers at once)
    beat(store, A, t0, sweep=False)
    start(store, "j1", A, t0 + 1)
    beat(store, B, t0 + 100, sweep=False)
    start(store, "j1", B, t0 + 200)
    # When A is found dead, the job keeps running on B
    assert swept(beat(store, B, t0 + AB + 1))["abandoned"] == []
    assert status(store, "j1") == "running"


def test_an_abandoned_job_delivered_again_runs_with_its_attempts_kept(store: dr.Store, t0: int) -> None:
    beat(store, A, t0, sweep=False)
    enqueue(store, "j1", t0)
    start(store, "j1", A, t0 + 1, att=2)
    swept(beat(store, B, t0 + AB + 1))
    assert status(store, "j1") == "abandoned"

    start(store, "j1", B, t0 + AB + 100, att=2)
    record = store.get_job("j1")
    assert record is not None and record.status.value == "running" and record.attempts == 2
    assert record.events[-1].detail.startswith("redelivered: attempt 2")

    finish(store, "j1", B, t0 + AB + 200, att=2)
    assert [e.status for e in store.get_job("j1").events][-4:] == ["running", "abandoned", "running", "done"]


def test_finished_jobs_leave_their_process(store: dr.Store, t0: int) -> None:
    beat(store, A, t0, sweep=False)
    start(store, "j1", A, t0 + 1)
    finish(store, "j1", A, t0 + 2)
    assert processes(store)[A].running == 0
    assert swept(beat(store, B, t0 + AB + 1))["abandoned"] == []
    assert status(store, "j1") == "done"


def test_a_dead_process_releases_the_idempotency_leases_it_held(store: dr.Store, t0: int) -> None:
    # Given A running a job that holds the lease of its key
    lease = {"key": "k:charge:7", "token": "j1|host:1:Thread-1|1", "lease_ms": 60_000}
    beat(store, A, t0, sweep=False)
    assert start(store, "j1", A, t0 + 1, idem=lease)["outcome"] == "run"
    # While A lives, another delivery of the key is busy
    assert start(store, "j2", B, t0 + 2, idem={**lease, "token": "j2|host:2:Thread-1|1"})["outcome"] == "busy"

    # When A is found dead, its lease is released at once (not after 60 s)
    swept(beat(store, B, t0 + AB + 1))
    assert start(store, "j2", B, t0 + AB + 2, idem={**lease, "token": "j2|host:2:Thread-1|2"})["outcome"] == "run"


def test_a_lease_taken_over_by_another_process_is_kept(store: dr.Store, t0: int) -> None:
    # Given A's lease lost (expired: here, released without A knowing) and B took the key meanwhile
    short = {"key": "k:charge:8", "token": "j1|host:1:Thread-1|1", "lease_ms": 60_000}
    beat(store, A, t0, sweep=False)
    start(store, "j1", A, t0 + 1, idem=short)
    apply(
        store,
        t0 + 2,
        {
            "k": "finish",
            "id": "j1",
            "idem": {"key": short["key"], "token": short["token"], "outcome": "retrying", "ttl_ms": 1000},
        },
    )
    beat(store, B, t0 + 1500, sweep=False)
    assert start(store, "j2", B, t0 + 1500, idem={**short, "token": "B"})["outcome"] == "run"
    assert processes(store)[A].running == 1

    # When A is found dead, B's lease stays
    swept(beat(store, C, t0 + AB + 1))
    assert start(store, "j3", C, t0 + AB + 2, idem={**short, "token": "C"})["outcome"] == "busy"


def test_a_duplicate_delivery_is_not_tracked_as_running(store: dr.Store, t0: int) -> None:
    key = {"key": "k:charge:9", "token": "t1", "lease_ms": 60_000}
    beat(store, A, t0, sweep=False)
    start(store, "j1", A, t0 + 1, idem=key)
    apply(
        store,
        t0 + 2,
        {
            "k": "finish",
            "id": "j1",
            "idem": {"key": key["key"], "token": key["token"], "outcome": "done", "ttl_ms": 60_000},
            "wd": {"proc": A},
        },
    )
    assert start(store, "j2", A, t0 + 3, idem={**key, "token": "t2"})["outcome"] == "duplicate"
    assert processes(store)[A].running == 0


def test_a_process_taken_for_dead_that_beats_again_takes_its_jobs_back(store: dr.Store, t0: int) -> None:
    # Given A (a RedisBroker worker) found dead while running a job
    info = {"host": "host", "pid": 1, "bid": "bid-A", "broker": "127.0.0.1:6379/0", "ns": "dramatiq", "queues": ["q"]}
    beat(store, A, t0, sweep=False, info=info)
    start(store, "j1", A, t0 + 1)
    swept(beat(store, B, t0 + AB + 1))
    assert status(store, "j1") == "abandoned" and processes(store)[A].recovering

    # When it beats again (it was frozen), its job runs again and nothing is left to recover
    result = beat(store, A, t0 + AB + 100, sweep=False, info=info)
    assert result["revived"] is True and result["back"] == 1 and not result.get("recovered")
    record = store.get_job("j1")
    assert record is not None and record.status.value == "running"
    assert "answers again" in record.events[-1].detail
    assert processes(store)[A].alive and not processes(store)[A].recovering


def test_a_revived_process_whose_messages_were_put_back_is_told(store: dr.Store, t0: int) -> None:
    info = {"host": "host", "pid": 1, "bid": "bid-A", "broker": "x", "ns": "dramatiq", "queues": ["q"]}
    beat(store, A, t0, sweep=False, info=info)
    swept(beat(store, B, t0 + AB + 1))
    apply(store, t0 + AB + 2, {"k": "recovered", "id": "-", "wd": {"procs": [A]}})
    assert beat(store, A, t0 + AB + 3, sweep=False, info=info)["recovered"] is True


def test_dead_redis_workers_are_pending_recovery_until_recovered(store: dr.Store, t0: int) -> None:
    # Given two dead processes, one on a RedisBroker, one on RabbitMQ (no broker id)
    info = {"host": "host", "pid": 1, "bid": "bid-A", "broker": "127.0.0.1:6379/0", "ns": "dramatiq", "queues": ["q"]}
    beat(store, A, t0, sweep=False, info=info)
    beat(store, C, t0, sweep=False)
    sweep = swept(beat(store, B, t0 + AB + 1))
    assert sorted(sweep["dead"]) == [A, C]
    [pending] = sweep["pending"]
    assert pending == {"proc": A, **{k: info[k] for k in ("bid", "broker", "ns", "queues")}}
    assert sweep["bids"] == ["bid-A"]

    # The next sweeps list it again, until a recovery says it is done
    assert swept(beat(store, B, t0 + AB + 600))["pending"] == [pending]
    apply(store, t0 + AB + 700, {"k": "recovered", "id": "-", "wd": {"procs": [A]}})
    assert swept(beat(store, B, t0 + AB + 1200))["pending"] == []


def test_dead_processes_are_forgotten_after_an_hour(store: dr.Store, t0: int) -> None:
    beat(store, A, t0, sweep=False)
    start(store, "j1", A, t0 + 1)
    swept(beat(store, B, t0 + AB + 1))
    assert A in processes(store)
    beat(store, B, t0 + AB + 1 + KEEP)
    assert A not in processes(store)


def test_stuck_marks_the_running_attempt_of_its_own_process_only(store: dr.Store, t0: int) -> None:
    beat(store, A, t0, sweep=False)
    enqueue(store, "j1", t0)
    start(store, "j1", A, t0 + 1)
    stack = [{"file": "app.py", "line": 12, "function": "charge", "code": "sock.recv(1)"}]

    def stuck(proc: str, att: int = 1, job: str = "j1") -> dict[str, Any]:
        section = {"proc": proc, "att": att, "stack": stack, "detail": "stuck: running for 5m", "hist": 50}
        return apply(store, t0 + 300_000, {"k": "stuck", "id": job, "wd": section})[0]

    # Another process, or another attempt, cannot mark it
    assert not stuck(B).get("marked") and not stuck(A, att=2).get("marked")
    assert status(store, "j1") == "running"
    # Its own process can, with the stack
    assert stuck(A)["marked"] is True
    record = store.get_job("j1")
    assert record is not None and record.status.value == "stuck" and record.stack == stack
    assert record.events[-1].detail == "stuck: running for 5m"
    # Once stuck, it is not marked again; a job without a record says so
    assert not stuck(A).get("marked")
    assert stuck(A, job="nope") == {"norec": True}

    # When it ends it is done, without its stack
    finish(store, "j1", A, t0 + 400_000)
    record = store.get_job("j1")
    assert record is not None and record.status.value == "done" and record.stack is None


def test_a_stuck_job_of_a_dead_process_is_abandoned(store: dr.Store, t0: int) -> None:
    beat(store, A, t0, sweep=False)
    start(store, "j1", A, t0 + 1)
    section = {"proc": A, "att": 1, "stack": [{"file": "f", "line": 1, "function": "g", "code": ""}], "hist": 50}
    apply(store, t0 + 2, {"k": "stuck", "id": "j1", "wd": section})
    swept(beat(store, B, t0 + AB + 1))
    assert status(store, "j1") == "abandoned"


def test_a_process_that_stops_is_forgotten_or_abandons_what_still_runs(store: dr.Store, t0: int) -> None:
    # A process without jobs is forgotten
    beat(store, A, t0, sweep=False)
    assert apply(store, t0 + 1, {"k": "bye", "id": "-", "wd": {"proc": A, "hist": 50}}) == [{}]
    assert A not in processes(store)

    # A process stopping with a job still running abandons it, and its messages are to be put back
    info = {"host": "host", "pid": 2, "bid": "bid-B", "broker": "x", "ns": "n", "queues": ["q"]}
    beat(store, B, t0, sweep=False, info=info)
    start(store, "j1", B, t0 + 1)
    [result] = apply(store, t0 + 2, {"k": "bye", "id": "-", "wd": {"proc": B, "hist": 50}})
    assert [item["id"] for item in result["abandoned"]] == ["j1"]
    record = store.get_job("j1")
    assert record is not None and record.status.value == "abandoned"
    assert "shut down before it finished" in record.events[-1].detail
    assert processes(store)[B].recovering
