"""A host whose clock is 45 s behind the others, on real Redis and RabbitMQ with real workers.

The store judges liveness and leases by its own clock (``TIME``), so the skewed worker process
is never taken for dead, its job is never abandoned nor run twice; it says once that its clock
is off.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.apps.watchdog import build
from tests.conftest import ServerEnv
from tests.helpers import DramatiqProcess, wait_until

pytestmark = pytest.mark.integration


def test_a_worker_45s_behind_is_never_taken_for_dead(server_env: ServerEnv, artifacts: Path) -> None:
    # Given a healthy host that only sweeps, and a worker host whose clock is 45 s behind
    app = build(server_env)
    store = server_env.store()
    r = server_env.redis()
    healthy = DramatiqProcess(
        "apps.watchdog", server_env, artifacts / "healthy.log", processes=1, threads=1, extra=("-Q", "elsewhere")
    )
    skewed_env = ServerEnv(server_env)
    skewed_env.__dict__.update(server_env.__dict__)
    skewed_env["DR_TEST_CLOCK_OFFSET"] = "-45"
    skewed = DramatiqProcess("apps.watchdog", skewed_env, artifacts / "skewed.log", processes=1, threads=2)
    lock = f"{server_env.prefix}:wd:lock"
    try:
        healthy.start(ready=False)
        skewed.start()
        healthy.wait_ready()

        # When the skewed host runs a job (holding its key's lease) through many of the healthy host's sweeps
        charged = app.charge.send(order_id=7, tag="c")
        wait_until(lambda: (j := store.get_job(charged.message_id)) and j.status.value == "running", timeout=30)
        wait_until(
            lambda: re.search(r"clock is 4[456]s behind the store's", skewed.log()), timeout=30, what="the skew warning"
        )
        sweeps: set[bytes] = set()

        def swept_past_abandon_after() -> bool:
            value = r.get(lock)
            if value is not None:
                sweeps.add(value)
            return len(sweeps) >= 12  # 12 sweeps 0.5 s apart: twice the 3 s abandon_after

        wait_until(swept_past_abandon_after, timeout=60, interval=0.1, what="a dozen sweeps")

        # Then the job still runs, and its process counts as alive
        record = store.get_job(charged.message_id)
        assert record is not None and record.status.value == "running", record
        assert all(p.alive for p in store.worker_processes() if "elsewhere" not in str(p))
        assert not [p for p in store.worker_processes() if not p.alive]

        # And once released it is done, having run once
        app.effects.set(app.fx("release:c"), 1)
        wait_until(lambda: (j := store.get_job(charged.message_id)) and j.status.value == "done", timeout=30)
    finally:
        skewed.stop()
        healthy.stop()
    record = store.get_job(charged.message_id)
    assert record is not None and [e.status for e in record.events if e.status != "queued"] == ["running", "done"]
    assert int(app.effects.get(app.fx("charge:7:runs")) or 0) == 1
    assert "taken for dead" not in skewed.log()
    assert len(re.findall(r"clock is 4[456]s behind", skewed.log())) == 1  # said once
