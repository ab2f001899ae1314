"""The bad-input matrix: each kind of bad input, fed to the API and to the CLI, gets a one-line
error, the right exit code, and changes nothing (the store's and the broker's state is compared
before and after). Secrets in arguments stay redacted wherever a job is shown.

The CLI runs through its real entry point (``main``, as the console script calls it); a few
cases also run the installed ``dramatiq-reliable`` script in a subprocess, for its exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

import dramatiq_reliable as dr
from dramatiq_reliable.actors.cron import registry_of
from dramatiq_reliable.brokers import broker_from_url
from dramatiq_reliable.cli import main
from tests.conftest import BROKER_DB, STORE_DB, delete_prefix

SECRET = "hunter2-s3cr3t"
#: The password of the job that died (its dead letter keeps the message whole, for replay).
DEAD_SECRET = "correct-horse-battery"
UNREACHABLE_REDIS = "redis://127.0.0.1:1"
UNREACHABLE_AMQP = "amqp://guest:guest@127.0.0.1:1/%2F"
#: The test Redis (the URLs above and below are built on it).
REDIS_SERVER = os.getenv("DR_TEST_REDIS", "redis://127.0.0.1:6379")


def one_line(text: str) -> str:
    """The single line of an error message (fails if there are more, or none)."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"not one line: {text!r}"
    return lines[0]


# -- state, before and after ------------------------------------------------------------------


def redis_state(client: redis.Redis, *prefixes: str) -> dict[bytes, bytes | None]:
    """Every key under ``prefixes`` with its serialized value (``DUMP``)."""
    keys = [k for p in prefixes for k in client.scan_iter(match=p + "*", count=1000)]
    return {k: client.dump(k) for k in sorted(keys)}


def memory_state(store: dr.MemoryStore) -> dict[str, Any]:
    """Every key of the MemoryStore's embedded server with its serialized value."""
    return redis_state(store.client, "")


def stub_state(broker: StubBroker) -> dict[str, Any]:
    queues = {name: sorted(q.queue) if hasattr(q, "queue") else None for name, q in broker.queues.items()}
    dead = {name: [m.message_id for m in msgs] for name, msgs in broker.dead_letters_by_queue.items()}
    return {"queues": queues, "dead": dead, "middleware": [type(m).__name__ for m in broker.middleware]}


# -- a store and a broker with something in them ----------------------------------------------


class Seeded:
    """A Redis store (under this test's prefix) and a Redis broker namespace, with jobs and dead letters."""

    def __init__(self, redis_server: str, ns: str, store: dr.RedisStore) -> None:
        self.store = store
        self.ns = ns
        self.namespace = f"dramatiq-{ns}"
        self.store_url = store.url
        self.broker_url = f"{redis_server}/{BROKER_DB}?namespace={self.namespace}"
        self.store_client = redis.Redis.from_url(f"{redis_server}/{STORE_DB}")
        self.broker_client = redis.Redis.from_url(f"{redis_server}/{BROKER_DB}")
        self.queue = f"{ns}_q"

    def state(self) -> tuple[dict[bytes, bytes | None], dict[bytes, bytes | None]]:
        return redis_state(self.store_client, self.ns + ":"), redis_state(self.broker_client, self.namespace + ":")

    def run(self, capsys: Any, *argv: str, broker: bool = True) -> tuple[int, str, str]:
        globals_ = ["--store", self.store_url] + (["--broker", self.broker_url] if broker else [])
        code = main([*globals_, *argv])
        out, err = capsys.readouterr()
        return code, out, err


@pytest.fixture
def seeded(redis_server: str, ns: str, redis_store: dr.RedisStore) -> Iterator[Seeded]:
    seeded = Seeded(redis_server, ns, redis_store)
    broker = broker_from_url(seeded.broker_url)
    dr.install(broker, redis_store, notifiers=[])

    @dramatiq.actor(broker=broker, queue_name=seeded.queue, max_retries=0, track=("order_id",))
    def invoice(order_id: int, password: str = "") -> None: ...

    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    try:
        # A job done, and a good and a malformed entry in the queue's dead-letter queue
        invoice.send(order_id=4711, password=SECRET)
        xq = f"{seeded.namespace}:{seeded.queue}.XQ"
        dead = invoice.message(order_id=4712, password=DEAD_SECRET)
        seeded.broker_client.zadd(xq, {"good-1": time.time() * 1000, "bad-1": time.time() * 1000})
        seeded.broker_client.hset(xq + ".msgs", mapping={"good-1": dead.encode(), "bad-1": b"{not json"})
        seeded.dead_id = dead.message_id
        worker.start()
        deadline = time.monotonic() + 30
        while redis_store.count_jobs(["done"]).get("done", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        worker.stop()
        dr.dead.sync(redis_store, broker)  # the store knows both dead letters
        redis_store.journal.flush()
        seeded.malformed_id = next(x.id for x in redis_store.dead_letters().items if x.malformed)
        yield seeded
    finally:
        worker.stop()
        broker.close()
        delete_prefix(seeded.broker_client, seeded.namespace + ":")


# -- the CLI ----------------------------------------------------------------------------------

#: (arguments, exit code, what the error line says). ``{dead}``/``{malformed}`` are filled in.
CLI_CASES = [
    # unknown ids
    (["jobs", "show", "nope"], 1, "no job 'nope'"),
    (["dead", "show", "nope"], 1, "no dead letter 'nope'"),
    # bad options
    (["jobs", "list", "--key", "order_id"], 2, "--key takes NAME=VALUE"),
    (["jobs", "list", "--key", "=4711"], 2, "--key takes NAME=VALUE"),
    (["jobs", "list", "--limit", "0"], 2, "Invalid value for '--limit'"),
    (["jobs", "list", "--limit", "many"], 2, "Invalid value for '--limit'"),
    (["jobs", "list", "--status", "lost"], 2, "Invalid value for '--status'"),
    (["jobs", "list", "--cursor", "garbage"], 2, "malformed cursor"),
    (["dead", "list", "--since", "2x"], 2, "--since"),
    (["dead", "list", "--since", "-5m"], 2, "--since"),
    (["dead", "list", "--since", "99999999d"], 2, "--since: '99999999d' reaches back before the year 1"),
    (["dead", "list", "--since", "inf"], 2, "--since: not a duration: 'inf'"),
    (["dead", "list", "--since", "nan"], 2, "--since: not a duration: 'nan'"),
    (["dead", "purge", "--all", "--older-than", "99999999d", "--yes"], 2, "--older-than"),
    (["dead", "purge", "--all", "--older-than", "yesterday", "--yes"], 2, "--older-than"),
    (["dead", "replay", "{dead}", "--all", "--yes"], 2, "not both"),
    (["dead", "replay", "--yes"], 2, "give the ids of dead letters, or --all"),
    (["dead", "purge", "{dead}", "--older-than", "7d", "--yes"], 2, "with --all"),
    (["queues", "--check"], 2, "--check needs --max-age and/or --max-depth"),
    (["queues", "--max-age", "soon"], 2, "--max-age"),
    (["jobs", "frobnicate"], 2, "No such command"),
    (["dead", "list", "--frobnicate"], 2, "No such option"),
]


@pytest.mark.parametrize(("argv", "code", "says"), CLI_CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_cli_input_is_one_line_and_changes_nothing(
    capsys: Any, seeded: Seeded, argv: list[str], code: int, says: str
) -> None:
    argv = [a.format(dead=seeded.dead_id, malformed=seeded.malformed_id) for a in argv]
    before = seeded.state()
    got, out, err = seeded.run(capsys, *argv)
    assert got == code, (out, err)
    line = one_line(err)
    assert line.startswith("error: ") and says in line, line
    assert out == ""
    assert seeded.state() == before


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["dead", "replay", "nope", "--yes"], "not found"),
        (["dead", "purge", "nope", "--yes"], "not found"),
        (["dead", "replay", "{malformed}", "--yes"], "malformed"),
    ],
)
def test_ids_that_cannot_be_acted_on_exit_1_and_change_nothing(
    capsys: Any, seeded: Seeded, argv: list[str], says: str
) -> None:
    argv = [a.format(malformed=seeded.malformed_id) for a in argv]
    before = seeded.state()
    code, out, err = seeded.run(capsys, *argv)
    assert code == 1, (out, err)
    # One line for the id (what happened to it and why), then the count
    assert out.splitlines()[0].startswith(says) and out.splitlines()[1:] == [f"1 {says}"] and err == ""
    assert seeded.state() == before


@pytest.mark.parametrize(
    ("globals_", "argv", "code", "says"),
    [
        (["--store", "foo://x"], ["jobs", "list"], 2, "unsupported store URL"),
        (["--store", "redis://127.0.0.1:notaport/1"], ["jobs", "list"], 2, "malformed Redis URL"),
        (["--store", f"{UNREACHABLE_REDIS}/1"], ["jobs", "show", "x"], 3, "unreachable"),
        (["--broker", "kafka://x"], ["dead", "list"], 2, "kafka"),
        (["--broker", "amqp://[::1"], ["dead", "list"], 2, "URL"),
        (["--broker", f"{UNREACHABLE_REDIS}/0"], ["dead", "list"], 3, "unreachable"),
        (["--broker", UNREACHABLE_AMQP], ["dead", "list"], 3, "unreachable"),
        (["--broker", UNREACHABLE_AMQP], ["dead", "replay", "--all", "--yes"], 3, "unreachable"),
        (["--broker", f"{UNREACHABLE_REDIS}/0"], ["queues"], 3, "unreachable"),
        # a store URL with an option nobody knows; a database the server does not have
        (["--store", f"{REDIS_SERVER}/1?colour=blue"], ["jobs", "list"], 2, "unknown option 'colour'"),
        (["--store", f"{REDIS_SERVER}/1?prefix=x&colour=blue"], ["dead", "list"], 2, "unknown option 'colour'"),
        (["--store", f"{REDIS_SERVER}/99"], ["jobs", "show", "x"], 3, "the server has no such database"),
        (["--store", f"{REDIS_SERVER}/99"], ["jobs", "list"], 3, "the server has no such database"),
        (["--broker", f"{REDIS_SERVER}/0?colour=blue"], ["dead", "list"], 2, "unknown option 'colour'"),
        (["--broker", f"{REDIS_SERVER}/99"], ["dead", "list"], 3, "DB index is out of range"),
        (["--broker", f"{REDIS_SERVER}/99"], ["queues"], 3, "DB index is out of range"),
        (["--broker", "amqp://guest:guest@127.0.0.1:5672/%2F?colour=blue"], ["dead", "list"], 2, "'colour'"),
        (["--store", "redis://[::1"], ["jobs", "list"], 2, "malformed store URL"),
    ],
)
def test_bad_or_unreachable_servers(
    capsys: Any, seeded: Seeded, globals_: list[str], argv: list[str], code: int, says: str
) -> None:
    # The other server of the pair is the seeded, reachable one
    if "--store" not in globals_:
        globals_ = ["--store", seeded.store_url, *globals_]
    before = seeded.state()
    got = main([*globals_, *argv])
    out, err = capsys.readouterr()
    assert got == code, (out, err)
    line = one_line(err.replace(_STORE_ONLY_NOTE, "").strip())
    assert line.startswith("error: ") and says in line, line
    assert out == ""
    assert seeded.state() == before


_STORE_ONLY_NOTE = "note: no --broker given: the store's copy only (dead letters it did not record are not shown)"


@pytest.mark.parametrize("argv", [["dead", "list"], ["dead", "stats"], ["dead", "list", "--json"]])
def test_an_unreachable_store_is_the_error_line_alone(capsys: Any, argv: list[str]) -> None:
    # No --broker: the store-only note is for a listing that worked, not before an error
    code = main(["--store", f"{UNREACHABLE_REDIS}/1", *argv])
    out, err = capsys.readouterr()
    assert code == 3 and out == ""
    assert one_line(err).startswith(f"error: store {UNREACHABLE_REDIS}/1 unreachable: ")


def test_amqp_at_a_redis_port_fails_promptly_in_one_line(capsys: Any, seeded: Seeded) -> None:
    # Given an amqp:// URL that names the Redis server's port (pika waited 15 s, then a traceback)
    url = REDIS_SERVER.replace("redis://", "amqp://guest:s3cret-pw@") + "/%2F"
    before = seeded.state()
    started = time.monotonic()
    code = main(["--store", seeded.store_url, "--broker", url, "dead", "list"])
    elapsed = time.monotonic() - started
    out, err = capsys.readouterr()
    # Then one line names the URL, its password hidden, and says why; exit 3
    assert code == 3 and out == "", err
    line = one_line(err)
    assert line.startswith("error: broker amqp://guest:***@") and "no AMQP handshake within 3s" in line, line
    assert "s3cret-pw" not in err
    assert elapsed < 10, elapsed  # the handshake is bounded (3 s), not pika's 15 s
    assert seeded.state() == before


#: Malformed or unreachable URLs with a password, and where it is: it is never shown.
SECRET_URLS = [
    (["--store", "redis://:s3cret-pw@127.0.0.1:notaport/1"], ["jobs", "list"], 2),
    (["--store", "redis://:s3c/ret-pw@127.0.0.1:6379/1"], ["jobs", "list"], 2),  # an unencoded '/'
    (["--store", "redis://:s3cret-pw@[::1/1"], ["jobs", "list"], 2),
    (["--store", "foo://user:s3cret-pw@host/1"], ["jobs", "list"], 2),
    (["--store", "redis://127.0.0.1:1/1?password=s3cret-pw"], ["jobs", "list"], 3),
    (["--store", "redis://:s3cret-pw@127.0.0.1:1/1"], ["jobs", "list"], 3),
    (["--store", "redis://127.0.0.1:6379/1?password=s3cret-pw&colour=blue"], ["jobs", "list"], 2),
    (["--store", "memory://", "--broker", "amqp://guest:s3cret-pw@127.0.0.1:1/%2F"], ["dead", "list"], 3),
    (["--store", "memory://", "--broker", "redis://:s3cret-pw@127.0.0.1:1/0"], ["dead", "list"], 3),
    (["--store", "memory://", "--broker", "amqp://guest:s3c/ret-pw@127.0.0.1:x/%2F"], ["dead", "list"], 2),
    (["--store", "memory://", "--broker", "kafka://u:s3cret-pw@host"], ["dead", "list"], 2),
    (["--store", "memory://", "--broker", "amqp://u:s3cret-pw@[::1"], ["dead", "list"], 2),
    (["--store", "memory://", "--broker", "redis://:s3cret-pw@127.0.0.1:6379/0?namespace="], ["dead", "list"], 2),
    (["--store", "memory://", "--broker", "amqp://u:s3cret-pw@127.0.0.1/%2F?heartbeat=x"], ["dead", "list"], 2),
]


@pytest.mark.parametrize(
    ("globals_", "argv", "code"), SECRET_URLS, ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_no_error_shows_a_password(capsys: Any, globals_: list[str], argv: list[str], code: int) -> None:
    got = main([*globals_, *argv])
    out, err = capsys.readouterr()
    assert got == code, err
    line = one_line(err.replace(_STORE_ONLY_NOTE, "").strip())
    assert line.startswith("error: ") and "***" in line, line
    for piece in ("s3cret", "ret-pw", "s3c/"):
        assert piece not in err + out, line


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@h/1", "redis://:***@h/1"),
        ("redis://user:secret@h:6379/1?prefix=x", "redis://user:***@h:6379/1?prefix=x"),
        ("redis://:sec/ret@h:x/1", "redis://:***@h:x/1"),
        ("amqp://guest:p@ss@h/%2F", "amqp://guest:***@h/%2F"),
        ("redis://:p#w@h/1", "redis://:***@h/1"),
        ("amqp://u:[x@h", "amqp://u:***@h"),
        ("redis://h/1?password=secret&db=2", "redis://h/1?password=***&db=2"),
        ("rediss://h/1?ssl_password=secret", "rediss://h/1?ssl_password=***"),
        ("amqp://u:a@h1/;amqp://u:b@h2/", "amqp://u:***@h1/;amqp://u:***@h2/"),
        ("redis://user@h/1", "redis://user@h/1"),
        ("redis://h:6379/1", "redis://h:6379/1"),
        ("memory://", "memory://"),
    ],
)
def test_hide_password(url: str, shown: str) -> None:
    from dramatiq_reliable._urls import hide_password

    assert hide_password(url) == shown


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--store", f"{UNREACHABLE_REDIS}/1", "jobs", "list"], 3),
        (["--store", "foo://x", "jobs", "list"], 2),
        (["--store", "memory://", "--broker", UNREACHABLE_AMQP, "dead", "list"], 3),
        (["jobs", "list", "--limit", "-1"], 2),
    ],
)
def test_the_installed_command_exits_with_the_code(argv: list[str], code: int) -> None:
    script = Path(sys.executable).with_name("dramatiq-reliable")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "dramatiq_reliable.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRAMATIQ_RELIABLE_")}
    env["DRAMATIQ_RELIABLE_STORE"] = f"{UNREACHABLE_REDIS}/1"
    result = subprocess.run([*command, *argv], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == code, result.stderr
    assert one_line(result.stderr).startswith("error: ") and result.stdout == ""


# -- secrets in arguments ---------------------------------------------------------------------


def test_secrets_stay_redacted_in_the_record_jobs_show_and_json(capsys: Any, seeded: Seeded) -> None:
    [record] = seeded.store.find_jobs(status="done").items
    assert record.args == {"order_id": 4711, "password": "[redacted]"}
    # Nowhere in the store (the job did not die, so no dead letter keeps its message)
    for key, value in redis_state(seeded.store_client, seeded.ns + ":").items():
        assert SECRET.encode() not in (value or b""), key
    for argv in (["jobs", "show", record.id], ["jobs", "show", record.id, "--json"], ["jobs", "list", "--json"]):
        code, out, err = seeded.run(capsys, *argv)
        assert code == 0 and err == "" and SECRET not in out and "[redacted]" in out


def test_a_dead_letter_shows_no_secret_but_keeps_them_for_replay(capsys: Any, seeded: Seeded) -> None:
    code, out, err = seeded.run(capsys, "dead", "show", seeded.dead_id)
    assert code == 0 and err == ""
    assert DEAD_SECRET not in out and "arguments      not recorded; in --json with secrets hidden" in out
    # --json gives the stored Dramatiq message with its secret arguments hidden
    for argv in (["dead", "show", seeded.dead_id, "--json"], ["dead", "list", "--json"]):
        code, out, err = seeded.run(capsys, *argv)
        assert code == 0 and DEAD_SECRET not in out and '"password": "[redacted]"' in out
    # And the store keeps the message whole: a replay needs it
    letter = seeded.store.get_dead_letter(seeded.dead_id)
    assert letter is not None and letter.message is not None
    assert letter.message["kwargs"]["password"] == DEAD_SECRET


def test_a_secret_argument_cannot_be_a_business_key(stub_broker: StubBroker) -> None:
    dr.install(stub_broker, dr.MemoryStore(), notifiers=[])
    before = set(stub_broker.actors)
    with pytest.raises(dr.ConfigurationError) as info:

        @dramatiq.actor(broker=stub_broker, track=("order_id", "api_token"))
        def charge(order_id: int, api_token: str) -> None: ...

    assert "track names 'api_token', whose values are redacted" in one_line(str(info.value))
    assert set(stub_broker.actors) == before


def test_secrets_in_a_big_argument_are_redacted_before_the_cap(stub_broker: StubBroker) -> None:
    store = dr.MemoryStore()
    dr.install(stub_broker, store, max_args_bytes=256)

    @dramatiq.actor(broker=stub_broker)
    def login(blob: str, token: str) -> None: ...

    message = login.send("x" * 1000, SECRET)
    store.journal.flush()
    record = store.get_job(message.message_id)
    assert record is not None and record.args["_truncated"] is True
    assert SECRET not in json.dumps(record.to_json()) and SECRET not in repr(memory_state(store))


# -- the API ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("foo://x", "unsupported store URL"),
        ("redis://127.0.0.1:notaport/1", "malformed Redis URL"),
        ("", "store URL"),
    ],
)
def test_bad_store_urls(url: str, says: str) -> None:
    with pytest.raises(dr.ConfigurationError) as info:
        dr.open_store(url)
    assert says in one_line(str(info.value))


@pytest.mark.parametrize(("url", "says"), [("kafka://x", "kafka"), ("amqp://[::1", "URL"), ("", "URL")])
def test_bad_broker_urls(url: str, says: str) -> None:
    with pytest.raises(dr.ConfigurationError) as info:
        broker_from_url(url)
    assert says in one_line(str(info.value))


def test_an_unreachable_store_is_one_line() -> None:
    store = dr.open_store(f"{UNREACHABLE_REDIS}/1")
    with pytest.raises(dr.StoreUnavailable) as info:
        store.get_job("x")
    assert "unreachable" in one_line(str(info.value))
    store.close()


@pytest.mark.parametrize(
    ("expression", "zone", "says"),
    [
        ("61 * * * *", "UTC", "bad cron expression '61 * * * *'"),
        ("* * *", "UTC", "bad cron expression '* * *'"),
        ("0 0 30 2 *", "UTC", "never fires"),
        ("0 2 * * * * *", "UTC", "bad cron expression"),
        ("@fortnightly", "UTC", "bad cron expression"),
        ("0 2 * * *", "Europe/Berln", "unknown timezone 'Europe/Berln'"),
    ],
)
def test_bad_cron_expressions(stub_broker: StubBroker, expression: str, zone: str, says: str) -> None:
    pytest.importorskip("apscheduler")

    @dramatiq.actor(broker=stub_broker)
    def nightly_report() -> None: ...

    before = list(registry_of(stub_broker))
    with pytest.raises(dr.ConfigurationError) as info:
        dr.cron(expression, timezone=zone)(nightly_report)
    assert says in one_line(str(info.value))
    assert list(registry_of(stub_broker)) == before


@pytest.mark.parametrize(
    ("args", "kwargs", "says"),
    [
        ((object(),), {}, "not JSON-serializable"),
        ((b"raw bytes",), {}, "not JSON-serializable"),
        (({1, 2},), {}, "not JSON-serializable"),
        ((1,), {"when": time.struct_time((2026, 1, 1, 0, 0, 0, 0, 1, 0))}, None),  # a tuple: JSON
    ],
)
def test_non_json_arguments_are_refused_at_enqueue(
    stub_broker: StubBroker, args: tuple[Any, ...], kwargs: dict[str, Any], says: str | None
) -> None:
    store = dr.MemoryStore()
    dr.install(stub_broker, store, notifiers=[])

    @dramatiq.actor(broker=stub_broker)
    def charge(obj: Any, when: Any = None) -> None: ...

    store.journal.flush()  # the declaration of the actor's queue
    before, broker_before = memory_state(store), stub_state(stub_broker)
    if says is None:
        charge.send(*args, **kwargs)  # a control: JSON arguments are accepted
        store.journal.flush()
        assert stub_broker.queues["default"].qsize() == 1
        return
    with pytest.raises(dr.ArgumentsError) as info:
        charge.send(*args, **kwargs)
    assert says in one_line(str(info.value))
    store.journal.flush()
    assert memory_state(store) == before and stub_state(stub_broker) == broker_before


def test_an_oversized_argument_is_recorded_capped(redis_store: dr.RedisStore, ns: str, redis_server: str) -> None:
    # Dramatiq accepts any size; the record keeps a capped preview, not the megabytes
    broker = StubBroker()
    dr.install(broker, redis_store, notifiers=[], max_args_bytes=1024)

    @dramatiq.actor(broker=broker)
    def upload(blob: str) -> None: ...

    message = upload.send("x" * 2_000_000)
    redis_store.journal.flush()
    record = redis_store.get_job(message.message_id)
    assert record is not None and record.args["_truncated"] is True and record.args["_bytes"] > 2_000_000
    client = redis.Redis.from_url(f"{redis_server}/{STORE_DB}")
    used = sum(client.memory_usage(k) or 0 for k in client.scan_iter(match=ns + ":*"))
    assert used < 16_384, used
    broker.close()


def test_bad_install_options_change_nothing(stub_broker: StubBroker) -> None:
    store = dr.MemoryStore()
    before = stub_state(stub_broker)
    for options, says in (
        ({"retention": -1}, "retention"),
        ({"lease": 0}, "lease"),
        ({"abandon_after": "soon"}, "abandon_after"),
        ({"window": 0}, "window"),
        ({"max_args_bytes": 1}, "max_args_bytes"),
        ({"retentoin": 60}, "retentoin"),
        ({"alert_on": ("faild",)}, "faild"),
        ({"on_store_error": "ignore"}, "on_store_error"),
    ):
        with pytest.raises(dr.ConfigurationError) as info:
            dr.install(stub_broker, store, **options)
        assert says in one_line(str(info.value)), options
        assert stub_state(stub_broker) == before, options


#: Every duration and size option of install(), and the owner that takes it.
DURATIONS = [
    "retention",
    "ttl",
    "lease",
    "heartbeat_interval",
    "abandon_after",
    "sweep_interval",
    "stuck_after",
    "consumer_timeout",
    "dead_letter_retention",
    "window",
]
SIZES = ["max_args_bytes", "history", "queue_size"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1, 0, True, False, "30"], ids=repr)
@pytest.mark.parametrize("option", DURATIONS + SIZES)
def test_install_refuses_meaningless_durations_and_sizes(stub_broker: StubBroker, option: str, value: Any) -> None:
    before = stub_state(stub_broker)
    with pytest.raises(dr.ConfigurationError) as info:
        dr.install(stub_broker, dr.MemoryStore(), **{option: value})
    line = one_line(str(info.value))
    assert option.removeprefix("dead_letter_") in line and repr(value) in line, line
    assert stub_state(stub_broker) == before


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"alert_on": "failed"}, "alert_on must be a tuple of alert kinds, e.g. alert_on=('failed',), not 'failed'"),
        ({"alert_on": True}, "alert_on must be a tuple"),
        ({"redact": "password"}, "redact must be a tuple of names, e.g. redact=('password',), not 'password'"),
        ({"redact": None}, "redact must be a tuple of names"),
        ({"redact": ("password", 7)}, "redact must hold names (non-empty strings), not 7"),
        ({"notify_recovered": "yes"}, "notify_recovered must be True or False"),
        ({"on_store_error": None}, "on_store_error must be 'retry' or 'run', not None"),
    ],
)
def test_install_refuses_malformed_lists(stub_broker: StubBroker, options: dict[str, Any], says: str) -> None:
    before = stub_state(stub_broker)
    with pytest.raises(dr.ConfigurationError) as info:
        dr.install(stub_broker, dr.MemoryStore(), **options)
    assert says in one_line(str(info.value))
    assert stub_state(stub_broker) == before


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"idempotency_key": "invoice:{order}"}, "order"),
        ({"idempotency_key": "invoice:{order_id"}, "malformed idempotency_key"),
        ({"track": ("customer",)}, "customer"),
        ({"stuck_after": -5}, "stuck_after"),
        ({"stuck_after": float("nan")}, "stuck_after must be a positive number of seconds, not nan"),
        ({"stuck_after": float("inf")}, "stuck_after must be a positive number of seconds, not inf"),
        ({"stuck_after": True}, "stuck_after must be a positive number of seconds, not True"),
        ({"idempotency_key": "k:{order_id}", "idempotency_ttl": True}, "idempotency_ttl must be a positive number"),
        ({"idempotency_key": "k:{order_id}", "idempotency_ttl": float("nan")}, "idempotency_ttl must be a positive"),
        ({"idempotency_key": "k:{order_id}", "idempotency_ttl": 0}, "idempotency_ttl must be a positive number"),
        ({"alert_on": "failed"}, "alert_on must be a tuple of alert kinds"),
        ({"alert_on": ("faild",)}, "faild"),
        ({"track": "order_id"}, "track must be a tuple of argument names, e.g. track=('order_id',)"),
        ({"track": (7,)}, "track must hold names"),
        ({"unique": "yes"}, "unique"),
        ({"unique": 1}, "unique must be True or False, not 1"),
    ],
)
def test_bad_actor_options_fail_at_declaration(stub_broker: StubBroker, options: dict[str, Any], says: str) -> None:
    store = dr.MemoryStore()
    dr.install(stub_broker, store, notifiers=[])
    before = set(stub_broker.actors)
    with pytest.raises(dr.ConfigurationError) as info:

        @dramatiq.actor(broker=stub_broker, **options)
        def invoice(order_id: int) -> None: ...

    assert says in one_line(str(info.value))
    assert set(stub_broker.actors) == before


def test_bad_reads_of_the_store(redis_store: dr.RedisStore) -> None:
    for store in (dr.MemoryStore(), redis_store):
        assert store.get_job("nope") is None and store.get_dead_letter("nope") is None
        for call, says in (
            (lambda s=store: s.find_jobs(status="lost"), "lost"),
            (lambda s=store: s.find_jobs(cursor="garbage"), "malformed cursor"),
            (lambda s=store: s.find_jobs(limit=0), "limit"),
            (lambda s=store: s.dead_letters(cursor="garbage"), "malformed cursor"),
            (lambda s=store: s.count_jobs(["lost"]), "lost"),
        ):
            with pytest.raises(dr.ConfigurationError) as info:
                call()
            assert says in one_line(str(info.value)), store


def test_malformed_stored_messages_in_a_memory_store(stub_broker: StubBroker) -> None:
    # Given a dead letter whose stored message cannot be decoded
    store = dr.MemoryStore()
    dr.install(stub_broker, store, notifiers=[])
    garbage = SimpleNamespace(message_id="?", _message=SimpleNamespace(encode=lambda: b"{nope"))
    stub_broker.dead_letters_by_queue["default"].append(garbage)
    dr.dead.sync(store, stub_broker)
    [letter] = store.dead_letters().items
    assert letter.malformed and letter.id.startswith("malformed:default:")
    store.journal.flush()
    before, broker_before = memory_state(store), stub_state(stub_broker)
    # When it is replayed, or replay is called with a bare id, or an unknown one is shown
    [result] = dr.replay(store, stub_broker, [letter.id])
    assert result.outcome == "malformed" and not result.ok
    assert "cannot be replayed" in one_line(result.detail)
    assert memory_state(store) == before and stub_state(stub_broker) == broker_before
    with pytest.raises(dr.ConfigurationError) as info:
        dr.replay(store, stub_broker, letter.id)  # type: ignore[arg-type]
    assert "ids" in one_line(str(info.value))
    with pytest.raises(dr.NotFound) as missing:
        dr.dead.show(store, stub_broker, "nope")
    assert "no dead letter 'nope'" in one_line(str(missing.value))
    # Then nothing changed
    assert memory_state(store) == before and stub_state(stub_broker) == broker_before
