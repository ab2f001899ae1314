"""Private Redis topologies for tests: a 3-primary Redis Cluster, and a primary + replica + Sentinel.

Every server is a ``redis-server`` child of the test run, on free loopback ports, with its
files in the test's temporary folder; ``stop()`` kills them all. Startup takes well under a
second for each (slots are assigned with ``CLUSTER ADDSLOTSRANGE``, not ``redis-cli --cluster
create``, which waits for a full handshake round with fixed sleeps).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import redis

from tests.helpers import wait_until

#: Hash slots of a Redis Cluster.
SLOTS = 16384
#: Name of the primary the Sentinel watches.
SERVICE = "mymaster"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise FileNotFoundError("redis-server is not on PATH")
    return found


def _answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.2).ping())
    except Exception:
        return False


class Node:
    """One ``redis-server`` process (server or Sentinel) on a port of its own."""

    def __init__(self, folder: Path, name: str, args: list[str], *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.folder = folder / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=2, **options)

    def start(self, *, wait: bool = True) -> Node:
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - the child keeps it open
        self.proc = subprocess.Popen(
            [redis_server_binary(), *self.args, "--port", str(self.port), "--bind", "127.0.0.1"],
            cwd=self.folder,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if wait:
            wait_until(lambda: _answers(self.port), timeout=10, what=f"redis-server on {self.port}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _data_args() -> list[str]:
    return ["--save", "", "--appendonly", "no", "--dir", "."]


def _cluster_args(bus_port: int) -> list[str]:
    # The bus port is given: the default (port + 10000) needs a port below 55536 and may be taken.
    return ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", str(bus_port)]


class RedisCluster:
    """A Redis Cluster of ``primaries`` primaries (no replicas), slots split evenly."""

    def __init__(self, folder: Path, primaries: int = 3) -> None:
        self.bus_ports = [free_port() for _ in range(primaries)]
        self.nodes = [
            Node(folder, f"cluster{i}", [*_data_args(), *_cluster_args(bus)]) for i, bus in enumerate(self.bus_ports)
        ]

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL naming every node."""
        return "redis+cluster://" + ",".join(n.addr for n in self.nodes)

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            wait_until(lambda n=node: _answers(n.port), timeout=10, what=f"cluster node {node.port}")
        share = SLOTS // len(self.nodes)
        for i, node in enumerate(self.nodes):
            first = i * share
            last = SLOTS - 1 if i == len(self.nodes) - 1 else first + share - 1
            node.client().execute_command("CLUSTER ADDSLOTSRANGE", first, last)
        head = self.nodes[0].client()
        for node, bus in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
            head.execute_command("CLUSTER MEET", "127.0.0.1", node.port, bus)

        def ready() -> bool:
            for node in self.nodes:
                info = node.client(decode_responses=True).execute_command("CLUSTER INFO")
                if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) != len(self.nodes):
                    return False
            return True

        wait_until(ready, timeout=20, interval=0.1, what="Redis Cluster state ok")
        return self

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


class SentinelTrio:
    """A primary, its replica, and one Sentinel (quorum 1) that fails over within ~2 s."""

    def __init__(self, folder: Path, *, down_after_ms: int = 1000) -> None:
        self.folder = folder
        self.primary = Node(folder, "primary", _data_args())
        self.replica = Node(folder, "replica", [*_data_args(), "--replicaof", "127.0.0.1", "0"])
        self.sentinel_port = free_port()
        self.down_after_ms = down_after_ms
        self.sentinel: Node | None = None

    @property
    def url(self) -> str:
        """``redis+sentinel://`` URL of the service (no database: the default 0)."""
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{SERVICE}"

    def start(self) -> SentinelTrio:
        self.replica.args[-1] = str(self.primary.port)
        self.primary.start(wait=False)
        self.replica.start(wait=False)
        conf = self.folder / "sentinel.conf"
        conf.write_text(
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self.sentinel = Node(self.folder, "sentinel", [str(conf), "--sentinel"], port=self.sentinel_port)
        self.sentinel.start(wait=False)
        for node in (self.primary, self.replica, self.sentinel):
            wait_until(lambda n=node: _answers(n.port), timeout=10, what=f"redis on {node.port}")
        wait_until(self._synced, timeout=20, interval=0.1, what="replica in sync and known to the Sentinel")
        return self

    def _synced(self) -> bool:
        assert self.sentinel is not None
        info = self.replica.client().info("replication")
        if info.get("master_link_status") != "up":
            return False
        replicas = self.sentinel.client().execute_command("SENTINEL", "REPLICAS", SERVICE)
        return bool(replicas)

    def master_port(self) -> int:
        """The port of the primary the Sentinel names now."""
        assert self.sentinel is not None
        _host, port = self.sentinel.client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    def stop(self) -> None:
        for node in (self.sentinel, self.replica, self.primary):
            if node is not None:
                node.kill()
