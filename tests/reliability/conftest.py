"""Fixtures of the fault-injection suite: its sizes, its report, and a RabbitMQ node of its own.

Sizes come from the environment (see ``tests/reliability/README.md``):

* ``DR_FAULT_JOBS``: jobs per burst (default 200; the full size is 1000);
* ``DR_FAULT_OUTAGE``: seconds the store's Redis stays down (default 5; the full size is 30);
* ``DR_FAULT_WORK``: seconds each job works between its two steps (default 0.2).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _unreachable
from tests.helpers import wait_until


@dataclass(frozen=True)
class Size:
    jobs: int
    outage: float
    work: float


@pytest.fixture(scope="session")
def size() -> Size:
    return Size(
        jobs=int(os.getenv("DR_FAULT_JOBS", "200")),
        outage=float(os.getenv("DR_FAULT_OUTAGE", "5")),
        work=float(os.getenv("DR_FAULT_WORK", "0.2")),
    )


class Report:
    """Appends each scenario's figures as one JSON line, to the test's folder and to the suite's file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        #: One file for the whole suite, so that a run's figures can be quoted together.
        self.suite = folder.parent / "reliability.jsonl"

    def write(self, figures: dict[str, Any]) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        line = json.dumps({**figures, "at": stamp}, sort_keys=True)
        for path in (self.folder / "figures.jsonl", self.suite):
            with open(path, "a") as f:
                f.write(line + "\n")
        shown = ", ".join(f"{k}={v}" for k, v in figures.items() if k not in ("scenario", "broker"))
        print(f"\n[{figures['scenario']} on {figures['broker']}] {shown}")


@pytest.fixture
def report(artifacts: Path) -> Report:
    return Report(artifacts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: Where the RabbitMQ scripts live: the packaged ones run as the current user (``/usr/sbin``'s
#: wrappers switch to the ``rabbitmq`` user, which cannot write this test's folder).
RABBITMQ_BIN = Path(os.getenv("DR_TEST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))


class PrivateRabbitMQ:
    """A RabbitMQ node of this test's own (name, ports, data, cookie), that it may stop and start.

    It reads none of the machine's RabbitMQ configuration and enables no plugin, so it clashes
    with no other node; its data (durable queues, persistent messages) survives a restart.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.node = f"drfault{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        home = folder / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(f"DRFAULT{self.port}COOKIE")
        cookie.chmod(0o400)
        (folder / "enabled_plugins").write_text("[].\n")
        (folder / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (folder / "rabbitmq-env.conf").write_text("")
        self.env = {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_PID_FILE": str(folder / "node.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def up(self) -> bool:
        import pika

        try:
            params = pika.URLParameters(self.url + "?connection_attempts=1&socket_timeout=1")
            pika.BlockingConnection(params).close()
            return True
        except Exception:
            return False

    def start(self, timeout: float = 120.0) -> PrivateRabbitMQ:
        server = RABBITMQ_BIN / "rabbitmq-server"
        if not server.exists():
            _unreachable("rabbitmq-server", str(server), FileNotFoundError(str(server)))
        with open(self.folder / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [str(server)], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_until(self.answers, timeout=timeout, interval=0.25, what=f"RabbitMQ node {self.node} to accept AMQP")
        return self

    def answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = (self.folder / "server.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"rabbitmq-server exited with {self.proc.returncode}:\n{tail}")
        return self.up()

    def ctl(self, *args: str, timeout: float = 60.0) -> None:
        subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def stop(self) -> None:
        """Stop the node (the Erlang VM and all); its data stays for the next start."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.ctl("stop")
            self.proc.wait(timeout=60)
        except Exception:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # epmd may keep the name for a moment; the next start waits for its port to be free.
        time.sleep(0.2)


@pytest.fixture
def private_rabbitmq(tmp_path: Path, rabbitmq_server: str) -> Iterator[PrivateRabbitMQ]:
    """A RabbitMQ node of this test's own, started (skipped if the machine has no RabbitMQ)."""
    if not (RABBITMQ_BIN / "rabbitmq-server").exists() and not shutil.which("rabbitmq-server"):
        _unreachable("rabbitmq-server", str(RABBITMQ_BIN), FileNotFoundError("rabbitmq-server"))
    node = PrivateRabbitMQ(tmp_path / "rabbitmq")
    try:
        node.start()
        yield node
    finally:
        node.stop()


__all__ = ["PrivateRabbitMQ", "Report", "Size"]
