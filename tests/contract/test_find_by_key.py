"""``find_jobs(key=...)`` over every store: values are searched as they are recorded (strings)."""

from __future__ import annotations

import pytest

from dramatiq_reliable.errors import ConfigurationError

NOW = 1_763_700_000_000


def record(store, job_id: str, **keys: str) -> None:
    job = {"actor": "invoice", "queue": "default", "maxr": 0, "enq_ms": NOW, "args": "{}", "keys": keys}
    store.apply({"now_ms": NOW, "ops": [{"k": "enqueue", "id": job_id, "job": job}]})


@pytest.mark.parametrize(
    ("recorded", "searched"),
    # What JobState records for order_id=<value> (compact JSON for a non-string), and the value
    [("4711", 4711), ("4711", "4711"), ("true", True), ("null", None), ("1.5", 1.5), ("[1,2]", [1, 2])],
)
def test_a_value_is_found_whatever_its_type(store, recorded, searched) -> None:
    # Given a job recorded with the business key order_id=<value>, as a string
    record(store, "j1", order_id=recorded)
    # When it is searched with the value as the caller has it (an int, a str, ...)
    # Then it is found, alone or combined with another filter
    assert [r.id for r in store.find_jobs(key=("order_id", searched))] == ["j1"]
    assert [r.id for r in store.find_jobs(key=("order_id", searched), status="queued")] == ["j1"]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (("order_id", object()), "cannot be a business key's value"),
        (("order_id", b"4711"), "a bytes cannot be a business key's value"),
        (("", 4711), "name must be a non-empty string"),
        ((4711, "order_id"), "name must be a non-empty string"),
        ("order_id=4711", "key must be a (name, value) pair"),
        (("order_id",), "key must be a (name, value) pair"),
        (("order_id", 1, 2), "key must be a (name, value) pair"),
    ],
)
def test_a_key_that_cannot_be_recorded_fails_loudly(store, key, message) -> None:
    record(store, "j1", order_id="4711")
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        store.find_jobs(key=key)
