"""Every order sent twice, worker processes killed -9 at random moments: no completed step twice.

The ``order`` actor of ``tests/apps/faults.py`` (``idempotency_key="order:{order_id}"``, two
``dr.once`` steps, *charge* then *email*, each counted in Redis outside the worker) gets each
order twice, back to back, as a client that retries its request does. While they run, a worker
process is killed at random moments; Dramatiq's master then stops the instance, which is
started again at once, as a supervisor does. The second message of an order waits while the
first holds the key's lease; when the first dies mid-job, either may finish the order.

What is measured is what ``dr.once`` promises: a kill lands anywhere except between a step's
side effect and the storing of its result (the window no library can close; see the app's
``KillSwitch``). So every side effect counted twice is a completed, checkpointed step run
again. Sizes (see ``tests/reliability/README.md``): ``DR_DUP_ORDERS`` (default 100),
``DR_DUP_KILLS`` (default 3), ``DR_DUP_WORK`` (seconds between the steps, default 0.3),
``DR_DUP_SEED`` (the random moments; default: a new seed, reported).
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from tests.apps.faults import build
from tests.conftest import ServerEnv
from tests.helpers import DramatiqProcess, wait_until
from tests.reliability.burst import FINISHED
from tests.reliability.conftest import Report

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

PROCESSES, THREADS = 2, 8


def test_orders_sent_twice_with_kill_9_at_random_moments(server_env: ServerEnv, report: Report, artifacts: Path):
    orders = int(os.getenv("DR_DUP_ORDERS", "100"))
    kills = int(os.getenv("DR_DUP_KILLS", "3"))
    work = float(os.getenv("DR_DUP_WORK", "0.3"))
    seed = int(os.getenv("DR_DUP_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    app = build(server_env)
    effects, fx = app.effects, app.fx

    def done() -> int:
        return int(effects.hlen(fx("email")))

    # Given a worker instance of 2 processes x 8 threads, and every order sent twice
    fleet = DramatiqProcess("apps.faults", server_env, artifacts / "workers.log", processes=PROCESSES, threads=THREADS)
    fleet.start()
    sent = []
    for i in range(orders):
        sent += [app.order.send(order_id=i, work=work), app.order.send(order_id=i, work=work)]
    landed = []
    try:
        # When a worker process is killed -9 at random moments while the orders run
        for fraction in sorted(rng.uniform(0.05, 0.8) for _ in range(kills)):
            wait_until(lambda f=fraction: done() >= f * orders, timeout=120, what=f"{fraction:.0%} of the orders")
            time.sleep(rng.uniform(0, work))
            if done() >= orders:
                break
            landed.append(done())
            fleet.kill_worker(rng.randrange(PROCESSES), sig=signal.SIGUSR2)  # it SIGKILLs itself
            assert fleet.proc is not None
            fleet.proc.wait(timeout=90)
            fleet.start()
        # Then every message finishes (done, or skipped as the duplicate of its order's other one)
        wait_until(
            lambda: sum(app.store.count_jobs(FINISHED).values()) >= len(sent),
            timeout=120 + orders * work / THREADS,
            interval=0.25,
            what="every message finished",
        )
    finally:
        fleet.stop()

    charges = {int(k): int(v) for k, v in effects.hgetall(fx("charge")).items()}
    emails = {int(k): int(v) for k, v in effects.hgetall(fx("email")).items()}
    records = [app.store.get_job(m.message_id) for m in sent]
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r.status.value if r else "missing"] = statuses.get(r.status.value if r else "missing", 0) + 1
    figures = {
        "scenario": "each order sent twice, kill -9",
        "broker": server_env.kind,
        "orders": orders,
        "messages": len(sent),
        "kills": len(landed),
        "orders_done_at_kills": landed,
        "seed": seed,
        "lost": sum(1 for i in range(orders) if emails.get(i, 0) == 0),
        "duplicated": sum(c - 1 for c in charges.values() if c > 1) + sum(c - 1 for c in emails.values() if c > 1),
        "non_terminal": sum(1 for r in records if r is None or not r.status.terminal),
        "statuses": statuses,
    }
    report.write(figures)
    assert (figures["lost"], figures["duplicated"], figures["non_terminal"]) == (0, 0, 0), figures
    assert landed, "no kill landed while orders ran"
