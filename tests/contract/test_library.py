"""Loading the store's library: once, again after the server lost it, beside other versions."""

from __future__ import annotations

import logging

import pytest

import dramatiq_reliable as dr
from dramatiq_reliable.errors import StoreError
from dramatiq_reliable.store import _library


def enqueue(store: dr.Store, job_id: str) -> None:
    [result] = store.apply({"ops": [{"k": "enqueue", "id": job_id, "job": {"actor": "a", "queue": "q"}}]})
    assert "error" not in result


def test_a_library_lost_by_the_server_is_loaded_again_once() -> None:
    # Given a store whose library was loaded, then lost (a restart, a FLUSHALL)
    store = dr.MemoryStore()
    enqueue(store, "j1")
    store.client.function_delete(_library.NAME)
    # When it is called again, on either path
    enqueue(store, "j2")
    store.client.function_delete(_library.NAME)
    store.apply_serial({"ops": [{"k": "enqueue", "id": "j3", "job": {"actor": "a", "queue": "q"}}]})
    # Then the library was loaded again and the calls applied
    assert [store.get_job(i) is not None for i in ("j1", "j2", "j3")] == [True, True, True]


@pytest.mark.parametrize(
    ("other", "level", "text"),
    [
        (f"{_library.FAMILY}{_library.VERSION - 1}", logging.INFO, "an older dramatiq-reliable's"),
        (f"{_library.FAMILY}{_library.VERSION + 1}", logging.WARNING, "upgrade it to the fleet's release"),
    ],
    ids=["older", "newer"],
)
def test_another_version_is_left_alone_and_said_once(
    caplog: pytest.LogCaptureFixture, other: str, level: int, text: str
) -> None:
    # Given a server where another version of the library is loaded (a rolling upgrade)
    store = dr.MemoryStore()
    store.client.function_load(f"#!lua name={other}\nredis.register_function('{other}_apply', function() return 1 end)")
    # When this version's store is used
    with caplog.at_level(logging.INFO, logger="dramatiq_reliable.store"):
        enqueue(store, "j1")
        store._loaded_pid = 0
        enqueue(store, "j2")
    # Then both libraries are loaded, this process calls its own, and it said so once: an older
    # one (what an upgrade leaves behind) as information, a newer one as a warning
    names = {lib[b"library_name"] if isinstance(lib, dict) else lib[1] for lib in store.client.function_list()}
    assert {n.decode() if isinstance(n, bytes) else n for n in names} == {other, _library.NAME}
    said = [r for r in caplog.records if other in r.getMessage()]
    assert len(said) == 1 and "this process calls its own" in said[0].getMessage(), said
    assert said[0].levelno == level and text in said[0].getMessage()


def test_another_build_of_this_version_is_replaced(caplog: pytest.LogCaptureFixture) -> None:
    store = dr.MemoryStore()
    stale = _library.code().replace(f"'{_library.digest()}'", "'000000000000'", 1)
    store.client.function_load(stale)
    with caplog.at_level(logging.WARNING, logger="dramatiq_reliable.store"):
        enqueue(store, "j1")
    assert store.client.fcall(_library.SOURCE, 0) in (_library.digest(), _library.digest().encode())
    assert any("another build" in r.getMessage() for r in caplog.records)


def test_a_server_without_functions_is_refused_in_one_line() -> None:
    loader = _library.Loader("redis://old:6379/1")

    class Old:
        def info(self, section: str) -> dict[str, str]:
            return {"redis_version": "6.2.14"}

    with pytest.raises(StoreError) as caught:
        loader.check_version(Old())
    assert str(caught.value) == (
        "store redis://old:6379/1 runs Redis 6.2.14; dramatiq-reliable needs Redis >= 7.0 or Valkey >= 7.2 "
        "(Redis Functions)"
    )
