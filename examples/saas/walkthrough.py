"""The operator's minute, on a real broker, with the real ``dramatiq-reliable`` commands.

Start the workers with short intervals, then the walkthrough, from the repository root::

    export SAAS_BROKER=redis://127.0.0.1:6379/0 SAAS_STORE=redis://127.0.0.1:6379/1   # or amqp://…
    SAAS_QUICK=1 dramatiq examples.saas.tasks --processes 1 --threads 8 &
    python -m examples.saas.walkthrough

It breaks the invoice's mail server, finds the failed job by its order id, shows why it
failed, fixes the mail server, replays the job, replays it again (nothing happens twice),
shows a stuck report with the line where it hangs, and shows that 200 failures made one
alert. Each step checks what it shows, and the script exits 1 at the first step that does
not behave (2 for bad options).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class StepFailed(Exception):
    """A step did not behave as it should."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.saas.walkthrough",
        description="Walk through the operator's minute on the SaaS example (its workers must run).",
    )
    env = os.environ
    parser.add_argument("--broker", default=env.get("SAAS_BROKER"), help="broker URL [env SAAS_BROKER]")
    parser.add_argument("--store", default=env.get("SAAS_STORE"), help="store URL [env SAAS_STORE]")
    parser.add_argument("--namespace", default=env.get("SAAS_NAMESPACE"), help="Redis broker namespace")
    parser.add_argument("--queue-prefix", default=env.get("SAAS_QUEUE_PREFIX"), help="queue name prefix")
    parser.add_argument("--burst", type=int, default=200, help="signups during the mail outage (default 200)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds each wait may take (default 60)")
    args = parser.parse_args(argv)
    if args.burst < 2:
        parser.error("--burst must be at least 2")
    return args


class Walkthrough:
    def __init__(self, tasks: Any, timeout: float, burst: int) -> None:
        self.tasks = tasks
        self.settings = tasks.settings
        self.store = tasks.store
        self.data = tasks.data
        self.timeout = timeout
        self.burst = burst
        self.step_no = 0

    # -- output and checks ---------------------------------------------------------------------

    def step(self, title: str, text: str) -> None:
        self.step_no += 1
        print(f"\n== {self.step_no}. {title}\n")
        for line in text.strip().splitlines():
            print(f"   {line}")

    def say(self, text: str) -> None:
        print(f"   {text}")

    def check(self, ok: bool, failure: str) -> None:
        if not ok:
            raise StepFailed(failure)

    def cli(self, *args: str, expect: int = 0, limit: int | None = None) -> str:
        """Run ``dramatiq-reliable ARGS`` against the app's store and broker; print and return its output.

        ``limit``: print at most about that many lines of it (a bulk replay prints one per id).
        """
        from dramatiq_reliable.cli import main

        shown = "dramatiq-reliable " + " ".join(shlex.quote(a) for a in args)
        print(f"\n   $ {shown}")
        out, err = io.StringIO(), io.StringIO()
        argv = ["--store", self.settings.store_url, "--broker", self.settings.cli_broker_url, *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        lines = (out.getvalue() + err.getvalue()).rstrip().splitlines()
        if limit is not None and len(lines) > limit:
            lines = [*lines[: limit - 3], f"… {len(lines) - limit + 1} more lines", *lines[-2:]]
        for line in lines:
            print(f"     {line}")
        self.check(code == expect, f"`{shown}` exited {code}, expected {expect}")
        return out.getvalue()

    def wait(self, what: str, predicate: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise StepFailed(f"timed out after {self.timeout:g} s waiting for {what}")

    def status(self, job_id: str) -> str | None:
        record = self.store.get_job(job_id)
        return record.status.value if record is not None else None

    def alerts(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.data.client.lrange(self.data.key("alerts"), 0, -1)]

    # -- the minute ----------------------------------------------------------------------------

    def run(self) -> None:
        s = self.settings
        started = time.time()
        print("The SaaS example's operator minute")
        print(f"  broker {s.broker_url}, store {s.store_url}, queues {', '.join(s.queues)}")
        print("  The commands below read these (or take --store URL --broker URL before the command):")
        print(f"  export DRAMATIQ_RELIABLE_STORE={shlex.quote(s.store_url)}")
        print(f"  export DRAMATIQ_RELIABLE_BROKER={shlex.quote(s.cli_broker_url)}")
        self.workers()
        job_id, order = self.break_invoice()
        self.find(job_id, order)
        self.why(job_id, order)
        self.fix()
        self.replay(job_id, order)
        self.replay_again(job_id, order)
        self.stuck_report()
        self.outage()
        print("\nThe alerts of this minute, as the on-call got them (one per job type and error):")
        for alert in self.alerts():
            if alert["received"] >= started:
                print(f"   {alert['text'].splitlines()[0]}")
        print("\nEvery step behaved.")

    def workers(self) -> None:
        self.step("Workers", "The walkthrough needs the app's workers (dramatiq examples.saas.tasks, SAAS_QUICK=1).")
        billing = self.settings.queue("billing")
        self.data.switch("smtp", "ok")
        self.data.switch("warehouse", "ok")
        found = self.wait(
            f"a live worker process on queue {billing} (start: SAAS_QUICK=1 dramatiq examples.saas.tasks)",
            lambda: [p for p in self.store.worker_processes() if p.alive and billing in p.queues],
        )
        self.say(f"{len(found)} worker process(es) alive: {', '.join(p.id for p in found)}")

    def break_invoice(self) -> tuple[str, int]:
        order = 4711
        if self.store.find_jobs(key=("order_id", str(order)), limit=1).items:
            order = random.randint(10_000, 99_999)  # a store that ran the walkthrough before
        self.step(
            "The mail server breaks",
            f"""
The SMTP server starts timing out. Customer 42 pays order {order}; the shop sends
send_invoice(order_id={order}, customer_id=42, amount_cents=1999). The job renders the PDF
(dr.once "render"), then fails on the email, is retried 3 times, and is dead-lettered.
""",
        )
        self.data.switch("smtp", "timeout")
        job_id: str = self.tasks.send_invoice.send(order, 42, 1999).message_id
        self.wait(f"invoice job {job_id} to fail", lambda: self.status(job_id) == "failed")
        record = self.store.get_job(job_id)
        self.say(f"Job {job_id}: failed after {record.attempts} attempts.")
        self.check(record.attempts == 4, f"expected 4 attempts, the record says {record.attempts}")
        return job_id, order

    def find(self, job_id: str, order: int) -> None:
        self.step("Find it by order id, with one command", f"Support asks: where is the invoice of order {order}?")
        out = self.cli("jobs", "list", "--key", f"order_id={order}")
        self.check(job_id in out and "failed" in out, f"jobs list does not show job {job_id} as failed")

    def why(self, job_id: str, order: int) -> None:
        self.step("See why", "The record has the last error in plain words, the attempts and the history.")
        out = self.cli("jobs", "show", job_id)
        self.check("SMTPTimeout" in out and "did not answer" in out, "jobs show does not give the SMTPTimeout")
        out = self.cli("dead", "show", job_id)
        self.check("SMTPTimeout" in out and "integrations.py" in out, "dead show does not give the traceback")
        rendered, sent = self.data.rendered(order), self.data.sent(f"Invoice {order}")
        self.say(f"Over 4 attempts the PDF was rendered {rendered} time(s) (dr.once), and {sent} email went out.")
        self.check(rendered == 1 and sent == 0, f"rendered {rendered} times, sent {sent}: expected 1 and 0")

    def fix(self) -> None:
        self.step("Fix the cause", "The mail server answers again (the switch in Redis is cleared).")
        self.data.switch("smtp", "ok")

    def replay(self, job_id: str, order: int) -> None:
        self.step("Replay", "The dead letter goes back to its queue with the same job id.")
        self.cli("dead", "replay", job_id)
        self.wait(f"job {job_id} to be done", lambda: self.status(job_id) == "done")
        self.cli("jobs", "show", job_id)
        rendered, sent = self.data.rendered(order), self.data.sent(f"Invoice {order}")
        self.say(f"Invoice {order}: rendered {rendered} time(s), emailed {sent} time(s).")
        self.check(rendered == 1 and sent == 1, f"rendered {rendered} times, sent {sent}: expected once each")

    def replay_again(self, job_id: str, order: int) -> None:
        self.step(
            "Replay again: nothing happens twice",
            "A second replay finds nothing dead; the shop sending the invoice again is skipped.",
        )
        out = self.cli("dead", "replay", job_id, expect=1)
        self.check("not dead" in out, "a second replay did not say 'not dead'")
        again: str = self.tasks.send_invoice.send(order, 42, 1999).message_id
        self.wait(f"the second invoice job {again} to be skipped", lambda: self.status(again) == "skipped")
        out = self.cli("jobs", "list", "--key", f"order_id={order}")
        self.check(again in out and "skipped" in out, "jobs list does not show the skipped duplicate")
        record = self.store.get_job(again)
        self.check(record.duplicate_of == job_id, f"duplicate_of is {record.duplicate_of!r}, not {job_id!r}")
        time.sleep(1.0)  # give a wrongly running duplicate the time to send
        rendered, sent = self.data.rendered(order), self.data.sent(f"Invoice {order}")
        self.say(f"Invoice {order}: still rendered {rendered} time(s), emailed {sent} time(s).")
        self.check(rendered == 1 and sent == 1, f"rendered {rendered} times, sent {sent}: expected once each")

    def stuck_report(self) -> None:
        self.step(
            "A stuck report, and where it hangs",
            f"""
The nightly report runs from cron (dramatiq-reliable scheduler examples.saas.tasks); here it is
sent now, while the warehouse replica never catches up. Past its stuck_after
({self.settings.report_stuck_after:g} s), long before its time limit, it is marked stuck with its stack.
""",
        )
        self.cli("cron", "list", "examples.saas.tasks")
        self.data.switch("warehouse", "hang")
        report: str = self.tasks.nightly_report.send().message_id
        self.wait(f"report {report} to be stuck", lambda: self.status(report) == "stuck")
        out = self.cli("jobs", "list", "--status", "stuck")
        self.check(report in out, f"jobs list --status stuck does not show {report}")
        out = self.cli("jobs", "show", report)
        self.check("wait_for_replica" in out, "jobs show does not show the stack in wait_for_replica")
        self.say("The replica catches up; the report goes on and finishes.")
        self.data.switch("warehouse", "ok")
        self.wait(f"report {report} to be done", lambda: self.status(report) == "done")

    def outage(self) -> None:
        n = self.burst
        self.step(
            f"An outage: {n} failures, one alert",
            f"""
The mail server now refuses connections. {n} people sign up; signup() queues each welcome
email and returns at once. Each email fails for good (a refusal is not retried); support
finds a note on each account; the on-call gets one alert, not {n}.
""",
        )
        window = self.settings.alert_window
        since = time.time()
        earlier = [a for a in self.alerts() if (a["kind"], a["actor"]) == ("failed", "send_welcome_email")]
        self.data.switch("smtp", "refused")
        started = time.monotonic()
        users = [self.tasks.signup(f"user{i}@example.com") for i in range(n)]
        self.say(f"{n} signups took {time.monotonic() - started:.2f} s in all; none waited for the mail server.")

        def noted() -> bool:
            pipe = self.data.client.pipeline(transaction=False)
            for user in users:
                pipe.hget(self.data.key("user", str(user)), "welcome_email")
            return all(str(v).startswith("not sent") for v in pipe.execute())

        self.wait(f"{n} welcome emails to fail and leave their notes", noted)
        self.say(f"User {users[0]}'s account: {self.data.user(users[0])}")
        out = self.cli("dead", "stats")
        self.check("send_welcome_email" in out and "SMTPRefused" in out, "dead stats does not count the failures")
        self.cli("jobs", "list", "--key", f"user_id={users[-1]}")
        time.sleep(1.0)  # alerts are sent from the workers' notifier threads
        alerts = [a for a in self.alerts() if (a["kind"], a["actor"]) == ("failed", "send_welcome_email")]
        new = alerts[len(earlier) :]
        for alert in new:
            print("\n" + "\n".join(f"     | {line}" for line in alert["text"].splitlines()))
        if not new:
            recent = [a for a in earlier if since - a["received"] < window]
            self.check(bool(recent), f"no alert for {n} failed welcome emails")
            self.say(f"No new alert: one was sent less than {window:g} s ago (the throttle window).")
        else:
            self.check(len(new) == 1, f"{len(new)} alerts for {n} failed welcome emails, expected 1")
            self.say(f"{n} failures, 1 alert; the rest are counted and summed up once the {window:g} s window ends.")
        self.say("The cause is fixed; every welcome email that died is replayed at once.")
        self.data.switch("smtp", "ok")
        before = self.data.sent("Welcome aboard")
        self.cli("dead", "replay", "--all", "--actor", "send_welcome_email", "--yes", limit=8)
        self.wait(f"{n} welcome emails to go out", lambda: self.data.sent("Welcome aboard") - before >= n)
        self.say(f"{self.data.sent('Welcome aboard') - before} welcome emails sent.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {
        "SAAS_BROKER": args.broker,
        "SAAS_STORE": args.store,
        "SAAS_NAMESPACE": args.namespace,
        "SAAS_QUEUE_PREFIX": args.queue_prefix,
    }
    os.environ.update({k: v for k, v in overrides.items() if v is not None})
    os.environ.setdefault("SAAS_QUICK", "1")
    from . import tasks  # builds the broker and the store from SAAS_*

    walk = Walkthrough(tasks, args.timeout, args.burst)
    try:
        walk.run()
    except StepFailed as exc:
        print(f"\nStep {walk.step_no} did not behave: {exc}")
        return 1
    finally:
        tasks.store.close()
        tasks.broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
