"""Alerts, Sentry context and metrics with real ``dramatiq`` worker processes (--processes 2)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dramatiq_reliable.exporter import registry
from tests.apps.alerting import build
from tests.conftest import ServerEnv
from tests.helpers import DramatiqProcess, wait_until
from tests.webhook_server import Hook

pytestmark = pytest.mark.integration

#: Seconds of the throttle window in the burst test: 500 failures must fit in one window.
WINDOW = 12


@pytest.fixture
def hook(request: pytest.FixtureRequest) -> Iterator[Hook]:
    mode = getattr(request, "param", "ok")
    server = Hook([500] if mode == "500" else [200], hang=threading.Event() if mode == "hang" else None)
    yield server
    server.close()


def env_with(server_env: ServerEnv, options: dict[str, Any], **extra: str) -> ServerEnv:
    env = server_env.with_options(**options)
    env.update(extra)
    return env


def failed_count(store: Any) -> int:
    return int(store.count_jobs(["failed"])["failed"])


def test_a_burst_of_failures_is_one_alert_then_one_summary(server_env: ServerEnv, hook: Hook, artifacts: Path) -> None:
    # Given two worker processes alerting a webhook, at most once per key per 12 s
    env = env_with(server_env, {"window": WINDOW}, DR_TEST_WEBHOOK=hook.url)
    app = build(env)
    store = server_env.store()
    with DramatiqProcess("apps.alerting", env, artifacts / "worker.log"):
        # When 500 jobs of one actor fail with the same error
        sent = [app.send_invoice.send(order_id=i).message_id for i in range(500)]
        wait_until(lambda: failed_count(store) == 500, timeout=60, what="500 failed jobs")
        all_failed = time.monotonic()

        # Then exactly one POST arrived, from one of the processes
        [first] = wait_until(hook.alerts, timeout=10, what="the first alert")
        first_at = hook.requests[0]["at"]
        assert all_failed < first_at + WINDOW, "the machine was too slow: 500 failures did not fit in one window"
        assert first["kind"] == "failed" and first["actor"] == "send_invoice" and first["error_type"] == "SMTPError"
        assert first["count"] == 1 and first["job_id"] in sent and "refused the connection" in first["error_message"]

        # And another actor's error gets its own alert at once
        app.parse.send(1)
        wait_until(lambda: len(hook.requests) >= 2, timeout=20, what="the second key's alert")
        assert hook.alerts()[1]["actor"] == "parse" and hook.alerts()[1]["error_type"] == "KeyError"

        # And when the window ends, one summary says how many were suppressed
        wait_until(lambda: len(hook.requests) >= 3, timeout=WINDOW + 20, what="the summary")
        summary = hook.alerts()[2]
        assert summary["summary"] is True and summary["suppressed"] == 499 and summary["count"] == 499
        assert "499 more jobs failed for good" in hook.requests[2]["body"]["text"]
        assert summary["job_id"] in sent and summary["keys"]
        # (one more heartbeat of each process, to see that nobody sends a second summary)
        time.sleep(2.5)

    # And nothing else was sent, by either process
    assert len(hook.requests) == 3, [a["title"] if "title" in a else a["kind"] for a in hook.alerts()]


def test_a_pending_summary_survives_the_workers_being_killed(
    server_env: ServerEnv, hook: Hook, artifacts: Path
) -> None:
    # Given 40 failures alerted once, the rest suppressed
    env = env_with(server_env, {"window": 8}, DR_TEST_WEBHOOK=hook.url)
    app = build(env)
    store = server_env.store()
    workers = DramatiqProcess("apps.alerting", env, artifacts / "worker.log").start()
    try:
        for i in range(40):
            app.send_invoice.send(order_id=i)
        wait_until(lambda: failed_count(store) == 40, timeout=60, what="40 failed jobs")
        wait_until(hook.alerts, timeout=10, what="the first alert")
    finally:
        # When every worker process is killed before the window ends
        workers.kill()
    assert len(hook.requests) == 1

    # Then new workers send the summary: the count was in the store, not in the dead processes
    with DramatiqProcess("apps.alerting", env, artifacts / "worker.log"):
        wait_until(lambda: len(hook.requests) >= 2, timeout=30, what="the summary")
    assert len(hook.requests) == 2
    summary = hook.alerts()[1]
    assert summary["summary"] is True and summary["suppressed"] == 39


@pytest.mark.parametrize("hook", ["hang", "500"], indirect=True)
def test_a_hanging_or_failing_webhook_never_slows_jobs(
    server_env: ServerEnv, hook: Hook, artifacts: Path, tmp_path: Path
) -> None:
    # Given a webhook that never answers (60 s timeout) or answers 500 (one retry),
    # and room for 5 queued alerts per process
    prom = tmp_path / "prom"
    env = env_with(
        server_env,
        {"window": 300, "queue_size": 5},
        DR_TEST_WEBHOOK=hook.url,
        DR_TEST_WEBHOOK_TIMEOUT="60",
        DR_TEST_WEBHOOK_RETRIES="1",
        DR_TEST_METRICS_DIR=str(prom),
    )
    app = build(env)
    store = server_env.store()
    with DramatiqProcess("apps.alerting", env, artifacts / "worker.log"):
        # When 100 jobs fail, each with its own error type (each worth an alert), among 100 that succeed
        for i in range(100):
            app.distinct.send(i)
            app.ok.send(i)

        # Then every job ends well before the webhook's timeout
        started = time.monotonic()
        wait_until(lambda: store.count_jobs(["failed", "done"]) == {"failed": 100, "done": 100}, timeout=45)
        if hook.hang is not None:
            assert time.monotonic() - started < 60  # so no job waited for the webhook
            assert hook.answered == 0 and 1 <= len(hook.requests) <= 2  # one stuck request per process

        # And what could not be sent is counted, summed over both processes
        def counted() -> tuple[float, float]:
            values = scrape(registry(multiproc_dir=str(prom)))
            return (
                total(values, "dramatiq_reliable_alerts_dropped_total", notifier="webhook"),
                total(values, "dramatiq_reliable_notifier_errors_total", notifier="webhook"),
            )

        if hook.hang is not None:
            # at most 1 in flight + 5 queued per process; the rest dropped
            dropped, _ = wait_until(lambda: counted()[0] >= 100 - 12 and counted(), timeout=20)
            assert dropped >= 88
        else:
            dropped, errors = wait_until(lambda: sum(counted()) == 100 and counted(), timeout=40)
            assert errors >= 1 and len(hook.requests) == 2 * errors  # each alert tried twice


def test_sentry_events_carry_the_fingerprint_and_tags(server_env: ServerEnv, artifacts: Path) -> None:
    # Given workers with sentry-sdk's Dramatiq integration and a SentryNotifier
    env = env_with(server_env, {"window": 300}, DR_TEST_SENTRY="1")
    app = build(env)
    r = server_env.redis()
    key = f"{server_env.prefix}:fx:sentry"

    def captured() -> list[dict[str, Any]]:
        return [json.loads(e) for e in r.lrange(key, 0, -1)]

    with DramatiqProcess("apps.alerting", env, artifacts / "worker.log"):
        # When a job with a business key fails for good
        job_id = app.charge.send(order_id=4711).message_id

        # Then Sentry gets the integration's error event and the alert, both tagged
        events = wait_until(lambda: len(captured()) >= 2 and captured(), timeout=30, what="two Sentry events")

    [error] = [e for e in events if e.get("exception")]
    [alert] = [e for e in events if not e.get("exception")]
    assert error["tags"]["dramatiq_reliable.job_id"] == job_id
    assert error["tags"]["dramatiq_reliable.attempt"] == "1"
    assert error["tags"]["dramatiq_reliable.actor"] == "charge"
    assert error["tags"]["key.order_id"] == "4711"
    assert alert["fingerprint"] == ["dramatiq-reliable", "failed", "charge", "ValueError"]
    assert alert["tags"]["dramatiq_reliable.job_id"] == job_id
    assert alert["tags"]["dramatiq_reliable.queue"] == server_env.queue
    assert alert["tags"]["key.order_id"] == "4711"
    assert "card declined for order 4711" in alert["message"]


def test_metrics_scraped_over_http(server_env: ServerEnv, artifacts: Path, tmp_path: Path) -> None:
    # Given two worker processes writing metrics to one folder
    prom = tmp_path / "prom"
    env = env_with(server_env, {"window": 300}, DR_TEST_METRICS_DIR=str(prom), DR_TEST_LOG_NOTIFIER="1")
    app = build(env)
    store = server_env.store()
    worker = DramatiqProcess("apps.alerting", env, artifacts / "worker.log", threads=2)
    with worker:
        # When 16 slow jobs (spread over both processes) and 10 failing ones run
        for _ in range(16):
            app.nap.send(0.2)
        for i in range(10):
            app.send_invoice.send(order_id=i)
        wait_until(lambda: store.count_jobs(["done", "failed"]) == {"done": 16, "failed": 10}, timeout=60)
        pids = worker.workers()

    # And 7 more wait in the queue with nobody to run them
    for i in range(7):
        app.ok.send(i)

    # Then both processes counted some of the jobs
    per_process = [scrape_files([prom / f"counter_{pid}.db"]) for pid in pids]
    assert all(total(v, "dramatiq_reliable_jobs_total", actor="nap") > 0 for v in per_process), per_process

    # And /metrics, scraped over HTTP, shows their sums beside the gauges
    from dramatiq_reliable.exporter import serve

    broker = server_env.broker()
    server, _ = serve(
        registry(store, broker, queues=[server_env.queue], multiproc_dir=str(prom)), host="127.0.0.1", port=0
    )
    try:
        values = scrape_http(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
        broker.close()
    queue = server_env.queue
    assert total(values, "dramatiq_reliable_jobs_total", actor="nap", outcome="done") == 16
    assert total(values, "dramatiq_reliable_jobs_total", actor="send_invoice", outcome="failed") == 10
    assert total(values, "dramatiq_reliable_dead_letters_total", actor="send_invoice", queue=queue) == 10
    assert total(values, "dramatiq_reliable_job_run_seconds_count", actor="nap") == 16
    assert total(values, "dramatiq_reliable_job_wait_seconds_count", actor="nap") == 16
    assert total(values, "dramatiq_reliable_alerts_sent_total", kind="failed", notifier="log") == 1
    assert total(values, "dramatiq_reliable_alerts_suppressed_total", kind="failed") == 9
    assert total(values, "dramatiq_reliable_jobs_in_status", status="failed") == 10
    assert total(values, "dramatiq_reliable_jobs_in_status", status="queued") == 7
    assert total(values, "dramatiq_reliable_jobs_in_status", status="stuck") == 0
    assert total(values, "dramatiq_reliable_queue_depth", queue=queue) == 7
    assert total(values, "dramatiq_reliable_queue_dead_letters", queue=queue) == 10
    assert total(values, "dramatiq_reliable_exporter_source_up", source="store") == 1
    assert total(values, "dramatiq_reliable_exporter_source_up", source="broker") == 1
    if server_env.kind == "redis":
        assert total(values, "dramatiq_reliable_queue_oldest_age_seconds", queue=queue) >= 0


def test_the_metrics_command(server_env: ServerEnv, artifacts: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    # Given a folder some worker processes wrote to
    prom = tmp_path / "prom"
    env = env_with(server_env, {"window": 300}, DR_TEST_METRICS_DIR=str(prom))
    app = build(env)
    store = server_env.store()
    with DramatiqProcess("apps.alerting", env, artifacts / "worker.log"):
        for i in range(5):
            app.ok.send(i)
        wait_until(lambda: store.count_jobs(["done"])["done"] == 5, timeout=30)

    # When the exporter command runs
    args = ["--store", server_env.store_url, "--broker", server_env.broker_url, "metrics", "--port", "0"]
    args += ["--host", "127.0.0.1", "--multiproc-dir", str(prom), "--queue", server_env.queue]
    if server_env.kind == "redis":
        args += ["--namespace", server_env["DR_TEST_NAMESPACE"]]
    log = open(artifacts / "exporter.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-c", "from dramatiq_reliable.cli import entry; entry()", *args], stderr=log
    )
    try:

        def port() -> int:
            log.seek(0)
            text = log.read()
            return int(text.split("/metrics")[0].rsplit(":", 1)[1]) if "Serving metrics on" in text else 0

        url = f"http://127.0.0.1:{wait_until(port, timeout=20, what='the exporter')}/metrics"
        # Then it serves the workers' counters and the gauges
        values = scrape_http(url)
        assert total(values, "dramatiq_reliable_jobs_total", actor="ok", outcome="done") == 5
        assert total(values, "dramatiq_reliable_queue_depth", queue=server_env.queue) == 0
        assert total(values, "dramatiq_reliable_exporter_source_up", source="store") == 1
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        log.close()


# -- helpers ------------------------------------------------------------------------------------------

Values = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Values:
    out: Values = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def scrape(reg: Any) -> Values:
    return parse(generate_latest(reg).decode())


def scrape_files(files: list[Path]) -> Values:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    class Files(MultiProcessCollector):
        def collect(self):  # type: ignore[no-untyped-def]
            return self.merge([str(f) for f in files], accumulate=True)

    reg = CollectorRegistry()
    reg.register(Files(None, path=str(files[0].parent)))
    return scrape(reg)


def scrape_http(url: str) -> Values:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return parse(response.read().decode())


def total(values: Values, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in values.items() if n == name and wanted <= ls)
