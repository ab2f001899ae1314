"""Apps for the cron CLI's bad-input tests, on a StubBroker; ``DR_TEST_CRON_CASE`` picks one.

``expr``: a malformed expression; ``tz``: an unknown time zone; ``none``: no schedule;
``raises``: the module fails at import; ``ok``: one valid schedule, no store installed.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.stub import StubBroker

import dramatiq_reliable as dr

case = os.environ.get("DR_TEST_CRON_CASE", "ok")
broker = StubBroker()
dramatiq.set_broker(broker)

if case == "raises":
    raise RuntimeError("DATABASE_URL is not set")

expression = "61 * * * *" if case == "expr" else "0 2 * * *"
zone = "Europe/Berln" if case == "tz" else "UTC"


@dramatiq.actor(broker=broker)
def nightly_report() -> None: ...


if case != "none":
    dr.cron(expression, timezone=zone)(nightly_report)
