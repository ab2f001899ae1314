"""The app of ``bench/alerts_overhead.py``: no-op jobs (one Redis INCR each), with or without Alerts + metrics.

``BENCH_VARIANT``: ``bundle`` (JobState + Idempotency) or ``alerts`` (JobState + Alerts +
Idempotency, with ``dr.enable_metrics(BENCH_PROM_DIR)``, and a ``WebhookNotifier`` to
``BENCH_WEBHOOK`` if set).
"""

from __future__ import annotations

import os

import dramatiq
import redis

import dramatiq_reliable as dr
from dramatiq_reliable.brokers import broker_from_url
from dramatiq_reliable.install import add

env = os.environ
url = env["BENCH_BROKER"]
broker = broker_from_url(url, **({"namespace": env["BENCH_NS"]} if url.startswith("redis") else {}))
store = dr.RedisStore(env["BENCH_STORE"], prefix=env["BENCH_PREFIX"])
if env["BENCH_VARIANT"] == "alerts":
    dr.enable_metrics(env["BENCH_PROM_DIR"])
    hook = env.get("BENCH_WEBHOOK")
    dr.install(broker, store, notifiers=[dr.WebhookNotifier(hook, timeout=60, retries=0)] if hook else [])
else:
    add(broker, dr.JobState(store))
    add(broker, dr.Idempotency(store))
dramatiq.set_broker(broker)
counter = redis.Redis.from_url(env["BENCH_STORE"])
done_key = f"{env['BENCH_PREFIX']}:bench:done"


@dramatiq.actor(queue_name=env["BENCH_QUEUE"], max_retries=0)
def noop() -> None:
    counter.incr(done_key)


@dramatiq.actor(queue_name=env["BENCH_QUEUE"], max_retries=0)
def fail() -> None:
    counter.incr(done_key)
    raise RuntimeError("bench failure")


@dramatiq.actor(queue_name=env["BENCH_QUEUE"], max_retries=0)
def distinct(i: int = 0) -> None:
    counter.incr(done_key)
    raise type(f"Error{i}", (Exception,), {})("bench failure")  # its own throttle key: every job alerts
