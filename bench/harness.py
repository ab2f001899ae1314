"""What every part of a run shares: the servers, unique names per measurement, and cleanup.

Every measurement ("cell") gets its own Dramatiq namespace (Redis broker), queue (RabbitMQ),
store key prefix and counter key, all under the run's id, and deletes them when it ends; the
harness never touches other data on the shared servers. The store's private
``redis-server`` is emptied between cells so that each starts from the same state.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis

from . import servers, workers
from .servers import RedisServer


@dataclass
class Names:
    """The names of one measurement."""

    index: int
    namespace: str
    queue: str
    prefix: str
    counter_key: str


@dataclass
class Setup:
    """The servers and settings of a run.

    Parameters:
      out(Path): this run's output folder (results, worker logs).
      redis_url(str): the Redis of the Redis broker; the jobs' counters live there too.
      amqp_url(str): the RabbitMQ broker.
      store_url(str): the store's Redis.
      store_server(RedisServer | None): the private server behind ``store_url``, if the harness
        started it (then it is emptied between measurements, and its counters are exact).
      broker_server(RedisServer | None): the private server behind ``redis_url``, if any.
    """

    out: Path
    redis_url: str
    amqp_url: str
    store_url: str
    store_server: RedisServer | None = None
    broker_server: RedisServer | None = None
    processes: int = 2
    threads: int = 8
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def names(self) -> Names:
        i = next(self._seq)
        base = f"bench{self.run_id}_{i}"
        return Names(
            index=i,
            namespace=f"dramatiq-{base}",
            queue=base,
            prefix=f"b{self.run_id}{i}",
            counter_key=f"{base}:count",
        )

    def broker_url(self, kind: str) -> str:
        return self.redis_url if kind == "redis" else self.amqp_url

    def env(self, kind: str, variant: str, names: Names) -> dict[str, str]:
        """The environment of ``bench.app`` for one measurement."""
        return {
            "BENCH_BROKER_URL": self.broker_url(kind),
            "BENCH_NAMESPACE": names.namespace,
            "BENCH_QUEUE": names.queue,
            "BENCH_VARIANT": variant,
            "BENCH_STORE_URL": self.store_url,
            "BENCH_PREFIX": names.prefix,
            "BENCH_COUNTER_URL": self.redis_url,
            "BENCH_COUNTER_KEY": names.counter_key,
        }

    def store_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.store_url)

    def counter_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    @property
    def store_exact(self) -> bool:
        """True if only the benchmark uses the store's server (its counters are the store's)."""
        return self.store_server is not None

    def server_pids(self, kind: str) -> list[int]:
        """Local processes of the servers a measurement on ``kind`` uses (store, broker, counters).

        Their CPU is the measurement's, not "others'". A shared server's work for other
        clients cannot be told apart and counts as ours.
        """
        pids = set()
        for client in (self.store_client(), self.counter_client()):
            try:
                pid = int(client.info("server")["process_id"])
            except Exception:
                continue
            if workers.is_named(pid, "redis-server"):
                pids.add(pid)
        if kind == "rabbitmq":
            pids.update(workers.named("beam.smp"))
        return sorted(pids)

    def log(self, name: str) -> Path:
        logs = self.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        return logs / name

    def clean(self, kind: str, names: Names) -> None:
        """Delete what one measurement left: broker keys or queues, counters, store keys."""
        counter = self.counter_client()
        counter.delete(names.counter_key, names.counter_key + ":lat")
        if kind == "redis":
            servers.delete_prefix(counter, names.namespace + ":")
        else:
            servers.delete_rabbitmq_queues(self.amqp_url, [names.queue])
        self.reset_store(names.prefix)

    def reset_store(self, prefix: str) -> None:
        if self.store_server is not None:
            self.store_server.flush()
        else:
            servers.delete_prefix(self.store_client(), prefix + ":")
