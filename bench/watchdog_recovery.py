"""Kill -9 a worker process mid-job on Redis: how long until the job runs again?

With the Watchdog, the sweep finds the dead process after ``abandon_after`` and forces
Dramatiq's recovery of its unacked messages; without it, they come back when Dramatiq's
random maintenance (0.1 % of the dispatches on that queue, once the process's broker
heartbeat is 60 s old) happens to fire.

Dramatiq's master stops the whole instance when one of its workers dies, so a supervisor
restarts it: here, at once. The time measured is from the kill to the job's next start
(the "redelivered" event of its record).

Usage::

    python bench/watchdog_recovery.py --mode fast --mode default --mode none --runs 2

Needs Redis at ``DR_TEST_REDIS`` (default redis://127.0.0.1:6379); uses its databases 14
and 15 under a unique prefix, removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.apps.watchdog import build  # noqa: E402
from tests.conftest import REDIS, cleanup_env, make_env  # noqa: E402
from tests.helpers import DramatiqProcess, wait_until  # noqa: E402

MODES = {
    "fast": {"heartbeat_interval": 0.5, "abandon_after": 3, "sweep_interval": 0.5},
    "default": {"heartbeat_interval": 5, "abandon_after": 30, "sweep_interval": 5},
    "none": None,
}


def one_run(mode: str, max_wait: float, logs: Path) -> float | None:
    ns = "b" + uuid.uuid4().hex[:10]
    env = make_env("redis", REDIS, None, ns)
    options = MODES[mode]
    if options is None:
        env["DR_TEST_WATCHDOG"] = "0"
    else:
        env = env.with_options(**options)
    app = build(env)
    store = env.store()
    log = logs / f"{mode}-{ns}.log"
    worker = DramatiqProcess("apps.watchdog", env, log, processes=2, threads=8)
    try:
        worker.start()
        job = app.hold.send(ns)
        record = wait_until(
            lambda: (r := store.get_job(job.message_id)) and r.status.value == "running" and r,
            timeout=60,
            what="the job to run",
        )
        pid = int(str(record.worker).split(":")[1])
        killed = time.time()
        os.kill(pid, signal.SIGKILL)
        assert worker.proc is not None
        worker.proc.wait(timeout=120)  # the master stops the instance
        worker.start()  # the supervisor restarts it at once

        def again() -> float | None:
            r = store.get_job(job.message_id)
            runs = [e for e in (r.events if r else []) if e.status == "running"]
            return runs[1].at.timestamp() if len(runs) > 1 else None

        try:
            started = wait_until(again, timeout=max_wait, interval=0.2, what="the job to run again")
        except AssertionError:
            return None
        app.effects.set(app.fx(f"release:{ns}"), 1)
        wait_until(lambda: store.get_job(job.message_id).status.value == "done", timeout=60, what="done")
        return started - killed
    finally:
        worker.stop(timeout=30)
        store.close()
        cleanup_env(env, REDIS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", action="append", choices=sorted(MODES), help="repeatable; default: all")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--max-wait", type=float, default=1800, help="seconds to wait for a redelivery")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that workers and keys are cleaned up
    logs = Path(tempfile.mkdtemp(prefix="wd-recovery-"))
    results: dict[str, list[float | None]] = {}
    for mode in args.mode or ["fast", "default", "none"]:
        for _ in range(args.runs):
            seconds = one_run(mode, args.max_wait, logs)
            results.setdefault(mode, []).append(seconds)
            shown = "no redelivery within --max-wait" if seconds is None else f"{seconds:.1f} s"
            print(f"{mode:8s} kill -> running again: {shown}", flush=True)
    print(json.dumps({"logs": str(logs), "results": results, "options": MODES}, indent=2))


if __name__ == "__main__":
    main()
