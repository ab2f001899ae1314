"""The support page in a real headless browser, on real Redis and RabbitMQ, with real ``dramatiq`` workers.

Debian's ``chromium`` driven through its ``chromedriver`` (nothing is downloaded at test time;
without them the tests are skipped, and fail when ``CI`` is set). The page runs as a user
starts it: ``dramatiq-reliable --store … --broker … web --allow-actions`` in a subprocess, on
a free port. A screenshot of the job page goes to the test's artifacts folder.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import dramatiq_reliable as dr
from tests.apps.support import build
from tests.conftest import CI, ServerEnv
from tests.helpers import DramatiqProcess, wait_until

pytestmark = pytest.mark.integration

pytest.importorskip("starlette", reason="the web extra is not installed")

#: Debian's browser and its driver.
CHROMIUM = os.getenv("DR_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.getenv("DR_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
TOKEN = "support-token-for-the-tests"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless chromium for the module."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        reason = f"{', '.join(missing)} not found (apt-get install chromium chromium-driver)"
        if CI:
            pytest.fail(f"{reason} (CI is set, so this is an error)")
        pytest.skip(reason)
    offline = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # never let selenium fetch a browser or a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1400"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    if offline is None:
        del os.environ["SE_OFFLINE"]
    else:
        os.environ["SE_OFFLINE"] = offline


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cli_urls(env: ServerEnv) -> list[str]:
    broker = f"{env.broker_url}?namespace={env['DR_TEST_NAMESPACE']}" if env.kind == "redis" else env.broker_url
    return ["--store", f"{env.store_url}?prefix={env.prefix}", "--broker", broker]


class WebProcess:
    """``dramatiq-reliable … web`` in a subprocess, on a free loopback port."""

    def __init__(self, env: ServerEnv, log: Path, *extra: str) -> None:
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-c", "from dramatiq_reliable.cli import entry; entry()"]
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [*command, *cli_urls(env), "web", "--port", str(self.port), *extra],
                env={**os.environ, "DRAMATIQ_RELIABLE_WEB_TOKEN": TOKEN},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(self.up, timeout=60, what=f"the page to answer at {self.url} (log: {log})")

    def up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"dramatiq-reliable web exited with {self.proc.returncode}")
        try:
            with urllib.request.urlopen(self.url + "/queues", timeout=5) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def post(self, path: str, fields: dict[str, Any]) -> tuple[int, str]:
        """A form POST as a script would send it (no browser)."""
        body = urllib.parse.urlencode(fields, doseq=True).encode()
        request = urllib.request.Request(self.url + path, data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def shop(server_env: ServerEnv, artifacts: Path) -> Iterator[Any]:
    """The support app's workers, and the page with actions on, for one broker."""
    app = build(server_env)
    workers = DramatiqProcess("apps.support", server_env, artifacts / "workers.log", processes=1, threads=2)
    workers.start()
    web = WebProcess(server_env, artifacts / "web.log", "--allow-actions", "--search-key", "order_id", "--refresh", "0")
    app.web = web
    try:
        yield app
    finally:
        web.stop()
        workers.stop()
        app.store.close()
        app.broker.close()


def status_of(store: dr.Store, job_id: str) -> str | None:
    record = store.get_job(job_id)
    return record.status.value if record is not None else None


def test_find_see_why_and_replay_from_the_page(shop, browser, artifacts) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    # Given an invoice that runs and one whose card is declined, with markup in the error
    shop.breaks(4712, True)
    fine = shop.invoice.send(order_id=4711, customer="Ann").message_id
    declined = shop.invoice.send(order_id=4712, customer="<img src=x onerror=alert(1)>", card="4111 1111").message_id
    wait_until(lambda: status_of(shop.store, fine) == "done", timeout=60, what="order 4711 done")
    wait_until(lambda: shop.store.get_dead_letter(declined), timeout=60, what="order 4712 dead-lettered")

    # When support searches the order number
    browser.get(shop.web.url + "/")
    box = browser.find_element(By.NAME, "q")
    box.send_keys("order_id=4712" + Keys.ENTER)
    # (the empty search page lists the newest jobs too: wait for the search's own page)
    wait_until(
        lambda: "q=order_id" in browser.current_url and declined in browser.page_source,
        timeout=30,
        what="the search result",
    )
    assert fine not in browser.page_source
    browser.save_screenshot(str(artifacts / "search-page.png"))
    # (a plain order number works too, with --search-key order_id)
    browser.get(shop.web.url + "/?q=4711")
    assert fine in browser.page_source and declined not in browser.page_source

    # Then the failed job's page says why, with the markup shown as text
    browser.get(f"{shop.web.url}/jobs/{declined}")
    reason = browser.find_element(By.CSS_SELECTOR, ".reason .error-text").text
    assert "CardDeclined" in reason and "<script>document.title='pwned'</script>" in reason
    assert browser.find_elements(By.CSS_SELECTOR, ".reason b, .reason i, main img") == []
    assert "pwned" not in browser.title
    assert browser.find_element(By.CSS_SELECTOR, ".summary .status").text == "failed"
    assert "[redacted]" in browser.find_element(By.CSS_SELECTOR, "pre.args").text
    assert browser.save_screenshot(str(artifacts / "job-page.png"))
    assert (artifacts / "job-page.png").stat().st_size > 0
    size = browser.get_window_size()
    browser.set_window_size(390, 844)  # a phone: the page fits its width
    fits = "const e = document.documentElement; return [e.scrollWidth, e.clientWidth];"
    scroll_width, client_width = browser.execute_script(fits)
    assert scroll_width <= client_width, (scroll_width, client_width)
    browser.save_screenshot(str(artifacts / "job-page-phone.png"))
    browser.set_window_size(size["width"], size["height"])

    browser.get(shop.web.url + "/dead")
    assert declined in browser.page_source and "CardDeclined" in browser.page_source
    browser.save_screenshot(str(artifacts / "dead-letters.png"))
    browser.get(f"{shop.web.url}/jobs/{declined}")

    # A replay without the token is refused and changes nothing
    browser.find_element(By.LINK_TEXT, "Replay…").click()
    assert "Replay 1 dead letter?" in browser.page_source
    form_signature = browser.find_element(By.NAME, "csrf").get_attribute("value")
    browser.find_element(By.NAME, "token").send_keys("not-the-token-at-all")
    browser.find_element(By.CSS_SELECTOR, "form.confirm button").click()
    wait_until(lambda: "Nothing was changed" in browser.page_source, timeout=30, what="the refusal")
    assert "wrong token" in browser.page_source
    code, page = shop.web.post("/act/replay", {"id": declined, "csrf": form_signature, "token": ""})
    assert code == 403 and "Nothing was changed" in page
    assert status_of(shop.store, declined) == "failed" and shop.store.get_dead_letter(declined) is not None

    # With the token, once the card is fixed, the dead letter comes back and ends done
    shop.breaks(4712, False)
    browser.get(f"{shop.web.url}/act/replay?id={declined}")
    browser.find_element(By.NAME, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "form.confirm button").click()
    wait_until(lambda: "Replay:" in browser.title, timeout=60, what="the replay's results")
    assert "1 of 1 done" in browser.page_source, browser.page_source[-2000:]
    assert browser.find_element(By.CSS_SELECTOR, "td.outcome").text == "replayed"
    wait_until(lambda: status_of(shop.store, declined) == "done", timeout=60, what="the replayed job done")
    assert shop.store.get_dead_letter(declined) is None
    browser.get(f"{shop.web.url}/jobs/{declined}")
    assert browser.find_element(By.CSS_SELECTOR, ".summary .status").text == "done"
    history = browser.find_element(By.CSS_SELECTOR, "table.history").text
    assert re.search(r"replayed from the dead-letter queue", history)
    # and the server's log says who did what, at the level it runs (info by default)
    log = shop.web.log.read_text()
    assert "WARNING dramatiq_reliable.web.actions: refused replay of 1 dead letters from 127.0.0.1: wrong token" in log
    assert "INFO dramatiq_reliable.web.actions: replay of 1 dead letters by 127.0.0.1: 1 done" in log

    # The other pages answer on this broker too
    browser.get(shop.web.url + "/queues")
    assert shop.invoice.queue_name in browser.page_source
    browser.get(shop.web.url + "/dead")
    assert "No dead letters match." in browser.page_source


def test_a_page_left_open_follows_the_incident(server_env, shop, browser, artifacts, tmp_path) -> None:
    from selenium.webdriver.common.by import By

    secret = tmp_path / "secret"
    secret.write_text("s" * 40)
    web = WebProcess(
        server_env, artifacts / "live-web.log", "--allow-actions", "--refresh", "1", "--secret-file", str(secret)
    )
    try:
        _follow_an_incident(shop, web, browser, artifacts, By)
        _parallel_guesses_are_capped(shop, web)
    finally:
        web.stop()


def _follow_an_incident(shop: Any, web: WebProcess, browser: Any, artifacts: Path, By: Any) -> None:
    # Given the CRM down, and a sync that keeps failing and being retried
    shop.crm(up=False)
    synced = shop.sync_crm.send("ann").message_id
    wait_until(lambda: (shop.store.get_job(synced) or FAR).attempts >= 2, timeout=60, what="a second failed attempt")
    # When support opens its page and leaves it open
    browser.get(f"{web.url}/jobs/{synced}")
    stamp = browser.find_element(By.ID, "live-stamp").text
    assert browser.find_element(By.ID, "live-state").text == "updates itself every 1s"
    assert "CrmDown" in browser.find_element(By.TAG_NAME, "main").text
    # Then once the CRM answers again the open page shows the job done, without a reload
    shop.crm(up=True)
    wait_until(lambda: status_of(shop.store, synced) == "done", timeout=60, what="the sync done")
    wait_until(lambda: "done after" in _main_text(browser), timeout=30, what="the open page to show it done")
    assert browser.find_element(By.ID, "live-stamp").text != stamp
    recovered = browser.find_element(By.CSS_SELECTOR, ".recovered").text
    assert re.search(r"Done after \d+ attempts; last failure: CrmDown: the CRM did not answer for ann", recovered)
    assert browser.find_elements(By.CSS_SELECTOR, ".reason") == []
    browser.save_screenshot(str(artifacts / "recovered-job.png"))

    # Paused, the page stays as it is; resumed, it refreshes again
    browser.find_element(By.ID, "live-toggle").click()
    assert browser.find_element(By.ID, "live-state").text == "paused: this page does not update"
    paused_at = browser.find_element(By.ID, "live-stamp").text
    before = _fetches(browser)
    browser.execute_async_script("setTimeout(arguments[0], 2500)")  # 2.5 refresh periods
    # (a fetch under way when Pause was pressed may end, but its page is dropped)
    assert _fetches(browser) <= before + 1 and browser.find_element(By.ID, "live-stamp").text == paused_at
    browser.find_element(By.ID, "live-toggle").click()
    wait_until(lambda: browser.find_element(By.ID, "live-stamp").text != paused_at, timeout=30, what="a refresh")

    # A second charge of one order is skipped, and the list links the job that did the work
    first = shop.charge.send(order_id=9).message_id
    wait_until(lambda: status_of(shop.store, first) == "done", timeout=60, what="the first charge")
    second = shop.charge.send(order_id=9).message_id
    wait_until(lambda: status_of(shop.store, second) == "skipped", timeout=60, what="the second charge skipped")
    browser.get(f"{web.url}/?status=skipped")
    browser.find_element(By.LINK_TEXT, first).click()
    wait_until(lambda: f"/jobs/{first}" in browser.current_url, timeout=30, what="the job that did the work")

    # The activity page charts what the workers did, per actor
    browser.get(f"{web.url}/activity")
    wait_until(lambda: "failed attempts" in _main_text(browser), timeout=30, what="the activity page")
    legend = browser.find_elements(By.CSS_SELECTOR, "ul.legend strong")
    done, failed, dead = (int(e.text) for e in legend)
    assert done >= 2 and failed >= 2 and dead == 0, (done, failed, dead)
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart")) == 3
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart polyline.c-failed")
    assert shop.store.get_job(synced).queue in _main_text(browser)  # its queue's wait is drawn
    browser.save_screenshot(str(artifacts / "activity.png"))
    browser.find_element(By.LINK_TEXT, "sync_crm").click()
    wait_until(lambda: "sync_crm, last hour" in _main_text(browser), timeout=30, what="the actor's charts")


def _parallel_guesses_are_capped(shop: Any, web: WebProcess) -> None:
    """100 wrong tokens posted at once from 20 threads: only the first 20 are compared."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    shop.breaks(4800, True)
    dead = shop.invoice.send(order_id=4800, customer="Cy").message_id
    wait_until(lambda: shop.store.get_dead_letter(dead), timeout=60, what="a dead letter to guess on")
    with urllib.request.urlopen(f"{web.url}/act/replay?id={dead}", timeout=30) as response:
        csrf = re.search(r'name="csrf" value="([^"]*)"', response.read().decode()).group(1)  # type: ignore[union-attr]
    began = time.monotonic()
    with ThreadPoolExecutor(20) as pool:
        codes = list(
            pool.map(
                lambda n: web.post("/act/replay", {"id": dead, "csrf": csrf, "token": f"guess-{n}"})[0], range(100)
            )
        )
    elapsed = time.monotonic() - began
    compared = codes.count(403)
    assert compared <= 20 and codes.count(429) == 100 - compared, codes
    print(f"100 parallel guesses in {elapsed:.1f}s: {compared} compared with the token, the rest refused unchecked")
    # and the right token waits too, while the window lasts
    assert web.post("/act/replay", {"id": dead, "csrf": csrf, "token": TOKEN})[0] == 429
    assert shop.store.get_dead_letter(dead) is not None
    log = web.log.read_text()
    assert "refused replay of 1 dead letters from 127.0.0.1: too many wrong attempts" in log


#: A stand-in record while a job has none yet.
FAR = SimpleNamespace(attempts=0)


def _main_text(browser: Any) -> str:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return str(browser.find_element(By.TAG_NAME, "main").text)
    except StaleElementReferenceException:  # swapped by a refresh while being read
        return ""


def _fetches(browser: Any) -> int:
    """How many times the page's script has fetched the page again."""
    script = "return performance.getEntriesByType('resource').filter(e => e.initiatorType === 'fetch').length"
    return int(browser.execute_script(script))
