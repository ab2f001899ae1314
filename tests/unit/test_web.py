"""The support page on StubBroker + MemoryStore through Starlette's TestClient: pages, escaping, refusals.

The same page in a real browser on real brokers is in tests/integration/test_web.py.
"""

from __future__ import annotations

import html
import json
import re
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

import dramatiq_reliable as dr
from dramatiq_reliable.cli import main
from dramatiq_reliable.store import _paging

pytest.importorskip("starlette", reason="the web extra is not installed")
from starlette.testclient import TestClient

from dramatiq_reliable.web import Guard, actions, create_app
from dramatiq_reliable.web.auth import Auth, parse_networks
from dramatiq_reliable.web.security import FORM_MAX_AGE, Lockout

TOKEN = "correct horse battery staple"
MARKUP = "<b>declined</b><script>alert(1)</script>"


class CardDeclined(Exception):
    pass


@pytest.fixture
def shop(stub_broker: StubBroker, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """Two invoices run on a StubBroker: order 4711 done, order 4712 dead-lettered with markup in its error."""
    monkeypatch.setattr(actions, "WRONG_TOKEN_DELAY", 0)
    store = dr.MemoryStore()
    dr.install(stub_broker, store)
    broken = {"4712"}

    @dramatiq.actor(broker=stub_broker, throws=(CardDeclined,), track=("order_id",))
    def invoice(order_id: int, customer: str, card: str = "") -> None:
        if str(order_id) in broken:
            raise CardDeclined(MARKUP)

    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=2)
    worker.start()
    ok = invoice.send(order_id=4711, customer="<img src=x onerror=alert(2)>", card="4111 1111 1111 1111")
    bad = invoice.send(order_id=4712, customer="Ann", card="4111")
    settle(stub_broker, store, worker)
    yield SimpleNamespace(
        broker=stub_broker,
        store=store,
        worker=worker,
        invoice=invoice,
        ok=ok.message_id,
        bad=bad.message_id,
        broken=broken,
    )
    worker.stop()


def settle(broker: StubBroker, store: dr.Store, worker: dramatiq.Worker) -> None:
    for queue in list(broker.queues):
        if not queue.endswith(".DQ"):
            broker.join(queue)
    worker.join()
    store.journal.flush()


def client(shop: SimpleNamespace, **options: Any) -> TestClient:
    return TestClient(create_app(shop.store, shop.broker, **options), follow_redirects=False)


def form_of(html: str) -> dict[str, Any]:
    """The hidden fields of the confirmation form."""
    fields: dict[str, Any] = {"id": re.findall(r'name="id" value="([^"]*)"', html)}
    fields["csrf"] = re.search(r'name="csrf" value="([^"]*)"', html).group(1)  # type: ignore[union-attr]
    return fields


# -- reading ---------------------------------------------------------------------------------


def test_search_by_business_key_finds_the_job(shop) -> None:
    page = client(shop).get("/", params={"q": "order_id=4712"})
    assert page.status_code == 200
    assert shop.bad in page.text and shop.ok not in page.text
    assert '<span class="status s-failed">failed</span>' in page.text


def test_search_by_id_goes_to_the_job_page(shop) -> None:
    page = client(shop).get("/", params={"q": shop.ok})
    assert page.status_code == 303 and page.headers["location"] == f"/jobs/{shop.ok}"


def test_a_plain_value_is_looked_up_as_the_search_keys(shop) -> None:
    # Given a page that knows order ids are what people type
    with_keys = client(shop, search_keys=["order_id"]).get("/", params={"q": "4711"})
    without = client(shop).get("/", params={"q": "4711"})
    # Then the plain number finds the job only there, and the other page says how to search a key
    assert shop.ok in with_keys.text
    assert shop.ok not in without.text and "order_id=4711" in without.text


@pytest.mark.parametrize("most", [20_000, 0], ids=["indexes intersected", "actor index walked"])
def test_search_by_actor_and_status(shop, monkeypatch, most) -> None:
    monkeypatch.setattr(_paging, "INTERSECT_MAX", most)
    http = client(shop)
    page = http.get("/", params={"actor": "invoice", "status": "done"})
    assert shop.ok in page.text and shop.bad not in page.text
    page = http.get("/", params={"actor": "someone_else", "status": "failed"})
    assert shop.bad not in page.text and "No jobs match." in page.text


def test_bad_search_input_is_a_400_with_one_line(shop) -> None:
    http = client(shop)
    for params, words in [
        ({"status": "lost"}, "unknown status 'lost'"),
        ({"status": "done", "cursor": "garbage"}, "cursor"),
        ({"q": "=4711"}, "name=value"),
    ]:
        page = http.get("/", params=params)
        assert page.status_code == 400, params
        assert words in html.unescape(page.text)


def test_job_page_shows_why_it_failed_escaped(shop) -> None:
    page = client(shop).get(f"/jobs/{shop.bad}")
    assert page.status_code == 200
    text = page.text
    assert "CardDeclined" in text and "Why it failed" in text
    # Markup from the error is text, never markup
    assert "<script>alert(1)</script>" not in text and "<b>declined</b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert f'href="/dead/{shop.bad}"' in text  # its dead letter


def test_arguments_are_escaped_and_redacted(shop) -> None:
    text = client(shop).get(f"/jobs/{shop.ok}").text
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(2)&gt;" in text
    assert "4111 1111" not in text and "[redacted]" in text


def test_every_page_runs_only_its_own_script(shop) -> None:
    http = client(shop)
    for path in ["/", f"/jobs/{shop.bad}", "/dead", f"/dead/{shop.bad}", "/queues", "/activity", "/nowhere"]:
        response = http.get(path)
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self';" in csp and "unsafe" not in csp, path
        # no inline script: the only script element is the page's own file, empty
        scripts = re.findall(r"<script[^>]*>(.*?)</script>", response.text.replace("&lt;script", ""), re.S)
        assert scripts in ([], [""]), path
        assert set(re.findall(r"<script([^>]*)>", response.text)) <= {' src="/static/live.js"'}, path
    script = http.get("/static/live.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    for unsafe in ("eval(", "Function(", "innerHTML", "document.write", 'setTimeout("', "http://", "https://"):
        assert unsafe not in script.text, unsafe
    assert http.get("/static/other.js").status_code == 404


def test_dead_letters_page_lists_and_counts(shop) -> None:
    page = client(shop).get("/dead")
    assert page.status_code == 200
    assert shop.bad in page.text and "CardDeclined" in page.text
    assert "1 dead letter held" in page.text
    assert "&lt;script&gt;" in page.text and "<script>" not in page.text
    assert shop.bad not in client(shop).get("/dead", params={"actor": "someone_else"}).text


def test_dead_letter_page_hides_raw_arguments(shop) -> None:
    text = client(shop).get(f"/dead/{shop.bad}").text
    assert "The message a replay enqueues" in text
    assert '"4111"' not in text  # the card only as the redacted snapshot


def test_not_found_pages_are_404(shop) -> None:
    http = client(shop)
    assert http.get("/jobs/no-such-job").status_code == 404
    assert http.get("/dead/no-such-job").status_code == 404
    assert http.get(f"/dead/{shop.ok}").status_code == 404  # done, not dead
    assert http.get("/cron").status_code == 404  # no schedules given
    assert http.get("/nowhere").status_code == 404
    assert client(shop, token=TOKEN).get("/act/explode", params={"id": shop.bad}).status_code == 404


def test_queues_page(shop) -> None:
    page = client(shop).get("/queues")
    assert page.status_code == 200 and "default" in page.text


def test_cron_page_lists_the_schedules(stub_broker, shop) -> None:
    @dr.cron("0 2 * * *", timezone="UTC")
    @dramatiq.actor(broker=stub_broker)
    def nightly_report() -> None: ...

    page = client(shop, schedules=list(dr.registry_of(stub_broker))).get("/cron")
    assert page.status_code == 200 and "nightly_report" in page.text and "0 2 * * *" in page.text
    assert 'href="/cron"' in page.text


def test_unreachable_store_is_a_503() -> None:
    page = TestClient(create_app(dr.RedisStore("redis://127.0.0.1:1/0", socket_connect_timeout=0.2))).get("/")
    assert page.status_code == 503 and "cannot be reached" in page.text


def test_other_host_headers_are_refused(shop) -> None:
    assert client(shop, allowed_hosts=["127.0.0.1"]).get("/").status_code == 400
    assert client(shop, allowed_hosts=["testserver"]).get("/").status_code == 200


# -- acting ----------------------------------------------------------------------------------


def test_read_only_page_offers_no_action_and_refuses_one(shop) -> None:
    http = client(shop)
    assert "/act/replay" not in http.get(f"/jobs/{shop.bad}").text
    assert http.get("/act/replay", params={"id": shop.bad}).status_code == 403
    # A form signed by another page does not help either
    csrf = Guard(TOKEN).sign("replay", [shop.bad])
    refused = http.post("/act/replay", data={"id": shop.bad, "csrf": csrf, "token": TOKEN})
    assert refused.status_code == 403 and "Nothing was changed" in refused.text
    assert shop.store.get_dead_letter(shop.bad) is not None


def test_replay_with_the_token_brings_the_job_back(shop) -> None:
    # Given the page with actions on, and the order fixed
    http = client(shop, token=TOKEN)
    assert f"/act/replay?id={shop.bad}" in http.get(f"/jobs/{shop.bad}").text
    confirm = http.get("/act/replay", params={"id": shop.bad})
    assert confirm.status_code == 200 and "Replay 1 dead letter?" in confirm.text
    shop.broken.clear()
    # When the confirmation form is posted with the token
    done = http.post("/act/replay", data={**form_of(confirm.text), "token": TOKEN})
    # Then it is replayed with its id, and runs to the end
    assert done.status_code == 200 and "replayed" in done.text
    settle(shop.broker, shop.store, shop.worker)
    record = shop.store.get_job(shop.bad)
    assert record is not None and record.status is dr.Status.DONE
    assert shop.store.get_dead_letter(shop.bad) is None
    # and the history says the page did it, from which client
    assert any(e.detail.startswith("replayed from the dead-letter queue by the support page (") for e in record.events)


def test_replay_several_from_the_dead_letters_page(shop) -> None:
    # Given a second dead letter
    shop.broken.add("4713")
    other = shop.invoice.send(order_id=4713, customer="Bo").message_id
    settle(shop.broker, shop.store, shop.worker)
    http = client(shop, token=TOKEN)
    listing = http.get("/dead").text
    assert f'name="id" value="{shop.bad}"' in listing and f'name="id" value="{other}"' in listing
    # When both are ticked, confirmed and replayed with the token
    confirm = http.get("/act/replay", params={"id": [shop.bad, other]})
    assert "Replay 2 dead letters?" in confirm.text
    shop.broken.clear()
    done = http.post("/act/replay", data={**form_of(confirm.text), "token": TOKEN})
    # Then both run again to the end
    assert done.status_code == 200 and "2 of 2 done" in done.text
    settle(shop.broker, shop.store, shop.worker)
    assert {status(shop.store, i) for i in (shop.bad, other)} == {"done"}


def status(store: dr.Store, job_id: str) -> str | None:
    record = store.get_job(job_id)
    return record.status.value if record is not None else None


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"token": ""}, id="no token"),
        pytest.param({"token": TOKEN + "x"}, id="wrong token"),
        pytest.param({"csrf": ""}, id="no form signature"),
        pytest.param({"csrf": "1.deadbeef"}, id="forged form signature"),
        pytest.param({"id": ["other"]}, id="form of other ids"),
    ],
)
def test_a_refused_action_changes_nothing(shop, change) -> None:
    http = client(shop, token=TOKEN)
    fields = {**form_of(http.get("/act/replay", params={"id": shop.bad}).text), "token": TOKEN, **change}
    refused = http.post("/act/replay", data=fields)
    assert refused.status_code == 403 and "Nothing was changed" in refused.text
    assert shop.store.get_dead_letter(shop.bad) is not None
    record = shop.store.get_job(shop.bad)
    assert record is not None and record.status is dr.Status.FAILED


def test_a_form_posted_from_another_site_is_refused(shop) -> None:
    http = client(shop, token=TOKEN)
    fields = {**form_of(http.get("/act/purge", params={"id": shop.bad}).text), "token": TOKEN}
    refused = http.post("/act/purge", data=fields, headers={"origin": "https://evil.example"})
    assert refused.status_code == 403 and shop.store.get_dead_letter(shop.bad) is not None
    # A purge form does not replay: a signature is for one action on its ids
    assert http.post("/act/replay", data=fields).status_code == 403
    assert http.post("/act/purge", content=b"id=x", headers={"content-type": "text/plain"}).status_code == 415


def test_purge_with_the_token(shop) -> None:
    http = client(shop, token=TOKEN)
    fields = {**form_of(http.get("/act/purge", params={"id": shop.bad}).text), "token": TOKEN}
    done = http.post("/act/purge", data=fields)
    assert done.status_code == 200 and "purged" in done.text
    assert shop.store.get_dead_letter(shop.bad) is None


def test_guard_forms_expire_and_tokens_are_long() -> None:
    now = [1_000_000.0]
    guard = Guard(TOKEN, clock=lambda: now[0])
    form = guard.sign("purge", ["a", "b"])
    assert guard.refuse("purge", ["a", "b"], form, TOKEN) is None
    assert guard.refuse("replay", ["a", "b"], form, TOKEN) is not None
    assert guard.refuse("purge", ["b", "a"], form, TOKEN) is not None
    now[0] += FORM_MAX_AGE + 1
    assert "expired" in (guard.refuse("purge", ["a", "b"], form, TOKEN) or "")
    assert Guard(None).refuse("purge", ["a"], form, TOKEN) is not None
    with pytest.raises(ValueError, match="12 characters"):
        Guard("short")
    with pytest.raises(ValueError, match="broker"):
        create_app(dr.MemoryStore(), None, token=TOKEN)


# -- the command -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["web", "--allow-actions"], "--allow-actions needs --token"),
        (["web", "--allow-actions", "--token", TOKEN], "needs --broker"),
        (["--broker", "redis://127.0.0.1:1/0", "web", "--allow-actions", "--token", "short"], "12 characters"),
        (
            ["--broker", "redis://127.0.0.1:1/0", "web", "--host", "0.0.0.0", "--allow-actions", "--token", TOKEN],
            "--allow-remote-actions",
        ),
        (["web", "--port", "0"], "--port"),
        (["web", "--auth-header", "X-Forwarded-User"], "--auth-header needs --trusted-proxy"),
        (["web", "--trusted-proxy", "10.0.0.1"], "only used with --auth-header"),
        (["web", "--auth-header", "X-User", "--trusted-proxy", "proxy.example"], "not an IP address"),
        (["web", "--basic-auth", "ann"], "USER:PASSWORD"),
        (["web", "--basic-auth", "ann:pw", "--auth-header", "X-User"], "not both"),
        (["web", "--secret-file", "/nonexistent/secret"], "cannot be read"),
        (["web", "--refresh", "-1"], "--refresh"),
    ],
)
def test_web_command_bad_usage(capsys, argv, message) -> None:
    code = main(["--store", "memory://", *argv])
    _out, err = capsys.readouterr()
    assert code == 2 and message in err and len(err.strip().splitlines()) <= 2


def test_web_command_refuses_a_short_secret(tmp_path, capsys) -> None:
    (tmp_path / "secret").write_text("too short\n")
    code = main(["--store", "memory://", "web", "--secret-file", str(tmp_path / "secret")])
    err = capsys.readouterr().err
    assert code == 2 and "holds 9 bytes, at least 32" in err and len(err.strip().splitlines()) == 1


def test_web_command_without_the_extra(capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    code = main(["--store", "memory://", "web"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'dramatiq-reliable[web]'" in err and len(err.strip().splitlines()) == 1


def test_web_command_with_an_unreachable_store(capsys) -> None:
    assert main(["--store", "redis://127.0.0.1:1/0", "web"]) == 3


def test_web_command_serves_the_page_it_was_asked_for(tmp_path, monkeypatch, capsys) -> None:
    # Given an app module with a cron schedule on a queue of its own
    (tmp_path / "web_cron_app.py").write_text(
        "import dramatiq\n"
        "from dramatiq.brokers.stub import StubBroker\n"
        "import dramatiq_reliable as dr\n"
        "broker = StubBroker()\n"
        "dramatiq.set_broker(broker)\n"
        "@dr.cron('0 2 * * *', timezone='UTC')\n"
        "@dramatiq.actor(broker=broker, queue_name='reports')\n"
        "def nightly_report(): ...\n"
    )
    import uvicorn

    served: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.update(app=app, **options))
    # When the command starts the page for it
    argv = ["--store", "memory://", "web", "--port", "8123", "--app", "web_cron_app", "-P", str(tmp_path)]
    assert main(argv) == 0
    # Then the page is served on loopback, read-only, with the app's schedules and queues
    assert (served["host"], served["port"]) == ("127.0.0.1", 8123)
    assert "http://127.0.0.1:8123/ (read-only; anyone who reaches it reads it)" in capsys.readouterr().err
    http = TestClient(served["app"], base_url="http://127.0.0.1:8123")
    assert "nightly_report" in http.get("/cron").text
    assert "reports" in http.get("/queues").text
    assert http.get("/act/replay", params={"id": "x"}).status_code == 403
    # and a Host header of another name is refused (DNS rebinding)
    assert TestClient(served["app"], base_url="http://evil.example").get("/").status_code == 400


# -- live pages ------------------------------------------------------------------------------


def test_live_pages_refresh_themselves_and_say_when(shop) -> None:
    http = client(shop, token=TOKEN)
    live = ["/", f"/jobs/{shop.bad}", "/dead", f"/dead/{shop.bad}", "/queues", "/activity", "/workers"]
    for path in live:
        text = http.get(path).text
        assert '<body data-live="5">' in text and 'id="live-toggle"' in text, path
        assert re.search(r'Updated <time id="live-stamp" datetime="[^"]+">\d\d:\d\d:\d\d UTC</time>', text), path
    # a confirmation form or an error page never reloads under the reader's hands, but says when it was made
    for path in [f"/act/replay?id={shop.bad}", "/jobs/no-such-job"]:
        text = http.get(path).text
        assert "data-live" not in text and 'id="live-stamp"' in text, path
    assert "data-live" not in client(shop, refresh_s=0).get("/").text


# -- what a job's page says ------------------------------------------------------------------


def test_a_job_that_recovered_says_so_and_not_in_red(stub_broker) -> None:
    # Given a job that fails once, then succeeds on its retry
    store = dr.MemoryStore()
    dr.install(stub_broker, store)
    tries: list[int] = []

    @dramatiq.actor(broker=stub_broker, max_retries=2, min_backoff=1, max_backoff=1)
    def sync_crm(customer: str) -> None:
        tries.append(1)
        if len(tries) == 1:
            raise TimeoutError("the CRM did not answer in 5 s")

    worker = dramatiq.Worker(stub_broker, worker_timeout=50)
    worker.start()
    try:
        job_id = sync_crm.send("ann").message_id
        settle(stub_broker, store, worker)
    finally:
        worker.stop()
    # When its page and the list are read
    http = TestClient(create_app(store, stub_broker))
    page = http.get(f"/jobs/{job_id}").text
    # Then the page says it recovered, with the failure, and shows no red reason box
    assert "done after 2 attempts" in page
    assert re.search(r"Done after 2 attempts; last failure: <strong>TimeoutError</strong>: the CRM did not", page)
    assert 'class="reason"' not in page and "Why it failed" not in page
    listing = http.get("/").text
    assert "recovered: done after 2 attempts; last failure TimeoutError: the CRM did not answer" in listing
    assert '<span class="err">' not in listing


def test_a_skipped_duplicate_links_to_the_job_that_did_the_work(stub_broker) -> None:
    # Given two sends of one idempotency key, the second after the first completed
    store = dr.MemoryStore()
    dr.install(stub_broker, store)

    @dramatiq.actor(broker=stub_broker, idempotency_key="charge:{order_id}")
    def charge(order_id: int) -> None: ...

    worker = dramatiq.Worker(stub_broker, worker_timeout=50)
    worker.start()
    try:
        first = charge.send(order_id=7).message_id
        settle(stub_broker, store, worker)
        second = charge.send(order_id=7).message_id
        settle(stub_broker, store, worker)
    finally:
        worker.stop()
    assert status(store, second) == "skipped"
    http = TestClient(create_app(store, stub_broker))
    # Then the list and the job's page name the job that did the work, as a link
    link = f'<a class="id" href="/jobs/{first}">{first}</a>'
    assert f"duplicate of {link}" in http.get("/", params={"status": "skipped"}).text
    assert f"a duplicate of {link}, which did the work" in http.get(f"/jobs/{second}").text


# -- activity --------------------------------------------------------------------------------


def test_activity_page_charts_what_ended(shop) -> None:
    http = client(shop)
    page = http.get("/activity")
    assert page.status_code == 200
    text = page.text
    # Three charts drawn on the server, with axes' labels, and the totals in their legends
    assert text.count('<svg class="chart"') == 3
    assert "done <strong>1</strong>" in text and "dead-lettered <strong>1</strong>" in text
    assert "failed attempts <strong>1</strong>" in text
    assert '<polygon class="area c-done"' in text and "UTC</text>" in text
    assert re.search(r"<title>\d\d:\d\d to \d\d:\d\d UTC: done 1</title>", text)
    assert re.search(r"<title>\d\d:\d\d to \d\d:\d\d UTC: failed attempts 1, dead-lettered 1</title>", text)
    # the queue's wait is drawn, and the actor is listed with its counts
    assert '<li><span class="swatch c-q0"></span>default</li>' in text
    assert 'href="/activity?range=hour&amp;actor=invoice"' in text
    # per actor, and over the day
    assert "done <strong>0</strong>" in http.get("/activity", params={"actor": "someone_else"}).text
    day = http.get("/activity", params={"range": "day"}).text
    assert "per 10 minutes" in day and "done <strong>1</strong>" in day
    assert http.get("/activity", params={"range": "week"}).status_code == 400


def test_activity_page_escapes_names_from_the_store(shop) -> None:
    name = "<script>alert(3)</script>"
    op = {"k": "finish", "id": "x", "job": {"outcome": "done"}, "st": {"a": name, "q": name, "o": "done", "wait_ms": 5}}
    shop.store.apply({"now_ms": dr_now(), "ops": [op]})
    text = client(shop).get("/activity").text
    assert "<script>alert" not in text and "&lt;script&gt;alert(3)&lt;/script&gt;" in text


def dr_now() -> int:
    from dramatiq_reliable._clock import now_ms

    return now_ms()


# -- who may read, and who may guess ---------------------------------------------------------


def test_basic_auth_asks_for_a_user_and_names_them(shop, caplog) -> None:
    auth = Auth(users={"ann": "s3cret-passphrase"})
    http = client(shop, auth=auth)
    challenge = http.get("/")
    assert challenge.status_code == 401 and challenge.headers["www-authenticate"].startswith("Basic ")
    assert shop.bad not in challenge.text
    assert http.get("/", auth=("ann", "wrong")).status_code == 401
    assert http.get("/", auth=("bob", "s3cret-passphrase")).status_code == 401
    page = http.get(f"/jobs/{shop.bad}", auth=("ann", "s3cret-passphrase"))
    assert page.status_code == 200 and '<span class="user">ann</span>' in page.text
    assert any("refused GET / from testclient: wrong user or password" in r.getMessage() for r in caplog.records)


def test_wrong_passwords_lock_the_client_out(shop) -> None:
    http = client(shop, auth=Auth(users={"ann": "s3cret-passphrase"}))
    for _ in range(5):
        assert http.get("/", auth=("ann", "guess")).status_code == 401
    locked = http.get("/", auth=("ann", "s3cret-passphrase"))
    assert locked.status_code == 429 and "too many wrong attempts" in locked.text


def test_a_proxy_header_is_believed_from_trusted_proxies_only(shop) -> None:
    auth = Auth(header="X-Forwarded-User", trusted=parse_networks(["10.0.0.0/8"]))
    app = create_app(shop.store, shop.broker, token=TOKEN, auth=auth)
    proxy = TestClient(app, client=("10.1.2.3", 4000))
    direct = TestClient(app, client=("192.0.2.9", 4000))
    assert direct.get("/", headers={"X-Forwarded-User": "mallory"}).status_code == 403
    assert proxy.get("/").status_code == 403  # the proxy did not say who
    page = proxy.get(f"/jobs/{shop.bad}", headers={"X-Forwarded-User": "ann"})
    assert page.status_code == 200 and '<span class="user">ann</span>' in page.text
    # and an action names the user in the job's history
    headers = {"X-Forwarded-User": "ann"}
    confirm = proxy.get("/act/purge", params={"id": shop.bad}, headers=headers)
    done = proxy.post("/act/purge", data={**form_of(confirm.text), "token": TOKEN}, headers=headers)
    assert done.status_code == 200
    record = shop.store.get_job(shop.bad)
    assert any("the support page (ann from 10.1.2.3)" in e.detail for e in record.events)


def test_replicas_with_one_secret_accept_each_others_forms(shop) -> None:
    secret = b"k" * 32
    one = client(shop, token=TOKEN, secret=secret)
    other = client(shop, token=TOKEN, secret=secret)
    stranger = client(shop, token=TOKEN, secret=b"x" * 32)
    fields = {**form_of(one.get("/act/purge", params={"id": shop.bad}).text), "token": TOKEN}
    assert stranger.post("/act/purge", data=fields).status_code == 403
    assert other.post("/act/purge", data=fields).status_code == 200


def test_actions_and_refusals_are_logged(shop, caplog) -> None:
    caplog.set_level("INFO", logger="dramatiq_reliable.web")
    http = client(shop, token=TOKEN)
    fields = {**form_of(http.get("/act/replay", params={"id": shop.bad}).text), "token": TOKEN}
    http.post("/act/replay", data={**fields, "token": "wrong-token-here"})
    http.post("/act/replay", content=b"id=x", headers={"content-type": "text/plain"})
    shop.broken.clear()
    http.post("/act/replay", data=fields)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("dramatiq_reliable.web")]
    assert ("WARNING", "refused replay of 1 dead letters from testclient: wrong token") in lines
    assert any(level == "WARNING" and "application/x-www-form-urlencoded" in text for level, text in lines)
    assert ("INFO", "replay of 1 dead letters by testclient: 1 done") in lines


async def _post(app: Any, host: str, body: bytes) -> int:
    """One form POST straight into the ASGI app, as a server on one event loop would send it."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/act/replay",
        "raw_path": b"/act/replay",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/x-www-form-urlencoded")],
        "client": (host, 5000),
        "server": ("testserver", 80),
    }
    sent = [{"type": "http.request", "body": body, "more_body": False}]
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return sent.pop() if sent else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


def test_parallel_token_guesses_are_capped(shop, monkeypatch) -> None:
    from urllib.parse import urlencode

    import anyio

    # Given a page with actions on, and 400 guesses sent at once from 40 addresses
    monkeypatch.setattr(actions, "WRONG_TOKEN_DELAY", 0.05)
    now = [1000.0]
    lockout = Lockout(clock=lambda: now[0])
    app = create_app(shop.store, shop.broker, token=TOKEN, lockout=lockout)
    fields = form_of(TestClient(app).get("/act/replay", params={"id": shop.bad}).text)
    codes: list[int] = []

    async def guess(n: int) -> None:
        body = urlencode({**fields, "token": f"guess-number-{n:04d}"}, doseq=True).encode()
        codes.append(await _post(app, f"10.0.0.{n % 40}", body))

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for n in range(400):
                group.start_soon(guess, n)

    anyio.run(main)
    # Then only the first 20 were compared with the token; every other one was refused unchecked
    assert codes.count(403) == lockout.overall and codes.count(429) == 400 - lockout.overall
    # even the right token waits until the window has passed
    right = urlencode({**fields, "token": TOKEN}, doseq=True).encode()
    assert anyio.run(_post, app, "10.9.9.9", right) == 429
    now[0] += lockout.window_s + 1
    shop.broken.clear()
    assert anyio.run(_post, app, "10.9.9.9", right) == 200


def test_one_client_is_locked_out_others_are_not(shop) -> None:
    http = client(shop, token=TOKEN)
    fields = form_of(http.get("/act/replay", params={"id": shop.bad}).text)
    for _ in range(5):
        assert http.post("/act/replay", data={**fields, "token": "wrong-token-here"}).status_code == 403
    locked = http.post("/act/replay", data={**fields, "token": TOKEN})
    assert locked.status_code == 429 and "too many wrong attempts from this client" in locked.text
    assert shop.store.get_dead_letter(shop.bad) is not None
    other = TestClient(http.app, client=("10.0.0.8", 1))
    assert other.post("/act/replay", data={**fields, "token": TOKEN}).status_code == 200


def test_corrupt_records_are_marked_and_the_pages_keep_working(shop: SimpleNamespace) -> None:
    # Given a job record and a dead letter whose fields something else overwrote
    for key, field, value in (
        (shop.store.k("job", shop.ok), "att", "many"),
        (shop.store.k("dead", shop.bad), "dead", 1e300),
    ):
        stored = json.loads(shop.store.client.get(key))
        shop.store.client.set(key, json.dumps({**stored, field: value}), keepttl=True)
    web = client(shop)
    # Then the search lists the readable jobs and marks the corrupt one
    page = web.get("/")
    assert page.status_code == 200 and f"/jobs/{shop.bad}" in page.text
    assert f'corrupt record <a href="/jobs/{shop.ok}">{shop.ok}</a>' in page.text
    # And its own page says what is wrong with it
    page = web.get(f"/jobs/{shop.ok}")
    assert page.status_code == 422 and "attempts &#39;many&#39; is not a number" in page.text
    # And the dead letters page marks the corrupt dead letter; its page says why
    page = web.get("/dead")
    assert page.status_code == 200 and f'corrupt record <a href="/dead/{shop.bad}">{shop.bad}</a>' in page.text
    page = web.get(f"/dead/{shop.bad}")
    assert page.status_code == 422 and "is out of range" in page.text
