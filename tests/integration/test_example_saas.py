"""The SaaS example (``examples/saas``): its walkthrough with real ``dramatiq`` workers, on both brokers.

The workers run ``dramatiq examples.saas.tasks`` with ``SAAS_QUICK=1``, isolated under the
test's names (store prefix, Redis namespace, queue prefix); the walkthrough runs as a user
runs it, ``python -m examples.saas.walkthrough``. ``DR_TEST_SAAS_BURST`` sizes its outage
(default 200 signups).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import dramatiq_reliable as dr
from tests.conftest import ServerEnv, delete_prefix
from tests.helpers import ROOT, DramatiqProcess, wait_until

pytestmark = pytest.mark.integration

#: Signups during the walkthrough's mail outage.
BURST = int(os.getenv("DR_TEST_SAAS_BURST", "200"))
QUEUES = ("emails", "billing", "reports")


def saas_env(env: ServerEnv) -> dict[str, str]:
    """The ``SAAS_*`` variables that put the example under this test's names."""
    return {
        "SAAS_BROKER": env.broker_url,
        "SAAS_NAMESPACE": env["DR_TEST_NAMESPACE"],
        "SAAS_STORE": f"{env.store_url}?prefix={env.prefix}",
        "SAAS_QUEUE_PREFIX": f"{env.prefix}_",
        "SAAS_QUICK": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }


@pytest.fixture
def saas(server_env: ServerEnv) -> Iterator[dict[str, str]]:
    yield saas_env(server_env)
    if server_env.kind == "rabbitmq":  # Redis keys go with the namespace and the prefix (conftest)
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(server_env.broker_url))
        channel = conn.channel()
        for name in QUEUES:
            for suffix in ("", ".DQ", ".XQ"):
                channel.queue_delete(f"{server_env.prefix}_{name}{suffix}")
        conn.close()


def walkthrough(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "examples.saas.walkthrough", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_walkthrough_on_a_real_broker(saas: dict[str, str], server_env: ServerEnv, artifacts: Path) -> None:
    data = server_env.redis()
    fx = f"{server_env.prefix}:saas:"

    def alerts() -> list[dict[str, Any]]:
        return [json.loads(a) for a in data.lrange(fx + "alerts", 0, -1)]

    # Given the example's workers on a real broker
    with DramatiqProcess("examples.saas.tasks", saas, artifacts / "worker.log", processes=1, threads=8):
        # When a newcomer runs the walkthrough
        result = walkthrough(saas, "--burst", str(BURST), "--timeout", "120")
        (artifacts / "walkthrough.log").write_text(result.stdout + result.stderr)
        if result.returncode == 0:  # the stuck report's alert goes out at a worker's next heartbeat
            wait_until(lambda: any(a["actor"] == "nightly_report" for a in alerts()), what="the stuck alert")

    # Then every step behaved, and says so
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    out = result.stdout
    for command in (
        "$ dramatiq-reliable jobs list --key order_id=4711",
        "$ dramatiq-reliable dead show ",
        "$ dramatiq-reliable dead replay ",
        "$ dramatiq-reliable jobs list --status stuck",
        "$ dramatiq-reliable dead stats",
        "$ dramatiq-reliable dead replay --all --actor send_welcome_email --yes",
    ):
        assert command in out
    assert "wait_for_replica" in out and "not dead" in out and "Every step behaved." in out
    assert "[failed] send_welcome_email: 1 job failed for good: SMTPRefused" in out

    # And the data agree, read here rather than taken from the script's word
    store = server_env.store()
    invoices = {r.status.value: r for r in store.find_jobs(key=("order_id", "4711"))}
    assert set(invoices) == {"done", "skipped"}
    assert invoices["skipped"].duplicate_of == invoices["done"].id
    assert int(data.hget(fx + "billing:rendered", "4711") or 0) == 1
    assert int(data.hget(fx + "smtp:sent", "Invoice 4711") or 0) == 1
    assert int(data.hget(fx + "smtp:sent", "Welcome aboard") or 0) == BURST
    welcome = [a for a in alerts() if (a["kind"], a["actor"]) == ("failed", "send_welcome_email")]
    assert len(welcome) == 1 and welcome[0]["count"] == 1
    assert [a["kind"] for a in alerts() if a["actor"] == "nightly_report"] == ["stuck"]
    reports = [r for r in store.find_jobs(actor="nightly_report") if r.status == dr.Status.DONE]
    assert len(reports) == 1 and any(e.status == "stuck" for e in reports[0].events)
    store.close()


def test_walkthrough_fails_without_workers(redis_server: str, ns: str) -> None:
    # Given no worker for the example's queues (nothing is started)
    env = {
        "SAAS_BROKER": f"{redis_server}/14",
        "SAAS_NAMESPACE": f"dramatiq-{ns}",
        "SAAS_STORE": f"{redis_server}/15?prefix={ns}",
        "SAAS_QUEUE_PREFIX": f"{ns}_",
        "PYTHONPATH": str(ROOT),
    }
    try:
        # When the walkthrough runs
        result = walkthrough(env, "--timeout", "1", timeout=60)
        # Then its first step fails, says why, and the script exits 1
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Step 1 did not behave: timed out after 1 s waiting for a live worker process" in result.stdout
        assert "Every step behaved." not in result.stdout
    finally:
        delete_prefix(redis.Redis.from_url(f"{redis_server}/15"), ns + ":")
