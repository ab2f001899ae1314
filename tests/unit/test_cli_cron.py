"""Bad input to ``dramatiq-reliable cron list`` and ``scheduler``: one line on stderr, the right exit code.

These run the real command in a subprocess, on the apps of ``tests/apps/cron_bad.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


def run(*args: str, case: str = "ok") -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("dramatiq-reliable")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "dramatiq_reliable.cli"]
    env = {**os.environ, "DR_TEST_CRON_CASE": case}
    env.pop("DRAMATIQ_RELIABLE_STORE", None)
    return subprocess.run(
        [*command, *args], env=env, capture_output=True, text=True, timeout=60, cwd=TESTS, check=False
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert result.stdout == ""
    return lines[0]


@pytest.mark.parametrize("command", [("cron", "list"), ("scheduler",)])
@pytest.mark.parametrize(
    ("case", "code", "says"),
    [
        ("expr", 2, "cron schedule 'nightly_report' of actor 'nightly_report': bad cron expression '61 * * * *'"),
        ("tz", 2, "unknown timezone 'Europe/Berln'"),
        ("raises", 2, "cannot import app module 'apps.cron_bad': RuntimeError: DATABASE_URL is not set"),
        ("none", 1, "apps.cron_bad declares no cron schedules"),
    ],
)
def test_bad_apps_fail_with_one_line(command: tuple[str, ...], case: str, code: int, says: str) -> None:
    result = run(*command, "apps.cron_bad", case=case)
    assert result.returncode == code, result.stderr
    assert says in one_line(result)


def test_a_module_that_does_not_exist() -> None:
    result = run("scheduler", "apps.no_such_module")
    assert result.returncode == 2
    assert "cannot import app module 'apps.no_such_module': ModuleNotFoundError" in one_line(result)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (("--misfire-grace", "soon"), "not a duration: 'soon'"),
        (("--misfire-grace", "30s", "--claim-lease", "1m"), "claim_lease (60s) must be less than misfire_grace (30s)"),
    ],
)
def test_bad_scheduler_options_are_usage_errors(options: tuple[str, ...], says: str) -> None:
    result = run("scheduler", "apps.cron_bad", *options)
    assert result.returncode == 2
    assert says in result.stderr


@pytest.mark.parametrize("command", [("cron", "list"), ("scheduler",)])
def test_an_unreachable_store_exits_3(command: tuple[str, ...]) -> None:
    result = run("--store", "redis://127.0.0.1:1/0", *command, "apps.cron_bad")
    assert result.returncode == 3
    assert "unreachable" in one_line(result)
