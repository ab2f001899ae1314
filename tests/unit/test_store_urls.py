"""Store URLs: Sentinel and replica-wait options are parsed without a server; bad ones are one clear line."""

from __future__ import annotations

import pytest
from redis.sentinel import SentinelConnectionPool

import dramatiq_reliable as dr
from dramatiq_reliable.store import _connect


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database() -> None:
    store = dr.open_store("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2/orders/3?prefix=app")
    assert isinstance(store, dr.RedisStore)
    pool = store.client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "orders"
    assert pool.connection_kwargs["db"] == 3 and pool.connection_kwargs["password"] == "s3cret"
    sentinels = pool.sentinel_manager.sentinels
    assert [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"]) for s in sentinels
    ] == [
        ("10.0.0.1", 26379),
        ("10.0.0.2", 26379),
    ]
    assert store.prefix == "app:" and "s3cret" not in store.url and ":***@" in store.url
    # Sentinel URLs wait for one replica by default; plain URLs do not
    assert store._replicas.replicas == 1 and store._replicas.timeout_ms == 200
    assert dr.RedisStore("redis://127.0.0.1:6379/1")._replicas.replicas == 0


def test_wait_options_and_the_sentinels_password() -> None:
    store = dr.RedisStore("redis+sentinel://h:26379/svc?wait=0&sentinel_password=topsecret")
    assert store._replicas.replicas == 0 and "topsecret" not in store.url
    assert dr.RedisStore("redis://h/1?wait=2&wait_timeout_ms=50")._replicas.timeout_ms == 50


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h:26379", "expected …/service_name[/db]"),
        ("redis+sentinel://h:26379/svc/x", "the database must be a number"),
        ("redis+sentinel://h:26379/svc/1/2", "expected …/service_name[/db]"),
        ("redis+sentinel://h:port/svc", "is not host:port"),
        ("redis://h/1?wait=yes", "wait must be a whole number"),
        ("redis://h/1?wait_timeout_ms=0", "wait_timeout_ms must be a whole number"),
    ],
)
def test_bad_urls_are_refused_in_one_line(url: str, says: str) -> None:
    with pytest.raises(dr.ConfigurationError, match=r"^malformed .*") as caught:
        dr.open_store(url)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_the_eviction_policy_and_the_replica_role_are_read_from_info() -> None:
    shown = "redis://h/1"
    assert _connect.server_problems({"role": "master", "maxmemory_policy": "noeviction"}, shown) == (None, [])
    error, warnings = _connect.server_problems({"role": "master", "maxmemory_policy": "volatile-lru"}, shown)
    assert error is None and len(warnings) == 1 and "keys with a TTL" in warnings[0]
    error, _ = _connect.server_problems({"role": "slave", "master_host": "p", "master_port": 6379}, shown)
    assert error is not None and "read-only replica (of p:6379)" in error
