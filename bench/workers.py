"""A real ``dramatiq`` master with its worker processes, and the CPU they use (from ``/proc``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Clock ticks per second of ``/proc/<pid>/stat`` times.
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY = "Worker process is ready for action."


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid ...: comm may hold spaces and parentheses.
    return text[text.rfind(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                out.append(int(entry.name))
    return sorted(out)


def named(comm: str) -> list[int]:
    """The processes whose command name is ``comm`` (``"beam.smp"``, ``"redis-server"``)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == comm:
                    out.append(int(entry.name))
            except OSError:
                continue
    return sorted(out)


def is_named(pid: int, comm: str) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == comm
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    """``pid``'s children, their children, and so on."""
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (every thread), those that still exist."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLK_TCK


def machine_busy() -> tuple[float, float]:
    """``(busy, total)`` CPU seconds of the whole machine since boot (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return (total - idle) / CLK_TCK, total / CLK_TCK


class Fleet:
    """``dramatiq MODULE --processes N --threads M``, started from the repository root.

    Parameters:
      module(str): the app module (``bench.app``), configured through ``env``.
      env(dict): extra environment.
      log(Path): where the master and its workers write their output.
      processes(int): worker processes.
      threads(int): worker threads per process.
    """

    def __init__(self, module: str, env: dict[str, str], log: Path, *, processes: int, threads: int) -> None:
        self.module = module
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_path = log
        self.processes = processes
        self.threads = threads
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self) -> Fleet:
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dramatiq",
                    self.module,
                    "--processes",
                    str(self.processes),
                    "--threads",
                    str(self.threads),
                    "--path",
                    str(ROOT),
                ],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            return f.read().decode("utf-8", "replace")

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait until every worker process said it is ready for action."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"dramatiq exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if self.log().count(READY) >= self.processes:
                return
            time.sleep(0.02)
        raise RuntimeError(f"dramatiq workers not ready after {timeout:.0f} s:\n{self.log()[-3000:]}")

    def pids(self) -> list[int]:
        """The master and every process under it (workers, and forks some middlewares start)."""
        assert self.proc is not None
        return [self.proc.pid, *descendants(self.proc.pid)]

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM the master (it drains its workers); SIGKILL the group after ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def __enter__(self) -> Fleet:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
