"""Dead letters at scale: ``dead list`` first page and ``dead stats`` over N dead letters, replay rate.

Fills a dedicated store prefix (and the broker's dead-letter queue of a dedicated queue, so
the store and the broker agree, as they do in production) with N dead letters, times the CLI
commands in-process (``cli.main``, so Python's start-up is not counted) and the library calls
under them, then replays a share of them and reports the rate. Everything it created is
deleted at the end.

    python bench/dead_letters.py --broker redis://127.0.0.1:6379/14 --n 100000
    python bench/dead_letters.py --broker amqp://guest:guest@127.0.0.1:5672/%2F --n 100000

Figures from a shared machine are only indicative; say so when you quote them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import time
import uuid
from typing import Any

import redis
from dramatiq import Message

import dramatiq_reliable as dr
from dramatiq_reliable._clock import now_ms
from dramatiq_reliable.brokers import broker_from_url, check_broker_url
from dramatiq_reliable.cli import main

RETENTION = 30 * 86_400_000
ACTORS = ["send_invoice", "welcome_email", "nightly_report", "sync_crm"]
ERRORS = ["SMTPTimeout", "SMTPTimeout", "SMTPTimeout", "ConnectionError", "ValueError"]


def fill(store: dr.RedisStore, broker: Any, kind: str, queue: str, n: int) -> list[str]:
    """N dead letters: the broker's entries and the store's copies, as a worker would leave them."""
    ids = []
    now = now_ms() - 3_600_000
    ops: list[dict[str, Any]] = []
    pipe = broker.client.pipeline(transaction=False) if kind == "redis" else None
    channel = None
    if kind == "rabbitmq":
        broker.declare_queue(queue, ensure=True)
        channel = broker.channel
    xq = f"{getattr(broker, 'namespace', '')}:{queue}.XQ"
    for i in range(n):
        actor = ACTORS[i % len(ACTORS)]
        etype = ERRORS[i % len(ERRORS)]
        xid = str(uuid.uuid4())
        message = Message(
            queue_name=queue,
            actor_name=actor,
            args=(i,),
            kwargs={"customer_id": i % 977},
            options={"max_retries": 3, "retries": 3, "redis_message_id": xid},
        )
        body = message.encode()
        ids.append(message.message_id)
        err = {"type": etype, "message": f"{etype} talking to the server ({i})", "traceback": "Traceback ...\n" * 10}
        dl = {"actor": actor, "queue": queue, "att": 4, "maxr": 3, "err": err, "msg": body.decode(), "ret": RETENTION}
        if kind == "redis":
            dl["xid"] = xid
            assert pipe is not None
            pipe.zadd(xq, {xid: now + i})
            pipe.hset(xq + ".msgs", xid, body)
        else:
            assert channel is not None
            channel.basic_publish("", f"{queue}.XQ", body)
        ops.append({"k": "finish", "id": message.message_id, "dl": dl})
        if len(ops) == 500:
            store.apply({"now": now + i, "ops": ops})
            ops = []
            if pipe is not None:
                pipe.execute()
    if ops:
        store.apply({"now": now + n, "ops": ops})
    if pipe is not None:
        pipe.execute()
    return ids


def timed(fn: Any, reps: int) -> tuple[float, float]:
    """(median, max) seconds of ``reps`` calls."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), max(times)


def cli(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    assert code == 0, (args, code)
    return out.getvalue()


def cleanup(store_url: str, prefix: str, broker: Any, kind: str, queue: str) -> None:
    client = redis.Redis.from_url(store_url)
    for key in client.scan_iter(match=prefix + ":*", count=5000):
        client.delete(key)
    if kind == "redis":
        for key in broker.client.scan_iter(match=f"{broker.namespace}:*", count=5000):
            broker.client.delete(key)
    else:
        channel = broker.channel
        for suffix in ("", ".DQ", ".XQ"):
            channel.queue_delete(queue + suffix)


def run(args: argparse.Namespace) -> dict[str, Any]:
    kind = check_broker_url(args.broker)
    tag = "bench" + uuid.uuid4().hex[:8]
    queue = f"{tag}_q"
    namespace = f"dramatiq-{tag}"
    broker_url = f"{args.broker}?namespace={namespace}" if kind == "redis" else args.broker
    broker = broker_from_url(broker_url)
    store = dr.RedisStore(args.store, prefix=tag)
    store_url = f"{args.store}?prefix={tag}"
    report: dict[str, Any] = {"broker": kind, "n": args.n, "note": "shared 2-core machine, busy: indicative only"}
    try:
        t0 = time.perf_counter()
        ids = fill(store, broker, kind, queue, args.n)
        report["fill_s"] = round(time.perf_counter() - t0, 1)
        dr.dead.sync(store, broker)  # the first listing after the fill settles the offsets

        base = ["--store", store_url, "--broker", broker_url]
        report["cli_list_first_page_ms"] = [round(x * 1000, 1) for x in timed(lambda: cli(*base, "dead", "list"), 7)]
        report["cli_list_json_first_page_ms"] = [
            round(x * 1000, 1) for x in timed(lambda: json.loads(cli(*base, "dead", "list", "--json")), 7)
        ]
        report["cli_stats_ms"] = [round(x * 1000, 1) for x in timed(lambda: cli(*base, "dead", "stats"), 7)]
        report["store_first_page_ms"] = [round(x * 1000, 1) for x in timed(lambda: store.dead_letters(limit=20), 7)]
        report["store_stats_ms"] = [round(x * 1000, 1) for x in timed(store.dead_letter_stats, 7)]
        report["cli_list_actor_ms"] = [
            round(x * 1000, 1) for x in timed(lambda: cli(*base, "dead", "list", "--actor", "sync_crm"), 5)
        ]
        report["cli_list_error_text_ms"] = [
            round(x * 1000, 1) for x in timed(lambda: cli(*base, "dead", "list", "--error", "ValueError"), 5)
        ]
        if args.full_sync:
            t0 = time.perf_counter()
            dr.dead.sync(store, broker, force=True)
            report["full_reconcile_s"] = round(time.perf_counter() - t0, 2)

        chosen = ids[-args.replay :]
        t0 = time.perf_counter()
        results = dr.replay(store, broker, chosen)
        elapsed = time.perf_counter() - t0
        assert all(r.outcome == "replayed" for r in results), {r.outcome for r in results}
        rate = round(len(chosen) / elapsed)
        report["replay"] = {"count": len(chosen), "seconds": round(elapsed, 2), "per_second": rate}
    finally:
        cleanup(args.store, tag, broker, kind, queue)
        broker.close()
        store.close()
    return report


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/14", help="redis://… or amqp://…")
    parser.add_argument("--store", default="redis://127.0.0.1:6379/15", help="the store's Redis URL")
    parser.add_argument("--n", type=int, default=100_000, help="dead letters to create")
    parser.add_argument("--replay", type=int, default=5_000, help="dead letters to replay (the newest)")
    parser.add_argument("--full-sync", action="store_true", help="also time a full reconciliation")
    return parser.parse_args()


if __name__ == "__main__":
    print(json.dumps(run(parse()), indent=2))
