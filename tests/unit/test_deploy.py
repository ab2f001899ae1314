"""deploy/: every file parses, every command is one the CLIs accept, every metric is one we serve.

Metric names are derived from the code (``metrics.COUNTERS``, ``metrics.HISTOGRAMS``,
``exporter.GAUGES``, the last checked against what the exporter really serves); commands are
parsed by the real click tree of ``dramatiq-reliable`` and by ``dramatiq``'s own argument parser.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from dramatiq_reliable import exporter, metrics
from dramatiq_reliable.cli import cli
from tests.helpers import ROOT

DEPLOY = ROOT / "deploy"
YAML_FILES = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
#: PromQL words that are not metric names.
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
#: dramatiq's default --worker-shutdown-timeout (ms).
DRAMATIQ_SHUTDOWN_MS = 600_000


def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def served_metrics() -> set[str]:
    """Every series name the exporter serves, from the code's own lists."""
    names = {metrics.PREFIX + name for name in metrics.COUNTERS}
    names |= {metrics.PREFIX + h + suffix for h in metrics.HISTOGRAMS for suffix in ("_bucket", "_count", "_sum")}
    return names | {metrics.PREFIX + name for name in exporter.GAUGES}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\boffset\s+\w+", "", expr)  # offsets
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group() in PROMQL_WORDS:
            continue  # a function or an operator
        names.add(match.group())
    return names


def rules() -> list[dict[str, Any]]:
    (doc,) = load_yaml(DEPLOY / "prometheus" / "rules.yml")
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dramatiq-reliable.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


# -- commands -------------------------------------------------------------------------------------


def check_module(spec: str) -> None:
    module = spec.partition(":")[0]
    assert importlib.util.find_spec(module) is not None, f"module {module!r} cannot be imported"


def check_reliable(argv: list[str]) -> click.Context:
    """Parse ``dramatiq-reliable ARGS`` with the real click tree (nothing runs); return the leaf context."""
    command: click.Command = cli
    name, args = "dramatiq-reliable", argv
    parent = None
    try:
        while True:
            ctx = command.make_context(name, list(args), parent=parent)
            if not isinstance(command, click.Group):
                return ctx
            sub_name, sub, args = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
            assert sub is not None and sub_name is not None
            command, name, parent = sub, sub_name, ctx
    except click.UsageError as exc:
        raise AssertionError(f"`{shlex.join(argv)}`: {exc.format_message()}") from None


def check_dramatiq(argv: list[str]) -> Any:
    """Parse ``dramatiq ARGS`` with dramatiq's own parser; the broker module must be importable."""
    from dramatiq.cli import make_argument_parser

    try:
        args = make_argument_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"dramatiq rejects `dramatiq {shlex.join(argv)}`") from None
    check_module(args.broker)
    assert args.processes >= 1 and args.threads >= 1
    return args


def check_command(argv: list[str]) -> tuple[str, Any]:
    """Check a command line of a deploy file: ``dramatiq …``, ``dramatiq-reliable …`` or ``sh -c '…; exec …'``."""
    if argv[:2] == ["sh", "-c"]:
        return check_command(shlex.split(argv[2].rsplit("exec ", 1)[1]))
    program = Path(argv[0]).name
    if program == "dramatiq":
        return program, check_dramatiq(argv[1:])
    assert program == "dramatiq-reliable", f"unexpected program {argv[0]!r}"
    ctx = check_reliable(argv[1:])
    if ctx.command.name in ("scheduler", "list") and "app" in ctx.params:
        check_module(ctx.params["app"])
    return program, ctx


def shutdown_seconds(args: Any) -> float:
    return (args.worker_shutdown_timeout or DRAMATIQ_SHUTDOWN_MS) / 1000


# -- files parse ----------------------------------------------------------------------------------


def test_every_yaml_and_json_file_parses() -> None:
    assert len(YAML_FILES) >= 6
    for path in YAML_FILES:
        assert load_yaml(path), f"{path} is empty"
    assert len(dashboard_exprs()) >= 10


# -- metrics --------------------------------------------------------------------------------------


def test_rules_read_only_metrics_we_serve() -> None:
    served = served_metrics()
    used: set[str] = set()
    for rule in rules():
        assert {"alert", "expr", "annotations"} <= set(rule), rule
        names = metric_names(rule["expr"]) - {"up"}  # up: Prometheus' own, per target
        assert names, f"{rule['alert']}: no metric in {rule['expr']!r}"
        assert names <= served, f"{rule['alert']} reads {sorted(names - served)}, which the exporter does not serve"
        used |= names
    # the alerts the operations guide names: dead letters rising, stuck jobs, backlog age, notifier errors
    prefix = metrics.PREFIX
    for name in ("dead_letters_total", "jobs_in_status", "queue_oldest_age_seconds", "notifier_errors_total"):
        assert prefix + name in used


def test_dashboard_reads_only_metrics_we_serve() -> None:
    served = served_metrics()
    for expr in dashboard_exprs():
        names = metric_names(expr)
        assert names and names <= served, f"{expr!r} reads {sorted(names - served)}"


def test_metric_names_are_found_in_promql() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, actor) (rate(a_bucket{x="y(z)"}[5m]))) > on (q) b_total'
    assert metric_names(expr) == {"a_bucket", "b_total"}


def test_gauges_listed_are_the_gauges_served(redis_server: str, ns: str) -> None:
    # Given an exporter over a store and a real Redis broker (a namespace of its own: nothing is written)
    from prometheus_client import generate_latest

    from dramatiq_reliable.brokers import broker_from_url
    from dramatiq_reliable.store import MemoryStore

    broker = broker_from_url(f"{redis_server}/14", namespace=f"dramatiq-{ns}")
    try:
        text = generate_latest(exporter.registry(MemoryStore(), broker, queues=[f"{ns}_q"])).decode()
    finally:
        broker.close()
    # Then the gauge families it serves are exactly exporter.GAUGES
    served = set(re.findall(r"^# TYPE (\S+) gauge$", text, re.MULTILINE))
    assert served == {metrics.PREFIX + name for name in exporter.GAUGES}


# -- systemd --------------------------------------------------------------------------------------


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}: not a unit line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def exec_start(service: dict[str, list[str]]) -> list[str]:
    (line,) = service["ExecStart"]
    return shlex.split(line.lstrip("-@:+!"))


def test_systemd_units_have_what_they_need() -> None:
    names = {path.name for path in UNITS}
    assert names == {"saas-worker.service", "saas-scheduler.service", "saas-exporter.service"}
    for path in UNITS:
        sections = unit(path)
        service = sections["Service"]
        assert sections["Unit"]["Description"] and sections["Install"]["WantedBy"] == ["multi-user.target"]
        assert service["Restart"][0] in ("always", "on-failure"), path.name
        for env_file in service.get("EnvironmentFile", []):
            assert (DEPLOY / "systemd" / Path(env_file.lstrip("-")).name).exists(), env_file
        check_command(exec_start(service))


def test_systemd_worker_stops_gracefully() -> None:
    service = unit(DEPLOY / "systemd" / "saas-worker.service")["Service"]
    program, args = check_command(exec_start(service))
    assert program == "dramatiq"
    # SIGTERM to the master only, and more time than dramatiq's own shutdown before SIGKILL
    assert service["KillMode"] == ["mixed"]
    assert service.get("KillSignal", ["SIGTERM"]) == ["SIGTERM"]
    assert float(service["TimeoutStopSec"][0]) > shutdown_seconds(args)
    # the exporter reads the folder the workers write
    folder = dict(e.split("=", 1) for e in service["Environment"])["SAAS_METRICS_DIR"]
    _, ctx = check_command(exec_start(unit(DEPLOY / "systemd" / "saas-exporter.service")["Service"]))
    assert ctx.command.name == "metrics" and ctx.params["multiproc_dir"] == folder


# -- docker compose -------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    (doc,) = load_yaml(DEPLOY / "docker-compose.yml")
    return doc  # type: ignore[no-any-return]


def test_compose_services_and_commands() -> None:
    services = compose()["services"]
    assert {"redis", "rabbitmq", "worker", "exporter", "prometheus"} <= set(services)
    schedulers = [s for s in services.values() if "scheduler" in s.get("command", [])]
    assert len(schedulers) == 2
    for name, service in services.items():
        command = service.get("command")
        if command and Path(str(command[0])).name in ("dramatiq", "dramatiq-reliable", "sh"):
            check_command([str(c) for c in command])
        elif name not in ("redis", "rabbitmq", "prometheus"):
            raise AssertionError(f"service {name} runs no command of ours")


def test_compose_worker_stops_gracefully_and_shares_metrics() -> None:
    services = compose()["services"]
    worker = services["worker"]
    _, args = check_command(worker["command"])
    grace = worker["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > shutdown_seconds(args)
    _, ctx = check_command(services["exporter"]["command"])
    folder = worker["environment"]["SAAS_METRICS_DIR"]
    assert ctx.params["multiproc_dir"] == folder
    volume = next(v.split(":")[0] for v in worker["volumes"] if v.split(":")[1] == folder)
    assert any(v.split(":")[:2] == [volume, folder] for v in services["exporter"]["volumes"])


def test_compose_prometheus_scrapes_the_exporter_and_loads_the_rules() -> None:
    services = compose()["services"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    config_path = next(a.split("=", 1)[1] for a in services["prometheus"]["command"] if a.startswith("--config"))
    assert (DEPLOY / mounts[config_path]).resolve() == DEPLOY / "prometheus" / "prometheus.yml"
    (config,) = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    (rules_path,) = config["rule_files"]
    assert (DEPLOY / mounts[rules_path]).resolve() == DEPLOY / "prometheus" / "rules.yml"
    _, ctx = check_command(services["exporter"]["command"])
    targets = [t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert targets == [f"exporter:{ctx.params['port']}"]
    # The exporter listens on loopback by default: in its container it must listen on every interface
    assert ctx.params["host"] == "0.0.0.0"


# -- Kubernetes -----------------------------------------------------------------------------------


def k8s_objects() -> dict[str, dict[str, Any]]:
    objects = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in load_yaml(path):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path
            objects[doc["metadata"]["name"] + "/" + doc["kind"]] = doc
    return objects


def containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = deployment["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    return {c["name"]: c for c in spec["template"]["spec"]["containers"]}


def test_k8s_workers_schedulers_and_probes() -> None:
    objects = k8s_objects()
    worker = objects["saas-worker/Deployment"]
    pod = worker["spec"]["template"]["spec"]
    found = containers(worker)
    _, args = check_command(found["worker"]["command"] + found["worker"].get("args", []))
    assert pod["terminationGracePeriodSeconds"] > shutdown_seconds(args)
    probe = found["worker"]["readinessProbe"]["exec"]["command"]
    _, ctx = check_command(probe)
    assert ctx.command.name == "queues" and ctx.params["check"]
    _, ctx = check_command(found["exporter"]["command"])
    assert ctx.command.name == "metrics"
    assert found["exporter"]["ports"][0]["containerPort"] == ctx.params["port"]
    assert ctx.params["host"] == "0.0.0.0"  # Prometheus scrapes the pod's IP, not its loopback

    scheduler = objects["saas-scheduler/Deployment"]
    assert scheduler["spec"]["replicas"] >= 2
    (container,) = containers(scheduler).values()
    _, ctx = check_command(container["command"])
    assert ctx.command.name == "scheduler"
    for deployment in (worker, scheduler):
        for c in containers(deployment).values():
            assert c["envFrom"][0]["configMapRef"]["name"] in {k.split("/")[0] for k in objects}


# -- the checks themselves ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["dramatiq-reliable", "queues", "--chek"],
        ["dramatiq-reliable", "jobs", "lst"],
        ["dramatiq-reliable", "metrics", "--port", "http"],
        ["dramatiq", "examples.saas.tasks", "--processes", "two"],
        ["dramatiq", "examples.saas.nothing"],
        ["dramatiq-reliable", "scheduler", "examples.saas.nothing"],
        ["sh", "-c", "rm -f /x; exec dramatiq-reliable dead replay --everything"],
    ],
)
def test_a_wrong_command_is_caught(argv: list[str]) -> None:
    with pytest.raises(AssertionError):
        check_command(argv)


def test_operations_guide_explains_every_rule() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    missing = [
        rule["alert"] for rule in rules() if f"| {rule['alert']}" not in guide and f", {rule['alert']} |" not in guide
    ]
    assert not missing, f"docs/operations.md does not explain {missing}"


def test_the_image_has_what_the_commands_need() -> None:
    # scheduler needs the cron extra, metrics the prometheus one; the commands import examples.saas
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    extras = re.search(r"pip install [^\n]*'\.\[([a-z,]+)\]'", dockerfile)
    assert extras is not None and (
        {"all"} <= set(extras.group(1).split(",")) or {"cron", "prometheus"} <= set(extras.group(1).split(","))
    )
    assert "COPY examples ./examples" in dockerfile and "PYTHONPATH=/app" in dockerfile
