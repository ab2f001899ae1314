"""The shipped Prometheus config and rules, checked by ``promtool`` and run by a real Prometheus.

Needs Debian's ``prometheus`` package (``prometheus`` and ``promtool`` on PATH; ``.ci/run``
installs it). Without it the tests are skipped with the reason on a laptop and fail when ``CI``
is set. The system service is never used: each test runs its own Prometheus on a free port,
with a temporary config and data folder.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.apps.alerting import build
from tests.conftest import CI, ServerEnv
from tests.helpers import ROOT, DramatiqProcess, wait_until

pytestmark = pytest.mark.integration

DEPLOY = ROOT / "deploy" / "prometheus"
RULES = DEPLOY / "rules.yml"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} not found on PATH (Debian: apt-get install prometheus)"
        if CI:
            pytest.fail(f"{reason} (CI is set, so this is an error)")
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=60, check=False)


# -- promtool ---------------------------------------------------------------------------------------


def test_promtool_accepts_the_shipped_config_and_rules(tmp_path: Path) -> None:
    # The compose file mounts rules.yml at /etc/prometheus/rules.yml; point the copy at ours
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["rule_files"] = [str(RULES)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))

    checked = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


#: (alert, counter, its labels, the rule's range) of every rule on a counter.
COUNTER_RULES = [
    ("DeadLettersRising", "dramatiq_reliable_dead_letters_total", {"actor": "charge", "queue": "billing"}, 10),
    ("WorkersDying", "dramatiq_reliable_abandoned_jobs_total", {"actor": "charge"}, 15),
    ("NotifierErrors", "dramatiq_reliable_notifier_errors_total", {"notifier": "webhook"}, 15),
    ("AlertsDropped", "dramatiq_reliable_alerts_dropped_total", {"notifier": "webhook"}, 15),
    ("StoreWritesDropped", "dramatiq_reliable_store_writes_dropped_total", {}, 15),
    ("IdempotencyLeasesLost", "dramatiq_reliable_idempotency_leases_lost_total", {}, 60),
]


def series(metric: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in {**labels, "job": "dr", "instance": "w1"}.items())
    return f"{metric}{{{inner}}}"


def test_every_counter_rule_fires_on_the_first_event(tmp_path: Path) -> None:
    # Given the shipped rules (annotations left out: promtool compares them verbatim)
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    tests = []
    for alert, metric, labels, window in COUNTER_RULES:
        by = [k for k in labels if k in rule_by(rules, alert)]
        fires = [{"exp_labels": {**{k: labels[k] for k in by}, "severity": sev(rules, alert)}}]
        up = {"series": 'up{job="dr",instance="w1"}', "values": f"1x{window * 3}"}
        tests += [
            # When a counter declared at 0 goes to 1, the rule fires at the next evaluation
            {
                "interval": "1m",
                "input_series": [{"series": series(metric, labels), "values": "0 0 0 1 1 1"}, up],
                "alert_rule_test": [
                    {"eval_time": "2m", "alertname": alert, "exp_alerts": []},
                    {"eval_time": "3m", "alertname": alert, "exp_alerts": fires},
                    {"eval_time": "4m", "alertname": alert, "exp_alerts": fires},
                ],
            },
            # When a series first appears above 0 on a target scraped for a while, it fires too
            {
                "interval": "1m",
                "input_series": [
                    {"series": series(metric, labels), "values": f"_x{window + 5} 2x{window}"},
                    up,
                ],
                "alert_rule_test": [
                    {"eval_time": f"{window + 4}m", "alertname": alert, "exp_alerts": []},
                    {"eval_time": f"{window + 6}m", "alertname": alert, "exp_alerts": fires},
                ],
            },
            # But a target seen for the first time does not alert on its history, nor a flat counter
            {
                "interval": "1m",
                "input_series": [
                    {"series": series(metric, labels), "values": f"5x{window * 3}"},
                    {"series": 'up{job="dr",instance="w1"}', "values": f"1x{window * 3}"},
                ],
                "alert_rule_test": [
                    {"eval_time": "1m", "alertname": alert, "exp_alerts": []},
                    {"eval_time": f"{window * 2}m", "alertname": alert, "exp_alerts": []},
                ],
            },
        ]
    spec = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "rules_test.yml").write_text(yaml.safe_dump(spec))

    # Then promtool agrees with every case
    result = promtool("test", "rules", str(tmp_path / "rules_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def rule_of(rules: dict[str, Any], alert: str) -> dict[str, Any]:
    return next(r for g in rules["groups"] for r in g["rules"] if r.get("alert") == alert)


def sev(rules: dict[str, Any], alert: str) -> str:
    return str(rule_of(rules, alert)["labels"]["severity"])


def rule_by(rules: dict[str, Any], alert: str) -> list[str]:
    expr = str(rule_of(rules, alert)["expr"])
    if "sum by (" not in expr:
        return []
    return [name.strip() for name in expr.split("sum by (", 1)[1].split(")", 1)[0].split(",")]


# -- a real Prometheus scraping a real exporter -----------------------------------------------------


class Prometheus:
    """``prometheus`` on a free port, scraping ``targets`` every second with the shipped rules."""

    def __init__(self, folder: Path, targets: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "dramatiq-reliable", "static_configs": [{"targets": targets}]}],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(folder / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._ready, timeout=30, interval=0.2, what="prometheus to be ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}")
        try:
            return urllib.request.urlopen(self.url + "/-/ready", timeout=1).status == 200  # type: ignore[no-any-return]
        except OSError:
            return False

    def api(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("/api/v1/query?query=" + urllib.parse.quote(expr))["result"]  # type: ignore[no-any-return]

    def firing(self, alert: str) -> list[dict[str, Any]]:
        return [a for a in self.api("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == alert]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def redis_env(redis_server: str, ns: str) -> Iterator[ServerEnv]:
    from tests.conftest import cleanup_env, make_env

    env = make_env("redis", redis_server, None, ns)
    yield env
    cleanup_env(env, redis_server)


def test_a_real_prometheus_alerts_on_the_first_dead_letter(
    redis_env: ServerEnv, artifacts: Path, tmp_path: Path
) -> None:
    tool("prometheus")
    started = time.monotonic()
    # Given a worker with metrics in a folder, whose webhook notifier cannot connect, an exporter
    # serving that folder, and a Prometheus scraping it every second with the shipped rules
    folder = tmp_path / "metrics"
    folder.mkdir()
    env = ServerEnv(redis_env)
    env.__dict__.update(redis_env.__dict__)
    env.update(DR_TEST_METRICS_DIR=str(folder), DR_TEST_WEBHOOK=f"http://127.0.0.1:{free_port()}/hook")
    app = build(env)
    port = free_port()
    exporter_log = open(artifacts / "exporter.log", "wb")  # noqa: SIM115 - closed below
    exporter = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dramatiq-reliable"),
            *("--store", f"{env.store_url}?prefix={env.prefix}", "--broker", env.broker_url),
            *("metrics", "--host", "127.0.0.1", "--port", str(port), "--multiproc-dir", str(folder)),
            *("--namespace", env["DR_TEST_NAMESPACE"]),
        ],
        stdout=exporter_log,
        stderr=subprocess.STDOUT,
    )
    prometheus = None
    try:
        with DramatiqProcess("apps.alerting", env, artifacts / "worker.log", processes=1, threads=2):
            prometheus = Prometheus(tmp_path, [f"127.0.0.1:{port}"])
            dead = 'dramatiq_reliable_dead_letters_total{actor="send_invoice"}'
            errors = "dramatiq_reliable_notifier_errors_total"
            # The counters are scraped at 0 before anything failed
            wait_until(lambda: prometheus.query(f"{dead} == 0"), timeout=20, what="dead_letters_total at 0")
            wait_until(lambda: prometheus.query(f"{errors} == 0"), timeout=20, what="notifier_errors_total at 0")
            assert prometheus.firing("DeadLettersRising") == [] and prometheus.firing("NotifierErrors") == []

            # When the first job fails for good (and its alert cannot be delivered)
            app.send_invoice.send(order_id=1)

            # Then both alerts fire on that one event
            [alert] = wait_until(
                lambda: [a for a in prometheus.firing("DeadLettersRising") if a["state"] == "firing"],
                timeout=30,
                interval=0.5,
                what="DeadLettersRising firing",
            )
            assert alert["labels"]["actor"] == "send_invoice" and alert["labels"]["queue"] == env.queue
            wait_until(
                lambda: [a for a in prometheus.firing("NotifierErrors") if a["state"] == "firing"],
                timeout=30,
                interval=0.5,
                what="NotifierErrors firing",
            )
    finally:
        if prometheus is not None:
            prometheus.stop()
            shutil.copy(tmp_path / "prometheus.log", artifacts / "prometheus.log")
        exporter.terminate()
        exporter.wait(timeout=10)
        exporter_log.close()
    print(f"real Prometheus test: {time.monotonic() - started:.1f}s")
