"""The servers a run uses: a private ``redis-server`` for the store, and counters read from Redis.

The store runs on a ``redis-server`` the harness starts on a free loopback port (no
persistence), so the deltas of its ``INFO`` counters are the store's traffic and nothing else.
The broker's Redis is the shared service unless ``--redis spawn`` asks for a private one too.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import redis

#: Commands the harness itself sends to a server it measures (left out of the counts).
HARNESS_COMMANDS = frozenset({"info"})
#: Commands that run the store's batch script: one call may carry the ops of many jobs.
SCRIPT_COMMANDS = frozenset({"evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro"})


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A private ``redis-server`` on a free loopback port, without persistence.

    Parameters:
      binary(str): the ``redis-server`` executable.
      name(str): what it is for, for messages ("store", "broker").
    """

    def __init__(self, binary: str = "redis-server", *, name: str = "store") -> None:
        path = shutil.which(binary)
        if path is None:
            raise RuntimeError(f"{binary!r} not found: install redis-server or pass --store-url")
        self.binary = path
        self.name = name
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix=f"bench-{name}-")

    def start(self, timeout: float = 10.0) -> RedisServer:
        for _ in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    self._dir.name,
                    "--databases",
                    "1",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    redis.Redis(port=self.port, socket_connect_timeout=0.5).ping()
                    return self
                except redis.ConnectionError:
                    time.sleep(0.05)
            self.stop()  # the port was taken meanwhile, or it did not come up: try another
        raise RuntimeError(f"could not start a private redis-server ({self.name})")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def flush(self) -> None:
        """Empty this private server (it belongs to the harness; nothing else uses it)."""
        self.client().flushall()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._dir.cleanup()


@dataclass
class Counters:
    """One reading of a Redis server's counters (``INFO stats commandstats cpu memory``)."""

    at: float
    #: Calls per command (lower case), the harness's own left out. Commands run by a script
    #: are counted too: Redis counts a ``redis.call`` like a command from a client.
    calls: dict[str, int] = field(default_factory=dict)
    #: Read events on client sockets: one per request (a pipeline or a script call is one).
    reads: int = 0
    #: CPU seconds used by the server (user + system).
    cpu: float = 0.0
    used_memory: int = 0


def read_counters(client: redis.Redis) -> Counters:
    """Read ``client``'s server counters in one round trip."""
    info: dict[str, Any] = client.info("stats", "commandstats", "cpu", "memory")
    calls = {
        name[len("cmdstat_") :].lower(): int(value["calls"])
        for name, value in info.items()
        if name.startswith("cmdstat_") and isinstance(value, dict)
    }
    return Counters(
        at=time.monotonic(),
        calls=calls,
        reads=int(info.get("total_reads_processed", 0)),
        cpu=float(info.get("used_cpu_user", 0.0)) + float(info.get("used_cpu_sys", 0.0)),
        used_memory=int(info.get("used_memory", 0)),
    )


@dataclass
class Traffic:
    """What a server did between two readings, per job."""

    #: Requests (socket reads) per job: the round trips clients made.
    round_trips: float
    #: Calls of a script (``EVALSHA``/``EVAL``) per job.
    script_calls: float
    #: Commands per job, those run inside scripts included.
    commands: float
    #: Server CPU microseconds per job.
    cpu_us: float
    #: Calls per job of each command.
    by_command: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "round_trips": self.round_trips,
            "script_calls": self.script_calls,
            "commands": self.commands,
            "cpu_us": self.cpu_us,
            "by_command": self.by_command,
        }


def traffic(
    before: Counters,
    after: Counters,
    jobs: int,
    *,
    own_reads: int = 1,
    own_calls: dict[str, int] | None = None,
) -> Traffic:
    """The traffic between two readings, per job.

    ``own_reads`` is how many requests the harness itself sent in between (the ``INFO`` of
    ``after`` counts itself; add the harness's other requests to that server), and
    ``own_calls`` the commands they were (``{"get": 12}``), left out of the counts.
    """
    n = max(jobs, 1)
    own = own_calls or {}
    delta = {
        name: calls - before.calls.get(name, 0) - own.get(name, 0)
        for name, calls in after.calls.items()
        if name not in HARNESS_COMMANDS
    }
    delta = {name: calls for name, calls in delta.items() if calls > 0}
    return Traffic(
        round_trips=max(after.reads - before.reads - own_reads, 0) / n,
        script_calls=sum(v for k, v in delta.items() if k in SCRIPT_COMMANDS) / n,
        commands=sum(delta.values()) / n,
        cpu_us=(after.cpu - before.cpu) * 1e6 / n,
        by_command={k: v / n for k, v in sorted(delta.items())},
    )


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    """Delete the keys that start with ``prefix`` (the harness's own names only)."""
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])
    return len(keys)


def delete_rabbitmq_queues(url: str, queues: list[str]) -> None:
    """Delete the harness's own queues (``q``, ``q.DQ``, ``q.XQ`` for each)."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = conn.channel()
        for queue in queues:
            for suffix in ("", ".DQ", ".XQ"):
                channel.queue_delete(queue + suffix)
    finally:
        conn.close()
