"""What users rely on from keys, ``unique`` and ``find_jobs(key=)``, with real ``dramatiq``
worker processes on real Redis and RabbitMQ (``tests/apps/semantics.py``, ``tests/apps/cron.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

import dramatiq_reliable as dr
from tests.apps.semantics import build
from tests.conftest import ServerEnv
from tests.helpers import DramatiqProcess, wait_until
from tests.integration.test_cron import FAST, SchedulerProcess, counts, with_env

pytestmark = pytest.mark.integration


def finished(store: dr.Store, *messages) -> bool:
    return all((r := store.get_job(m.message_id)) is not None and r.status.terminal for m in messages)


def ran(env: ServerEnv, name: str) -> int:
    return int(env.redis().get(f"{env.prefix}:fx:{name}") or 0)


def test_keys_are_scoped_per_actor_and_found_by_int(server_env: ServerEnv, artifacts: Path) -> None:
    app = build(server_env)
    with DramatiqProcess("apps.semantics", server_env, artifacts / "worker.log", processes=1, threads=2):
        # Given an invoice for order 7 that completed its key "7"
        first = app.invoice.send(7)
        wait_until(lambda: finished(app.store, first), timeout=30, what="the invoice")
        # When another actor whose key also renders "7" is sent, and the invoice again
        shipped = app.ship.send(7)
        again = app.invoice.send(7)
        wait_until(lambda: finished(app.store, shipped, again), timeout=30, what="the shipment and the copy")

    # Then the shipment ran (it is no duplicate of the invoice), the second invoice did not
    assert (ran(server_env, "invoice:7"), ran(server_env, "ship:7")) == (1, 1)
    assert app.store.get_job(shipped.message_id).status is dr.Status.DONE
    assert app.store.get_job(again.message_id).duplicate_of == first.message_id
    # And all three are found by the business key given as an int, as it was sent
    found = app.store.find_jobs(key=("order_id", 7))
    assert sorted(r.id for r in found) == sorted(m.message_id for m in (first, shipped, again))


def test_unique_refuses_only_while_pending_then_the_same_send_is_a_new_job(
    server_env: ServerEnv, artifacts: Path
) -> None:
    app = build(server_env)
    with DramatiqProcess("apps.semantics", server_env, artifacts / "worker.log", processes=1, threads=2):
        # Given a unique job without a key, running
        first = app.refresh.send("a", seconds=0.5)
        with pytest.raises(dr.DuplicateJob):
            app.refresh.send("a", seconds=0.5)  # refused while it is queued or running
        wait_until(lambda: finished(app.store, first), timeout=30, what="the first refresh")
        # When the same send is made after it finished
        second = app.refresh.send("a", seconds=0.5)
        wait_until(lambda: finished(app.store, second), timeout=30, what="the second refresh")
        # And a unique actor with a key completes its key, then is sent again
        synced = app.sync.send("b")
        wait_until(lambda: finished(app.store, synced), timeout=30, what="the sync")
        copy = app.sync.send("b")  # not refused: the first one finished
        wait_until(lambda: finished(app.store, copy), timeout=30, what="the sync's copy")
        third = app.refresh.send("a", seconds=0.5)  # and again after the second one finished
        wait_until(lambda: finished(app.store, third), timeout=30, what="the third refresh")

    # Then the unique job without a key ran each time it was sent once the previous one finished
    assert [app.store.get_job(m.message_id).status for m in (first, second, third)] == [dr.Status.DONE] * 3
    assert ran(server_env, "refresh:a") == 3
    # And the one with a key kept its idempotency: the copy is a skipped duplicate
    assert ran(server_env, "sync:b") == 1
    assert app.store.get_job(copy.message_id).duplicate_of == synced.message_id


def test_a_unique_cron_actor_runs_every_tick(server_env: ServerEnv, artifacts: Path) -> None:
    # Given a per-second schedule of a unique actor without a key, a worker and a scheduler
    env = with_env(server_env, DR_TEST_CRON_UNIQUE="1", DR_TEST_CRON_COUNT="1")
    with DramatiqProcess("apps.cron", env, artifacts / "worker.log", processes=1, threads=2):
        scheduler = SchedulerProcess(env, artifacts / "scheduler.log", *FAST).start()
        try:
            # Then every tick runs, not only the first (each job finishes within its second)
            wait_until(lambda: len(counts(env, "ran")) >= 4, timeout=40, what="4 ticks run")
        finally:
            scheduler.stop()
    assert set(counts(env, "ran").values()) == {1}
