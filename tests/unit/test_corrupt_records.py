"""Corrupt records: a key at a record's place that something else wrote (a status that is none,
attempts that are not a number, a time out of range, JSON nested 100,000 deep, bytes that are
not text). ``jobs show``/``dead show`` say the record is corrupt (exit 1, one line), listings
skip it with a visible mark and keep working, and nothing is changed.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker

import dramatiq_reliable as dr
from tests.unit.test_bad_input import Seeded, one_line, seeded  # noqa: F401  (the fixture)

NOW_MS = int(time.time() * 1000)
DEEP = "[" * 100_000 + "]" * 100_000


def _job(**fields: Any) -> str:
    record = {"actor": "invoice", "queue": "q", "status": "done", "att": 1, "enq": NOW_MS, "ev": [[NOW_MS, "done", ""]]}
    record.update(fields)
    return json.dumps(record)


def _dead(job_id: str, **fields: Any) -> str:
    message = {"queue_name": "q", "actor_name": "invoice", "args": [], "kwargs": {}, "options": {}}
    record = {"id": job_id, "actor": "invoice", "queue": "q", "dead": NOW_MS, "exp": NOW_MS + 86_400_000}
    record.update(att=1, msg=json.dumps({**message, "message_id": job_id}), src="mw")
    record.update(fields)
    return json.dumps(record)


#: id -> (stored bytes of a job record, what the error says)
CORRUPT_JOBS: dict[str, tuple[str | bytes, str]] = {
    "c-exploded": (_job(status="exploded"), "status 'exploded' is not a status"),
    "c-many": (_job(att="many"), "attempts 'many' is not a number"),
    "c-fin": (_job(fin=1e300), "finished time 1e+300 is out of range"),
    "c-deep": (DEEP, "nested too deep"),
    "c-garbage": (b"\xff\xfe\x00garbage\x80", "not UTF-8 text"),
    "c-list": ("[1, 2]", "not a JSON object"),
}
CORRUPT_DEAD: dict[str, tuple[str | bytes, str]] = {
    "d-many": (_dead("d-many", att="many"), "attempts 'many' is not a number"),
    "d-dead": (_dead("d-dead", dead=1e300), "dead-lettered time 1e+300 is out of range"),
    "d-deep": ('{"id":' * 100_000 + "1" + "}" * 100_000, "nested too deep"),
    "d-garbage": (b"\xff\xfe\x00garbage\x80", "not UTF-8 text"),
    "d-b64": (_dead("d-b64", enc="b64", msg="%%%"), "marked base64 and is not"),
}


@pytest.fixture
def corrupt(seeded: Seeded) -> Seeded:  # noqa: F811
    """The seeded store, with corrupt job records (in the done index) and corrupt dead letters."""
    client, prefix = seeded.store_client, seeded.ns + ":"
    now_ms = int(time.time() * 1000)  # not NOW_MS: the module may have been imported long before this test
    for i, (job_id, (raw, _)) in enumerate(CORRUPT_JOBS.items()):
        client.set(f"{prefix}job:{job_id}", raw)
        client.zadd(f"{prefix}jobs:s:done:invoice", {job_id: now_ms + 600_000 + i})  # newer than the good one
    for i, (job_id, (raw, _)) in enumerate(CORRUPT_DEAD.items()):
        client.set(f"{prefix}dead:{job_id}", raw)
        client.zadd(f"{prefix}deads:time", {job_id: NOW_MS + i})
        client.zadd(f"{prefix}deads:exp", {job_id: NOW_MS + 86_400_000})
    return seeded


@pytest.mark.parametrize(("job_id", "says"), [(k, v[1]) for k, v in CORRUPT_JOBS.items()])
def test_jobs_show_says_the_record_is_corrupt(capsys: Any, corrupt: Seeded, job_id: str, says: str) -> None:
    before = corrupt.state()
    for json_flag in ([], ["--json"]):
        code, out, err = corrupt.run(capsys, "jobs", "show", job_id, *json_flag)
        assert code == 1 and out == "", (out, err)
        line = one_line(err)
        assert line == f"error: the record of job {job_id!r} is corrupt: {says}" or (
            line.startswith(f"error: the record of job {job_id!r} is corrupt:") and says in line
        ), line
        assert "never recorded" not in line
    assert corrupt.state() == before


def test_jobs_list_skips_corrupt_records_with_a_mark_and_keeps_working(capsys: Any, corrupt: Seeded) -> None:
    before = corrupt.state()
    for argv in (["jobs", "list"], ["jobs", "list", "--status", "done"], ["jobs", "list", "--limit", "1"]):
        code, out, err = corrupt.run(capsys, *argv)
        assert code == 0, err
        # the readable job is listed, the corrupt ones are not rows
        assert "invoice" in out and not any(job_id in out.split() for job_id in CORRUPT_JOBS)
        line = one_line(err)
        assert line.startswith(f"warning: skipped {len(CORRUPT_JOBS)} corrupt records (jobs show ID says why): ")
        # The newest five by name, then how many more
        assert sum(job_id in line for job_id in CORRUPT_JOBS) == 5 and line.endswith(", … (1 more)"), line
    # --json: stdout stays one valid JSON array of the readable records
    code, out, err = corrupt.run(capsys, "jobs", "list", "--json")
    assert code == 0 and [r["status"] for r in json.loads(out)] == ["done"]
    assert one_line(err).startswith("warning: skipped 6 corrupt records")
    assert corrupt.state() == before


@pytest.mark.parametrize(("job_id", "says"), [(k, v[1]) for k, v in CORRUPT_DEAD.items()])
def test_dead_show_says_the_dead_letter_is_corrupt(capsys: Any, corrupt: Seeded, job_id: str, says: str) -> None:
    before = corrupt.state()
    code, out, err = corrupt.run(capsys, "dead", "show", job_id, broker=False)
    assert code == 1 and out == "", (out, err)
    line = one_line(err)
    assert line.startswith(f"error: the dead letter {job_id!r} is corrupt: ") and says in line, line
    assert corrupt.state() == before


def test_dead_list_skips_corrupt_dead_letters_with_a_mark(capsys: Any, corrupt: Seeded) -> None:
    before = corrupt.state()
    for json_flag in ([], ["--json"]):
        code, out, err = corrupt.run(capsys, "dead", "list", *json_flag)
        assert code == 0, err
        assert corrupt.dead_id in out and "d-many" not in out
        [warning] = [line for line in err.splitlines() if line.startswith("warning:")]
        assert warning.startswith(f"warning: skipped {len(CORRUPT_DEAD)} corrupt records (dead show ID says why): ")
        if json_flag:
            assert {x["id"] for x in json.loads(out)} == {corrupt.dead_id, corrupt.malformed_id}
    assert corrupt.state() == before


def test_a_dead_letter_whose_job_record_is_corrupt_still_shows(capsys: Any, corrupt: Seeded) -> None:
    # The dead letter alone says what died and why, and can be replayed
    corrupt.store_client.set(f"{corrupt.ns}:job:{corrupt.dead_id}", _job(att="many"))
    code, out, err = corrupt.run(capsys, "dead", "show", corrupt.dead_id, "--json")
    assert code == 0, err
    assert json.loads(out)["message"]["message_id"] == corrupt.dead_id


def test_the_api_on_a_memory_store(stub_broker: StubBroker) -> None:
    # Given a MemoryStore with a good record and records whose fields are corrupt
    store = dr.MemoryStore()
    dr.install(stub_broker, store, notifiers=[])
    good = json.loads(_job())
    store.client.set(store.k("job", "good"), json.dumps(good))
    store.client.zadd(store.k("jobs", "s", "done", "invoice"), {"good": NOW_MS})
    store.client.sadd(store.k("jobs", "actors"), "invoice")
    for i, (job_id, fields) in enumerate({"m-status": {"status": "exploded"}, "m-att": {"att": "many"}}.items()):
        store.client.set(store.k("job", job_id), json.dumps({**good, **fields}))
        store.client.zadd(store.k("jobs", "s", "done", "invoice"), {job_id: NOW_MS + 1 + i})
    # When they are read, Then the corrupt ones are named, and the good one is listed
    with pytest.raises(dr.CorruptRecord) as info:
        store.get_job("m-att")
    assert one_line(str(info.value)) == "the record of job 'm-att' is corrupt: attempts 'many' is not a number"
    assert info.value.job_id == "m-att"
    page = store.find_jobs(status="done")
    assert [r.id for r in page] == ["good"] and page.corrupt == ("m-att", "m-status")
