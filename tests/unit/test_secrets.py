"""Secrets: the name rule, text masking, URL credentials, snapshots, deep arguments (StubBroker + MemoryStore)."""

from __future__ import annotations

import json
import logging
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

import dramatiq_reliable as dr
from dramatiq_reliable._secrets import DEFAULT_REDACT, REDACTED, TextMask, is_secret, mask_urls, normalize, words
from dramatiq_reliable._snapshot import TOO_DEEP, Snapshotter
from dramatiq_reliable.alert import Alert
from dramatiq_reliable.cli import dead_render, render

SECRET = "hunter2-s3cr3t"
DSN_PASSWORD = "dbpa55word"
DSN = f"postgresql://app:{DSN_PASSWORD}@db.internal:5432/shop"


# -- the name rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "new_password",
        "DB_PASSWORD",
        "userPassword",
        "passwords",
        "pwd",
        "passwd",
        "auth",
        "auth_header",
        "authToken",
        "oauth_token",
        "csrfToken",
        "api_key",
        "apiKey",
        "APIKey",
        "x-api-key",
        "apikey",
        "aws_access_key_id",
        "privateKey",
        "client_secret",
        "credentials",
        "cookie",
        "cookies",
        "session_id",
        "sessionKey",
        "pin",
        "user_pin",
        "userPIN2",
        "sentry_dsn",
        "card_number",
        "cvv",
    ],
)
def test_secret_names_by_whole_words(name: str) -> None:
    assert is_secret(name, normalize(DEFAULT_REDACT)), name


@pytest.mark.parametrize(
    "name",
    ["shipping_address", "spinner", "pinned", "author", "authority_id", "discard", "cardinality", "tokenizer", "id"],
)
def test_names_that_only_contain_a_secret_word_are_not_secret(name: str) -> None:
    # Matching by containment would hide these (pin in shipping, auth in author, card in discard)
    assert not is_secret(name, normalize(DEFAULT_REDACT)), name


def test_words_split_at_separators_digits_and_camel_case() -> None:
    assert words("userPIN_code2") == ("user", "pin", "code", "2")
    assert words("APIKey") == ("api", "key")
    assert words("x-api.key") == ("x", "api", "key")


def test_custom_entries_follow_the_same_rule() -> None:
    redact = normalize(["ssn", "Bank-Account"])
    assert is_secret("customer_ssn", redact) and is_secret("bankAccount", redact)
    assert is_secret("bank_account_number", redact) and not is_secret("lesson", redact)


# -- text ------------------------------------------------------------------------------------------


def test_url_credentials_are_masked_in_text() -> None:
    text = f"could not connect to {DSN} nor redis://:r3dispass@cache:6379/0 nor amqp://guest:guest@mq"
    masked = mask_urls(text)
    assert "postgresql://app:***@db.internal:5432/shop" in masked
    assert "redis://:***@cache:6379/0" in masked and "amqp://guest:***@mq" in masked
    assert DSN_PASSWORD not in masked and "r3dispass" not in masked


def test_secret_query_parameters_are_masked_and_others_kept() -> None:
    masked = mask_urls("GET https://api.example/v1?page=2&access_token=abc123&password=pw99&sort=asc failed")
    assert masked == "GET https://api.example/v1?page=2&access_token=***&password=***&sort=asc failed"


def test_a_url_without_a_password_is_left_alone() -> None:
    text = "ssh://git@github.com/x.git and http://host:8080/path and mailto:a@b.c"
    assert mask_urls(text) == text


def test_values_are_masked_with_their_repr_and_json_spellings() -> None:
    tricky = 'it\'s a "secret"\nvalue'
    mask = TextMask([tricky, SECRET])
    masked = mask(f"password={SECRET!r} repr={tricky!r} json={json.dumps(tricky)}")
    assert masked == f"password='{REDACTED}' repr='{REDACTED}' json=\"{REDACTED}\"", masked


def test_values_shorter_than_four_characters_are_not_masked_in_text() -> None:
    # A 3-character value would garble every traceback it appears in (line numbers, words)
    mask = TextMask(["abc", "1234"])
    assert mask("abc line 1234") == f"abc line {REDACTED}"


# -- snapshots -------------------------------------------------------------------------------------


def test_snapshot_masks_url_credentials_in_any_argument() -> None:
    snap = Snapshotter()
    args = json.loads(snap.snapshot("a", {"callback": DSN, "nested": [{"url": DSN}], "n": 1}))
    assert args == {
        "callback": "postgresql://app:***@db.internal:5432/shop",
        "nested": [{"url": "postgresql://app:***@db.internal:5432/shop"}],
        "n": 1,
    }


def test_a_positional_tail_gets_the_same_rules() -> None:
    # Given an actor whose extra positionals carry a dict with a secret key and a URL
    def f(order_id: int, *rest: Any, password: str = "") -> None: ...

    snap = Snapshotter()
    bound = snap.bind(f, [7, {"token": SECRET}, DSN], {"password": SECRET})
    # Then the tail is redacted like named arguments, and keyword-only names are not filled by position
    assert json.loads(snap.snapshot("f", bound)) == {
        "order_id": 7,
        "*rest": [{"token": REDACTED}, "postgresql://app:***@db.internal:5432/shop"],
        "password": REDACTED,
    }
    # And their values are masked in text, the tail's included
    mask = snap.mask(bound)
    assert mask(f"token {SECRET} for {DSN_PASSWORD}") == f"token {REDACTED} for {REDACTED}"


def test_a_var_positional_with_a_secret_name_is_redacted_whole() -> None:
    def f(*tokens: str) -> None: ...

    snap = Snapshotter()
    assert json.loads(snap.snapshot("f", snap.bind(f, [SECRET, "other"], {}))) == {"*tokens": REDACTED}


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": [value]} if depth % 2 else [value]
    return value


@pytest.mark.parametrize("depth", [500, 900])
def test_a_deep_argument_degrades_to_a_placeholder(depth: int) -> None:
    snap = Snapshotter()
    text = snap.snapshot("f", {"tree": nested(depth), "order_id": 7})
    assert TOO_DEEP in text and json.loads(text)["order_id"] == 7
    assert snap.keys(("tree",), {"tree": nested(depth)})["tree"].count(TOO_DEEP) == 1


# -- a job's error, end to end on StubBroker -------------------------------------------------------


@pytest.fixture
def store() -> dr.MemoryStore:
    return dr.MemoryStore()


def failing_actor(broker: StubBroker) -> Any:
    @dramatiq.actor(max_retries=0, broker=broker)
    def connect(order_id: int, password: str, pin: str = "1") -> None:
        raise ConnectionError(f"login with {password!r} to {DSN} refused for order {order_id}")

    return connect


def test_a_failed_jobs_error_traceback_and_history_are_masked(
    stub_broker: StubBroker, store: dr.MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    # Given the bundle with a log notifier, and an actor that puts its password in its error
    seen: list[Alert] = []
    dr.install(stub_broker, store, notifiers=[dr.LogNotifier(), seen.append])
    connect = failing_actor(stub_broker)
    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        with caplog.at_level(logging.INFO):
            # When the job fails
            job_id = connect.send(4711, password=SECRET).message_id
            stub_broker.join(connect.queue_name, fail_fast=False)
            worker.join()
            dr.middleware.alerts.Alerts  # noqa: B018 (imported)
            for m in stub_broker.middleware:
                if isinstance(m, dr.Alerts):
                    assert m.outbox.drain(5)
    finally:
        worker.stop()

    # Then neither the value nor the URL's password is anywhere: record, dead letter, alert, logs
    record = store.get_job(job_id)
    assert record.status is dr.Status.FAILED and record.error is not None
    letter = store.get_dead_letter(job_id)
    assert letter is not None
    everything = [
        json.dumps(record.to_json()),
        render.job_detail(record),
        dead_render.detail(letter),
        dead_render.table([letter]),
        json.dumps(dead_render.shown_json(letter)),
        json.dumps([a.to_json() for a in seen]),
        caplog.text,
    ]
    for text in everything:
        assert SECRET not in text and DSN_PASSWORD not in text, text
    assert REDACTED in record.error.message and "postgresql://app:***@db.internal" in record.error.traceback
    assert "Failed to process message connect(4711, password=[redacted])" in caplog.text
    # And the stored message keeps the real arguments, for replay
    assert letter.message is not None and letter.message["kwargs"]["password"] == SECRET


def test_a_deeply_nested_argument_still_gets_a_record(
    stub_broker: StubBroker, store: dr.MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an actor sent an argument nested 900 levels deep
    dr.install(stub_broker, store)

    @dramatiq.actor(max_retries=0, broker=stub_broker)
    def walk(tree: Any, token: str) -> None:
        pass

    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        job_id = walk.send(nested(900), token=SECRET).message_id
        stub_broker.join(walk.queue_name, fail_fast=False)
        worker.join()
    finally:
        worker.stop()

    # Then the job has a record, done, whose snapshot holds a placeholder, and nothing was logged in bulk
    record = store.get_job(job_id)
    assert record is not None and record.status is dr.Status.DONE
    assert TOO_DEEP in json.dumps(record.args) and record.args["token"] == REDACTED
    assert len(caplog.records) < 20


def test_an_alert_masks_url_credentials_whatever_produced_it() -> None:
    # Given an alert built from an event whose text quotes a DSN (not from a job's captured error)
    alert = Alert(
        kind="stuck",
        actor="sync",
        error_message=f"blocked on {DSN}",
        detail=f"stuck in connect({DSN!r})",
        keys={"source": DSN},
    )
    # Then no text a notifier sends holds the password
    for text in (alert.text, json.dumps(alert.to_json())):
        assert DSN_PASSWORD not in text and "postgresql://app:***@db.internal" in text


def test_the_default_list_is_public_and_extendable() -> None:
    snap = Snapshotter((*dr.DEFAULT_REDACT, "ssn"))
    assert snap.secret("customer_ssn") and snap.secret("sentry_dsn") and not snap.secret("shipping_address")


def test_a_secret_at_the_cap_of_an_error_message_is_masked_before_the_cut(
    stub_broker: StubBroker, store: dr.MemoryStore
) -> None:
    # Given an error message whose secret straddles the 1,000-character cap
    dr.install(stub_broker, store, notifiers=[])

    @dramatiq.actor(max_retries=0, broker=stub_broker)
    def talk(password: str) -> None:
        raise ValueError("x" * 995 + password)

    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        job_id = talk.send(password=SECRET).message_id
        stub_broker.join(talk.queue_name, fail_fast=False)
        worker.join()
    finally:
        worker.stop()

    # Then not even the part of it before the cut was recorded
    record = store.get_job(job_id)
    assert record is not None and record.error is not None
    assert SECRET[:5] not in record.error.message and record.error.message.endswith("…")
