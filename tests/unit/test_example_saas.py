"""The SaaS example's settings and switches (no server: nothing here connects)."""

from __future__ import annotations

import pytest
from examples.saas.integrations import Data
from examples.saas.settings import Settings


def test_defaults_and_quick() -> None:
    plain, quick = Settings.from_env({}), Settings.from_env({"SAAS_QUICK": "1"})
    assert plain.broker_url == "redis://127.0.0.1:6379/0" and plain.store_url == "redis://127.0.0.1:6379/1"
    assert (plain.backoff_ms, plain.abandon_after, plain.report_stuck_after) == (10_000, 30.0, 600.0)
    assert (quick.backoff_ms, quick.abandon_after, quick.report_stuck_after) == (100, 3.0, 2.0)
    assert quick.report_stuck_after < quick.report_time_limit
    assert Settings.from_env({"SAAS_QUICK": "1", "SAAS_BACKOFF_MS": "250"}).backoff_ms == 250


def test_names_for_an_isolated_run() -> None:
    s = Settings.from_env(
        {
            "SAAS_BROKER": "redis://h:6379/14",
            "SAAS_NAMESPACE": "dramatiq-t1",
            "SAAS_STORE": "redis://h:6379/15?prefix=t1",
            "SAAS_QUEUE_PREFIX": "t1_",
        }
    )
    assert s.queues == ["t1_emails", "t1_billing", "t1_reports"]
    assert s.cli_broker_url == "redis://h:6379/14?namespace=dramatiq-t1"
    assert (s.data_url, s.store_prefix, s.data_prefix) == ("redis://h:6379/15", "t1", "t1:saas:")
    amqp = Settings.from_env({"SAAS_BROKER": "amqp://guest:guest@h:5672/%2F", "SAAS_NAMESPACE": "x"})
    assert not amqp.redis_broker and amqp.cli_broker_url == "amqp://guest:guest@h:5672/%2F"
    assert Settings.from_env({}).store_prefix == "dr"


@pytest.mark.parametrize(("name", "value"), [("SAAS_BACKOFF_MS", "fast"), ("SAAS_ABANDON_AFTER", "-1")])
def test_a_bad_number_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})


def test_switches_take_only_known_modes() -> None:
    data = Data("redis://127.0.0.1:1/0", "t:saas:")  # never connects: the mode is refused first
    with pytest.raises(ValueError, match="smtp modes are ok, timeout, refused"):
        data.switch("smtp", "slow")
    assert data.key("switch", "smtp") == "t:saas:switch:smtp"
