"""Fixtures shared by every tier.

Servers: Redis at ``DR_TEST_REDIS`` (default ``redis://127.0.0.1:6379``) and RabbitMQ at
``DR_TEST_AMQP`` (default ``amqp://guest:guest@127.0.0.1:5672/%2F``). A test that needs one
that does not answer is skipped with the reason on a laptop, and fails when ``CI`` is set.

Isolation: every test gets its own key prefix in the store, its own Dramatiq namespace on
Redis and its own queue names on RabbitMQ, and deletes them afterwards, so suites can run in
parallel and never touch other data on the servers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

import dramatiq_reliable as dr

CI = bool(os.getenv("CI"))
REDIS = os.getenv("DR_TEST_REDIS", "redis://127.0.0.1:6379")
AMQP = os.getenv("DR_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")
#: Databases the tests use (keys are prefixed per test; nothing is flushed).
BROKER_DB = 14
STORE_DB = 15


def _unreachable(what: str, url: str, exc: BaseException) -> None:
    reason = f"{what} not reachable at {url}: {exc}"
    if CI:
        pytest.fail(f"{reason} (CI is set, so this is an error)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _stop_background_threads() -> Iterator[None]:
    """Stop the journal and heartbeat threads a test started, so they do not pile up in the run."""
    from dramatiq_reliable.middleware import _heartbeat
    from dramatiq_reliable.store import journal

    yield
    for j in list(journal._journals):
        j.close()
    for store in list(_heartbeat._heartbeats):
        _heartbeat.stop_heartbeat(store)


@pytest.fixture(scope="session")
def redis_server() -> str:
    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=2).ping()
    except Exception as exc:
        _unreachable("Redis", REDIS, exc)
    return REDIS


@pytest.fixture(scope="session")
def rabbitmq_server() -> str:
    import pika

    try:
        pika.BlockingConnection(pika.URLParameters(AMQP + "?connection_attempts=1&socket_timeout=3")).close()
    except Exception as exc:
        _unreachable("RabbitMQ", AMQP, exc)
    return AMQP


@pytest.fixture
def ns() -> str:
    """A short unique name for this test's keys, namespaces and queues."""
    return "t" + uuid.uuid4().hex[:10]


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])


@pytest.fixture
def redis_store(redis_server: str, ns: str) -> Iterator[dr.RedisStore]:
    store = dr.RedisStore(f"{redis_server}/{STORE_DB}", prefix=ns)
    yield store
    store.close()
    delete_prefix(redis.Redis.from_url(f"{redis_server}/{STORE_DB}"), ns + ":")


@pytest.fixture
def memory_store() -> dr.MemoryStore:
    return dr.MemoryStore()


@pytest.fixture(params=["memory", "redis", "cluster"])
def store(request: pytest.FixtureRequest) -> dr.Store:
    """Each store in turn: embedded, on one Redis, on a Redis Cluster (the contract tests run over all)."""
    if request.param == "memory":
        return dr.MemoryStore()
    return request.getfixturevalue(f"{request.param}_store")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One private 3-primary Redis Cluster for the whole run (tests keep to their own prefixes)."""
    yield from _cluster(tmp_path_factory.mktemp("cluster"))


@pytest.fixture
def cluster_store(shared_cluster: Any, ns: str) -> Iterator[dr.RedisStore]:
    """The store on the shared Redis Cluster, under this test's own prefix (its own hash tag)."""
    store = dr.RedisStore(f"{shared_cluster.url}?prefix={ns}")
    yield store
    store.close()
    client = shared_cluster.client()
    keys = list(client.scan_iter(match="{" + ns + "}:*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])
    client.close()


@pytest.fixture
def stub_broker() -> Iterator[StubBroker]:
    broker = StubBroker(fail_fast_default=False)
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    broker.flush_all()
    broker.close()


@pytest.fixture
def stub_worker(stub_broker: StubBroker) -> Iterator[dramatiq.Worker]:
    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=2)
    worker.start()
    yield worker
    worker.stop()


class ServerEnv(dict[str, str]):
    """Environment for ``tests/apps`` modules: which broker and store, under which names."""

    kind: str
    queue: str
    broker_url: str
    store_url: str
    prefix: str

    def store(self) -> dr.RedisStore:
        return dr.RedisStore(self.store_url, prefix=self.prefix)

    def redis(self) -> redis.Redis:
        """A client on the store's database (tests count side effects there)."""
        return redis.Redis.from_url(self.store_url, decode_responses=True)

    def with_options(self, **options: Any) -> ServerEnv:
        """A copy whose app passes ``options`` to ``dr.install``."""
        import json

        env = ServerEnv(self)
        env.__dict__.update(self.__dict__)
        env["DR_TEST_OPTIONS"] = json.dumps(options)
        return env

    def broker(self, **options: Any) -> dramatiq.Broker:
        """A broker like the app's, for sending from the test."""
        from dramatiq_reliable.brokers import broker_from_url

        if self.kind == "redis":
            options.setdefault("namespace", self["DR_TEST_NAMESPACE"])
        return broker_from_url(self.broker_url, **options)


def make_env(kind: str, redis_server: str, amqp: str | None, ns: str) -> ServerEnv:
    env = ServerEnv()
    env.kind = kind
    env.queue = f"{ns}_q"
    env.prefix = ns
    env.store_url = f"{redis_server}/{STORE_DB}"
    env.broker_url = f"{redis_server}/{BROKER_DB}" if kind == "redis" else str(amqp)
    env.update(
        DR_TEST_BROKER=env.broker_url,
        DR_TEST_STORE=env.store_url,
        DR_TEST_PREFIX=ns,
        DR_TEST_QUEUE=env.queue,
        DR_TEST_NAMESPACE=f"dramatiq-{ns}",
    )
    return env


def cleanup_env(env: ServerEnv, redis_server: str) -> None:
    delete_prefix(redis.Redis.from_url(env.store_url), env.prefix + ":")
    if env.kind == "redis":
        delete_prefix(redis.Redis.from_url(env.broker_url), env["DR_TEST_NAMESPACE"] + ":")
    else:
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(env.broker_url))
        channel = conn.channel()
        for suffix in ("", ".DQ", ".XQ"):
            channel.queue_delete(env.queue + suffix)
        conn.close()


@pytest.fixture(params=["redis", "rabbitmq"])
def server_env(request: pytest.FixtureRequest, redis_server: str, ns: str) -> Iterator[ServerEnv]:
    """Each real broker in turn (with a Redis store), isolated under this test's names."""
    amqp = request.getfixturevalue("rabbitmq_server") if request.param == "rabbitmq" else None
    env = make_env(request.param, redis_server, amqp, ns)
    yield env
    cleanup_env(env, redis_server)


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """A folder for this test's logs (kept under tests/artifacts/ for a failed CI run)."""
    name = request.node.nodeid.replace("/", "_").replace("::", "__").replace("[", "_").replace("]", "")
    path = Path(__file__).parent / "artifacts" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


class PrivateRedis:
    """A ``redis-server`` of this test's own, on a free port, that the test may stop and start."""

    def __init__(self, folder: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc: Any = None
        #: Extra ``redis-server`` arguments for the next start (e.g. an append-only file).
        self.start_args: list[str] = []

    def start(self) -> PrivateRedis:
        import shutil
        import subprocess

        from tests.helpers import wait_until

        server = shutil.which("redis-server")
        if server is None:
            _unreachable("redis-server", "PATH", FileNotFoundError("redis-server"))
        self.proc = subprocess.Popen(
            [
                str(server),
                *("--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.folder)),
                *(self.start_args or ["--appendonly", "no"]),
            ],
            cwd=self.folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            try:
                return bool(redis.Redis.from_url(self.url, socket_connect_timeout=0.2).ping())
            except Exception:
                return False

        wait_until(up, timeout=10, what="private redis-server")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path, redis_server: str) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[Any]:
    """A private 3-primary Redis Cluster (see ``tests/servers.py``); its processes die with the test."""
    yield from _cluster(tmp_path)


def _cluster(folder: Path) -> Iterator[Any]:
    from tests.servers import RedisCluster

    yield from _started(RedisCluster(folder))


def _started(servers: Any) -> Iterator[Any]:
    """Start private servers (``tests/servers.py``), yield them, and stop them whatever happens."""
    try:
        servers.start()
    except FileNotFoundError as exc:
        servers.stop()
        _unreachable("redis-server", "PATH", exc)
    except BaseException:
        servers.stop()
        raise
    yield servers
    servers.stop()


@pytest.fixture
def redis_sentinel(tmp_path: Path) -> Iterator[Any]:
    """A private primary + replica + Sentinel (see ``tests/servers.py``); killed after the test."""
    from tests.servers import SentinelTrio

    yield from _started(SentinelTrio(tmp_path))
