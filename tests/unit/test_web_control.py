"""Cancel, retry now, pause and resume on the support page: the same form, token and refusals as replay."""

from __future__ import annotations

import pytest

import dramatiq_reliable as dr
from dramatiq_reliable.middleware._control import controls_for
from tests.unit import test_web
from tests.unit.test_web import TOKEN, client, form_of, status

pytest.importorskip("starlette", reason="the web extra is not installed")

shop = test_web.shop  # the fixture: two invoices on a StubBroker + MemoryStore


@pytest.fixture
def queued(shop) -> str:
    # A job sent while its actor is paused: it waits
    dr.pause(shop.store, actor="invoice")
    controls_for(shop.store).refresh()  # rather than wait for the next heartbeat
    return shop.invoice.send(order_id=4800, customer="Cy").message_id


def test_cancel_from_the_job_page(shop, queued) -> None:
    http = client(shop, token=TOKEN)
    assert f"/act/cancel?id={queued}" in http.get(f"/jobs/{queued}").text
    assert "/act/cancel" not in http.get(f"/jobs/{shop.ok}").text  # done: nothing to cancel
    confirm = http.get("/act/cancel", params={"id": queued})
    assert confirm.status_code == 200 and "Cancel 1 job?" in confirm.text
    # A wrong token changes nothing
    refused = http.post("/act/cancel", data={**form_of(confirm.text), "token": TOKEN + "x"})
    assert refused.status_code == 403 and status(shop.store, queued) == "queued"
    done = http.post("/act/cancel", data={**form_of(confirm.text), "token": TOKEN})
    assert done.status_code == 200 and "1 of 1 done" in done.text
    record = shop.store.get_job(queued)
    assert record.status is dr.Status.CANCELLED
    assert record.events[-1].detail.startswith("cancelled by the support page (")
    # Cancelling it again is one row that says nothing changed
    again = http.post(
        "/act/cancel", data={**form_of(http.get("/act/cancel", params={"id": queued}).text), "token": TOKEN}
    )
    assert "0 of 1 done" in again.text and "nothing changed" in again.text


def test_pause_and_resume_from_the_workers_page(shop) -> None:
    http = client(shop, token=TOKEN)
    page = http.get("/workers").text
    assert "Nothing is paused." in page and 'action="/act/pause"' in page
    assert http.get("/act/pause", params={"id": "nonsense"}).status_code == 400
    confirm = http.get("/act/pause", params={"id": "queue:default"})
    done = http.post("/act/pause", data={**form_of(confirm.text), "token": TOKEN})
    assert done.status_code == 200 and "paused" in done.text
    assert [(p.kind, p.name) for p in dr.paused(shop.store)] == [("queue", "default")]
    page = http.get("/workers").text
    assert "queue default" in page and "/act/resume?id=queue%3Adefault" in page
    confirm = http.get("/act/resume", params={"id": "queue:default"})
    done = http.post("/act/resume", data={**form_of(confirm.text), "token": TOKEN})
    assert done.status_code == 200 and dr.paused(shop.store) == []


def test_read_only_page_offers_no_control(shop, queued) -> None:
    http = client(shop)
    assert "/act/cancel" not in http.get(f"/jobs/{queued}").text
    assert http.get("/act/cancel", params={"id": queued}).status_code == 403


def test_the_queues_page_shows_a_paused_queue_and_since_when(shop) -> None:
    http = client(shop)
    assert 's-stuck">paused' not in http.get("/queues").text
    dr.pause(shop.store, queue="default")
    page = http.get("/queues").text
    assert 'class="status s-stuck">paused</span> <small>since ' in page
