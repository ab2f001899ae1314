"""Helpers for tests that run real ``dramatiq`` worker processes against real servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def wait_until(predicate: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate!r} (last value: {last!r})")


def child_pids(pid: int) -> list[int]:
    """The direct children of a process (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return sorted(out)


class DramatiqProcess:
    """A ``dramatiq APP --processes N --threads M`` master with its worker processes.

    Parameters:
      app(str): the module (under ``tests/``, e.g. ``"apps.basic"``) that builds the broker.
      env(dict): extra environment (the app reads its configuration from it).
      log(Path): where the master and workers write their output.
    """

    def __init__(
        self,
        app: str,
        env: dict[str, str],
        log: Path,
        *,
        processes: int = 2,
        threads: int = 8,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_path = log
        self.processes = processes
        self.threads = threads
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self, *, ready: bool = True, timeout: float = 60.0) -> DramatiqProcess:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dramatiq",
                    self.app,
                    "--processes",
                    str(self.processes),
                    "--threads",
                    str(self.threads),
                    "--path",
                    str(TESTS),
                    *self.extra,
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if ready:
            self.wait_ready(timeout=timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every worker process logged that it is ready."""

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"dramatiq exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            return self.log().count("is ready for action") >= self.processes

        wait_until(ready, timeout=timeout, interval=0.1, what="dramatiq workers to boot")

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            return f.read().decode("utf-8", "replace")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def workers(self) -> list[int]:
        """The pids of the worker processes."""
        return child_pids(self.pid)

    def kill_worker(self, index: int = 0, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to one worker process; return its pid."""
        pid = wait_until(self.workers, timeout=10, what="worker processes")[index]
        os.kill(pid, sig)
        return pid

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the master (it drains its workers); SIGKILL the group after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL the master and every worker at once."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def __enter__(self) -> DramatiqProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
