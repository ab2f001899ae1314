"""Counters, histograms and their Prometheus mirror (single- and multi-process), and the exporter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import dramatiq_reliable as dr
from dramatiq_reliable import exporter, metrics
from dramatiq_reliable.cli import main
from dramatiq_reliable.errors import StoreUnavailable
from dramatiq_reliable.exporter import registry


def run_python(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter (prometheus-client's mode is per process)."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_in_process_counters_and_histograms() -> None:
    before = metrics.value("jobs_total", actor="a", queue="q", outcome="failed")
    metrics.observe_job("a", "q", "failed", 0.25, 1.5)
    metrics.observe_job("a", "q", "retrying", 0.5, None)
    assert metrics.value("jobs_total", actor="a", queue="q", outcome="failed") == before + 1
    assert metrics.value("dead_letters_total", actor="a", queue="q") >= 1
    assert metrics.value("retries_total", actor="a", queue="q") >= 1
    assert metrics.value("job_run_seconds_count", actor="a", queue="q") >= 2
    assert metrics.value("job_wait_seconds_sum", actor="a", queue="q") >= 1.5


def test_importing_the_package_touches_no_env_and_no_prometheus() -> None:
    out = run_python(
        """
        import os, sys
        import dramatiq_reliable
        print("PROMETHEUS_MULTIPROC_DIR" in os.environ, "prometheus_client" in sys.modules)
        """
    )
    assert out.split() == ["False", "False"]


def test_single_process_mirror_includes_what_was_counted_before() -> None:
    out = run_python(
        """
        from prometheus_client import CollectorRegistry, generate_latest
        import dramatiq_reliable as dr
        from dramatiq_reliable import metrics
        metrics.inc("alerts_suppressed_total", kind="failed")
        reg = CollectorRegistry()
        dr.enable_metrics(registry=reg)
        dr.enable_metrics(registry=reg)  # again: nothing happens
        metrics.inc("alerts_suppressed_total", 2, kind="failed")
        metrics.observe_job("send", "default", "done", 0.02, 0.5)
        print(generate_latest(reg).decode())
        """
    )
    values = samples(out)
    assert values[("dramatiq_reliable_alerts_suppressed_total", frozenset({("kind", "failed")}))] == 3
    labels = frozenset({("actor", "send"), ("queue", "default"), ("outcome", "done")})
    assert values[("dramatiq_reliable_jobs_total", labels)] == 1
    run = frozenset({("actor", "send"), ("queue", "default")})
    assert values[("dramatiq_reliable_job_run_seconds_count", run)] == 1
    assert values[("dramatiq_reliable_job_wait_seconds_bucket", run | {("le", "0.5")})] == 1


def test_multiprocess_values_are_summed_over_processes(tmp_path: Path) -> None:
    # Given two processes that count into the same folder (prometheus-client imported first,
    # as an app may do before enabling)
    code = f"""
        import prometheus_client
        import dramatiq_reliable as dr
        from dramatiq_reliable import metrics
        dr.enable_metrics({str(tmp_path)!r})
        for _ in range(5):
            metrics.observe_job("send", "default", "failed", 0.1, 0.2)
        metrics.inc("notifier_errors_total", notifier="webhook")
        """
    run_python(code)
    run_python(code)

    # When the exporter reads the folder
    assert len(list(tmp_path.glob("counter_*.db"))) == 2
    values = samples(generate_latest(registry(multiproc_dir=str(tmp_path))).decode())

    # Then it shows the sums
    labels = frozenset({("actor", "send"), ("queue", "default"), ("outcome", "failed")})
    assert values[("dramatiq_reliable_jobs_total", labels)] == 10
    assert values[("dramatiq_reliable_dead_letters_total", frozenset({("actor", "send"), ("queue", "default")}))] == 10
    assert values[("dramatiq_reliable_notifier_errors_total", frozenset({("notifier", "webhook")}))] == 2
    run = frozenset({("actor", "send"), ("queue", "default")})
    assert values[("dramatiq_reliable_job_run_seconds_count", run)] == 10


def test_enable_metrics_bad_folder(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    out = run_python(
        f"""
        import dramatiq_reliable as dr
        try:
            dr.enable_metrics({str(not_a_dir)!r})
        except dr.ConfigurationError as exc:
            print("error:", exc)
        """
    )
    assert out.startswith("error: cannot use") and "file" in out


def test_enable_metrics_twice_differently() -> None:
    out = run_python(
        """
        from prometheus_client import CollectorRegistry
        import dramatiq_reliable as dr
        dr.enable_metrics(registry=CollectorRegistry())
        try:
            dr.enable_metrics(registry=CollectorRegistry())
        except dr.ConfigurationError as exc:
            print("error:", exc)
        """
    )
    assert out.startswith("error: metrics are already enabled")


# -- the exporter's gauges ------------------------------------------------------------------------


def test_gauges_from_the_store() -> None:
    store = dr.MemoryStore()
    now = metrics_now()
    store.apply(
        {
            "now_ms": now,
            "ops": [
                {"k": "enqueue", "id": "a", "job": {"actor": "x", "queue": "q"}},
                {"k": "enqueue", "id": "b", "job": {"actor": "x", "queue": "q"}},
                {"k": "finish", "id": "b", "job": {"actor": "x", "queue": "q", "outcome": "failed", "att": 1}},
            ],
        }
    )
    values = samples(generate_latest(registry(store)).decode())
    assert values[("dramatiq_reliable_jobs_in_status", frozenset({("status", "queued")}))] == 1
    assert values[("dramatiq_reliable_jobs_in_status", frozenset({("status", "failed")}))] == 1
    assert values[("dramatiq_reliable_jobs_in_status", frozenset({("status", "stuck")}))] == 0
    assert values[("dramatiq_reliable_exporter_source_up", frozenset({("source", "store")}))] == 1


def test_gauges_when_the_store_is_down() -> None:
    class Down(dr.MemoryStore):
        def count_jobs(self, statuses=None):  # type: ignore[no-untyped-def]
            raise StoreUnavailable("store redis://x unreachable: refused")

    values = samples(generate_latest(registry(Down())).decode())
    assert values[("dramatiq_reliable_exporter_source_up", frozenset({("source", "store")}))] == 0
    assert not any(name == "dramatiq_reliable_jobs_in_status" for name, _ in values)


def test_gauges_when_the_broker_is_down() -> None:
    from dramatiq_reliable.brokers import broker_from_url

    broker = broker_from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        values = samples(generate_latest(registry(dr.MemoryStore(), broker, queues=["default"])).decode())
    finally:
        broker.close()
    assert values[("dramatiq_reliable_exporter_source_up", frozenset({("source", "broker")}))] == 0
    assert values[("dramatiq_reliable_exporter_source_up", frozenset({("source", "store")}))] == 1
    assert not any(name.startswith("dramatiq_reliable_queue_") for name, _ in values)


def test_count_jobs_rejects_an_unknown_status() -> None:
    with pytest.raises(dr.ConfigurationError, match="unknown status 'nope'"):
        dr.MemoryStore().count_jobs(["nope"])


def test_cli_once_prints_one_scrape(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--store", "memory://", "metrics", "--once", "--multiproc-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert 'dramatiq_reliable_jobs_in_status{status="stuck"} 0.0' in out


def test_cli_bad_usage_and_unreachable_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert main(["--store", "memory://", "metrics", "--once", "--multiproc-dir", str(missing)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["--store", "redis://127.0.0.1:1/0", "metrics", "--once"]) == 3
    assert "unreachable" in capsys.readouterr().err
    assert main(["--store", "memory://", "--broker", "amqp://", "metrics", "--once"]) == 2
    assert main(["--store", "memory://", "metrics", "--port", "99999"]) == 2


def test_the_exporter_listens_on_loopback_by_default() -> None:
    # Metrics name actors, queues and errors and have no authentication: like the support page,
    # the exporter is reachable from other hosts only when asked to be
    from dramatiq_reliable.cli.metrics import metrics as command

    server, _thread = exporter.serve(CollectorRegistry(), port=0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()
    assert next(p for p in command.params if p.name == "host").default == "127.0.0.1"


def test_cli_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--store", "memory://", "metrics", "--host", "127.0.0.1", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def metrics_now() -> int:
    from dramatiq_reliable._clock import now_ms

    return now_ms()


def test_worker_boot_declares_the_counters_at_zero(tmp_path: Path) -> None:
    # Given a worker process with metrics in a folder, one actor and a notifier
    run_python(
        f"""
        import dramatiq
        from dramatiq.brokers.stub import StubBroker
        import dramatiq_reliable as dr
        dr.enable_metrics({str(tmp_path)!r})
        broker = StubBroker()
        dramatiq.set_broker(broker)
        dr.install(broker, dr.MemoryStore(), notifiers=[dr.LogNotifier()])

        @dramatiq.actor(queue_name="billing")
        def charge():
            pass

        worker = dramatiq.Worker(broker, worker_threads=1)
        worker.start()
        worker.stop()
        """
    )

    # When the exporter reads the folder before any job ran
    values = samples(generate_latest(registry(multiproc_dir=str(tmp_path))).decode())

    # Then every counter the rules watch is there, at 0
    actor = frozenset({("actor", "charge"), ("queue", "billing")})
    assert values[("dramatiq_reliable_dead_letters_total", actor)] == 0
    assert values[("dramatiq_reliable_jobs_total", actor | {("outcome", "failed")})] == 0
    assert values[("dramatiq_reliable_abandoned_jobs_total", frozenset({("actor", "charge")}))] == 0
    assert values[("dramatiq_reliable_notifier_errors_total", frozenset({("notifier", "log")}))] == 0
    assert values[("dramatiq_reliable_alerts_dropped_total", frozenset({("notifier", "log")}))] == 0
    for rank in ("final", "record", "noise"):
        assert values[("dramatiq_reliable_store_writes_dropped_total", frozenset({("rank", rank)}))] == 0
    assert values[("dramatiq_reliable_idempotency_leases_lost_total", frozenset())] == 0
    assert values[("dramatiq_reliable_job_run_seconds_count", actor)] == 0


def test_declared_counters_reach_a_registry_enabled_later() -> None:
    out = run_python(
        """
        from prometheus_client import CollectorRegistry, generate_latest
        from dramatiq_reliable import metrics
        metrics.declare_actor("send", "default")
        metrics.declare("store_writes_dropped_total", rank="final")
        reg = CollectorRegistry()
        metrics.enable_metrics(registry=reg)
        print(generate_latest(reg).decode())
        """
    )
    values = samples(out)
    actor = frozenset({("actor", "send"), ("queue", "default")})
    assert values[("dramatiq_reliable_dead_letters_total", actor)] == 0
    assert values[("dramatiq_reliable_store_writes_dropped_total", frozenset({("rank", "final")}))] == 0
    assert values[("dramatiq_reliable_job_wait_seconds_count", actor)] == 0


def test_exporter_finds_a_queue_holding_only_dead_letters_and_ages_as_queues_does(
    capsys: pytest.CaptureFixture[str], redis_server: str, ns: str
) -> None:
    import json

    import redis

    from dramatiq_reliable._clock import now_ms

    # Given a drained queue with 3 dead letters, and a queue whose only message was sent an
    # hour ago and failed (Retries stamped requeue_timestamp) a minute ago
    client = redis.Redis.from_url(f"{redis_server}/14")
    prefix = f"dramatiq-{ns}:"
    for i in range(3):
        client.zadd(prefix + "drained.XQ", {f"d{i}": i})
        client.hset(prefix + "drained.XQ.msgs", f"d{i}", "{}")
    message = {"message_timestamp": now_ms() - 3_600_000, "options": {"requeue_timestamp": now_ms() - 60_000}}
    client.rpush(prefix + "retried", "m1")
    client.hset(prefix + "retried.msgs", "m1", json.dumps(message))
    url = f"{redis_server}/14?namespace=dramatiq-{ns}"
    try:
        # When the exporter and `queues` read the broker without naming queues
        assert main(["--store", "memory://", "--broker", url, "metrics", "--once"]) == 0
        values = samples(capsys.readouterr().out)
        assert main(["--broker", url, "queues", "--json"]) == 0
        listed = {q["queue"]: q for q in json.loads(capsys.readouterr().out)}

        # Then both list the drained queue with its dead letters
        assert values[("dramatiq_reliable_queue_dead_letters", frozenset({("queue", "drained")}))] == 3
        assert listed["drained"]["dead"] == 3
        # And both count the retried message's wait from its failure, not its send
        exported = values[("dramatiq_reliable_queue_oldest_age_seconds", frozenset({("queue", "retried")}))]
        assert 55 < exported < 600 and 55 < listed["retried"]["oldest_age_seconds"] < 600
    finally:
        delete = list(client.scan_iter(match=prefix + "*"))
        client.delete(*delete)
