"""``dramatiq-reliable demo``: the whole lifecycle in one process, and what a person sees of it.

With no URLs it needs no server: a ``StubBroker``, a ``MemoryStore`` and a Dramatiq ``Worker``
in this process. With ``--broker`` and ``--store`` it runs the same jobs through real servers
(an in-process worker on the queue ``dramatiq_reliable_demo``) and leaves the records there
to explore with the CLI.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import dramatiq

from .cli.render import job_detail, job_table
from .install import install
from .records import JobRecord
from .store.base import Store

QUEUE = "dramatiq_reliable_demo"


def run_demo(broker_url: str | None = None, store_url: str | None = None, echo: Callable[[str], Any] = print) -> int:
    """Run the demo; return 0 if every job reached the status it should."""
    broker, store, where = _setup(broker_url, store_url)
    install(broker, store)
    actors = _actors(broker)
    echo(f"dramatiq-reliable demo: {where}\n")
    # On real servers each run uses new ids, so that a second run is not a duplicate of the first.
    n = 0 if broker_url is None and store_url is None else int(time.time()) % 1_000_000 * 10
    user, order = 1 + n, 4711 + n
    sent = [
        (f"welcome_email(user_id={user})", "succeeds", actors.welcome_email.send(user)),
        (f"charge_card(order_id={order}, …)", "fails once, then succeeds", actors.charge_card.send(order, 1999, "tok")),
        (
            f"send_invoice(order_id={order + 1}, …)",
            "fails every time: dead-lettered",
            actors.send_invoice.send(order + 1, 7),
        ),
    ]
    echo("Sent:")
    for label, what, _ in sent:
        echo(f"  {label.ljust(34)} {what}")
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=2)
    quiet = logging.getLogger("dramatiq")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # the worker's own tracebacks; the records tell the story
    worker.start()
    try:
        _wait(store, [sent[0][2].message_id], timeout=30.0)
        duplicate = actors.welcome_email.send(user)
        echo(f"  {f'welcome_email(user_id={user})'.ljust(34)} again, after it completed: a duplicate\n")
        ids = [m.message_id for _, _, m in sent] + [duplicate.message_id]
        ok = _wait(store, ids, timeout=30.0)
    finally:
        worker.stop()
        store.journal.flush()
        quiet.setLevel(level)
    _show(store, ids, order, echo)
    if broker_url:
        echo(
            f"\nThe records stay in the store. Explore them:\n"
            f"  dramatiq-reliable --store {store.url} jobs list --actor send_invoice\n"
            f"  dramatiq-reliable --store {store.url} jobs show {ids[0]} --json"
        )
    expected = ["done", "done", "failed", "skipped"]
    got = [str(getattr(store.get_job(i), "status", None)) for i in ids]
    if not ok or got != expected:
        echo(f"\nUnexpected statuses: {got} (expected {expected})")
        return 1
    echo("\nEvery job reached the status it should: done, done (after a retry), failed, skipped (duplicate).")
    return 0


def _actors(broker: dramatiq.Broker) -> Any:
    attempts: dict[int, int] = {}

    @dramatiq.actor(
        broker=broker, queue_name=QUEUE, max_retries=0, track=("user_id",), idempotency_key="welcome:{user_id}"
    )
    def welcome_email(user_id: int) -> None:
        time.sleep(0.05)

    @dramatiq.actor(
        broker=broker, queue_name=QUEUE, max_retries=3, min_backoff=200, max_backoff=400, track=("order_id",)
    )
    def charge_card(order_id: int, amount_cents: int, card_token: str) -> None:
        attempts[order_id] = attempts.get(order_id, 0) + 1
        if attempts[order_id] == 1:
            raise TimeoutError("payment gateway did not answer within 10s")

    @dramatiq.actor(
        broker=broker,
        queue_name=QUEUE,
        max_retries=1,
        min_backoff=200,
        max_backoff=400,
        track=("order_id", "customer_id"),
    )
    def send_invoice(order_id: int, customer_id: int) -> None:
        raise ConnectionRefusedError("SMTP relay mail.example.com:25 refused the connection")

    return SimpleNamespace(welcome_email=welcome_email, charge_card=charge_card, send_invoice=send_invoice)


def _show(store: Store, ids: list[str], order: int, echo: Callable[[str], Any]) -> None:
    records = [r for r in (store.get_job(i) for i in ids) if r is not None]
    echo("$ dramatiq-reliable jobs list")
    echo(job_table(records))
    dead = store.get_job(ids[2])
    if dead is not None:
        echo(f"\n$ dramatiq-reliable jobs show {dead.id}")
        echo(job_detail(dead))
    echo(f"\n$ dramatiq-reliable jobs list --key order_id={order}")
    echo(job_table(list(store.find_jobs(key=("order_id", str(order))))))


def _setup(broker_url: str | None, store_url: str | None) -> tuple[dramatiq.Broker, Store, str]:
    from ._urls import hide_password
    from .brokers import broker_from_url, ping_broker
    from .store import MemoryStore, open_store

    if broker_url is None:
        from dramatiq.brokers.stub import StubBroker

        broker: dramatiq.Broker = StubBroker(fail_fast_default=False)
        broker.emit_after("process_boot")
    else:
        broker = broker_from_url(broker_url)
        ping_broker(broker)
    store = open_store(store_url) if store_url else MemoryStore()
    store.ping()
    where = (
        "StubBroker + MemoryStore, one worker in this process (no server needed)"
        if broker_url is None and store_url is None
        else f"broker {hide_password(broker_url or 'StubBroker')}, store {store.url}, one worker in this process"
    )
    return broker, store, where


def _wait(store: Store, ids: list[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records: list[JobRecord | None] = [store.get_job(i) for i in ids]
        if all(r is not None and r.status.terminal for r in records):
            return True
        time.sleep(0.1)
    return False
