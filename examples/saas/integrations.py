"""Fake SMTP, billing and data-warehouse services, and the app's tiny database, all in Redis.

Each service reads a switch in Redis before it acts, so anyone with access to that Redis (the
walkthrough, a test, you with ``redis-cli``) can break and fix it while the workers run::

    redis-cli -n 1 SET dr:saas:switch:smtp timeout     # SMTP times out (welcome emails retry)
    redis-cli -n 1 SET dr:saas:switch:smtp refused     # SMTP refuses (no retry helps)
    redis-cli -n 1 SET dr:saas:switch:warehouse hang   # the nightly report hangs
    redis-cli -n 1 DEL dr:saas:switch:smtp             # fixed

What the services did is counted under the same prefix (``smtp:sent`` and
``billing:rendered``, hashes by subject and by order), so a replay that would send a second
invoice shows.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

#: Switch values per service: what each one does while the switch holds it.
MODES = {"smtp": ("ok", "timeout", "refused"), "warehouse": ("ok", "hang")}


class SMTPTimeout(Exception):
    """The mail server did not answer in time (worth retrying)."""


class SMTPRefused(Exception):
    """The mail server refused the connection (retrying within seconds will not help)."""


class Data:
    """The app's database and the services' switches: keys under ``prefix`` in one Redis."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.prefix = prefix

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # -- switches ------------------------------------------------------------------------------

    def switch(self, service: str, mode: str) -> None:
        """Make ``service`` behave as ``mode`` (one of :data:`MODES`) from now on."""
        if mode not in MODES[service]:
            raise ValueError(f"{service} modes are {', '.join(MODES[service])}, not {mode!r}")
        if mode == "ok":
            self.client.delete(self.key("switch", service))
        else:
            self.client.set(self.key("switch", service), mode)

    def mode(self, service: str) -> str:
        return self.client.get(self.key("switch", service)) or "ok"

    # -- users ---------------------------------------------------------------------------------

    def create_user(self, email: str) -> int:
        user_id = int(self.client.incr(self.key("user_ids")))
        self.client.hset(self.key("user", str(user_id)), mapping={"email": email, "welcome_email": "queued"})
        return user_id

    def user(self, user_id: int) -> dict[str, str]:
        return dict(self.client.hgetall(self.key("user", str(user_id))))

    def note(self, user_id: int, field: str, text: str) -> None:
        self.client.hset(self.key("user", str(user_id)), field, text)

    # -- what the services did -----------------------------------------------------------------

    def sent(self, subject: str) -> int:
        """How many emails went out with this subject."""
        return int(self.client.hget(self.key("smtp", "sent"), subject) or 0)

    def rendered(self, order_id: int) -> int:
        """How many times the invoice of this order was rendered."""
        return int(self.client.hget(self.key("billing", "rendered"), str(order_id)) or 0)


class SMTP:
    """``send()`` an email, or fail as the ``smtp`` switch says."""

    host = "smtp.example.com:587"

    def __init__(self, data: Data) -> None:
        self.data = data

    def send(self, to: str, subject: str, attachment: str | None = None) -> str:
        mode = self.data.mode("smtp")
        if mode == "timeout":
            time.sleep(0.05)
            raise SMTPTimeout(f"{self.host} did not answer within 10 s (sending {subject!r} to {to})")
        if mode == "refused":
            raise SMTPRefused(f"{self.host} refused the connection (sending {subject!r} to {to})")
        self.data.client.hincrby(self.data.key("smtp", "sent"), subject, 1)
        return f"<{time.time_ns()}@example.com>"


class Billing:
    """Renders invoices (counted, so a second rendering of one order shows)."""

    def __init__(self, data: Data) -> None:
        self.data = data

    def render_invoice(self, order_id: int, customer_id: int, amount_cents: int) -> dict[str, Any]:
        self.data.client.hincrby(self.data.key("billing", "rendered"), str(order_id), 1)
        return {"file": f"invoice-{order_id}.pdf", "customer_id": customer_id, "total_cents": amount_cents}


class Warehouse:
    """The reporting database; hangs while the ``warehouse`` switch says ``hang``."""

    def __init__(self, data: Data) -> None:
        self.data = data

    def daily_totals(self) -> dict[str, int]:
        self.wait_for_replica()
        return {"signups": int(self.data.client.get(self.data.key("user_ids")) or 0)}

    def wait_for_replica(self) -> None:
        # A replica that never catches up: the loop a stuck job's stack points at.
        while self.data.mode("warehouse") == "hang":
            time.sleep(0.2)

    def save_report(self, report: dict[str, Any]) -> None:
        self.data.client.rpush(self.data.key("reports"), json.dumps(report))
