"""Overhead of Alerts + Prometheus metrics, against the bundle without them, in the same run.

For each broker, rounds alternate between the two variants of ``bench/alerts_app.py``:
``bundle`` (JobState + Idempotency) and ``alerts`` (the same plus Alerts, with metrics enabled
in multiprocess mode). A round enqueues N jobs, starts ``dramatiq --processes 2 --threads 8``,
and times from the first job to the last (a Redis counter), reading the worker processes'
CPU time (utime + stime, after boot) from /proc. Workloads: ``noop`` (each job does one INCR)
and ``fail`` (each job raises; max_retries=0, so each is dead-lettered and alerted on).

    python bench/alerts_overhead.py --jobs 10000 --reps 3

With ``--webhook``, it instead compares the ``alerts`` variant with a webhook that answers
at once against one that never answers (60 s timeout), on the ``distinct`` workload: every
job fails with its own error type, so every job is worth an alert.

Numbers move ±10 % between runs on a shared machine; compare only within one run.
"""

from __future__ import annotations

import argparse
import http.server
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
REDIS = os.getenv("DR_TEST_REDIS", "redis://127.0.0.1:6379")
AMQP = os.getenv("DR_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")
TICKS = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


class _Hook(http.server.BaseHTTPRequestHandler):
    hang = threading.Event()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.server.hangs:  # type: ignore[attr-defined]
            _Hook.hang.wait(120)
            return
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None: ...


def webhook(hangs: bool) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.daemon_threads = True
    server.hangs = hangs  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def one_round(
    kind: str, url: str, variant: str, workload: str, jobs: int, hook: str | None = None
) -> tuple[float, float]:
    ns = "b" + uuid.uuid4().hex[:8]
    queue = f"{ns}_q"
    prom = tempfile.mkdtemp(prefix="dr-bench-")
    env = {
        **os.environ,
        "BENCH_BROKER": url,
        "BENCH_NS": f"dramatiq-{ns}",
        "BENCH_QUEUE": queue,
        "BENCH_STORE": f"{REDIS}/15",
        "BENCH_PREFIX": ns,
        "BENCH_VARIANT": variant,
        "BENCH_PROM_DIR": prom,
        "PYTHONPATH": str(HERE),
        **({"BENCH_WEBHOOK": hook} if hook else {}),
    }
    r = redis.Redis.from_url(f"{REDIS}/15")
    done_key = f"{ns}:bench:done"
    try:
        # Enqueue from a process of the same app (the records are written at enqueue, not timed)
        args = "i" if workload == "distinct" else ""
        send = f"import alerts_app as a\nfor i in range({jobs}): a.{workload}.send({args})\na.broker.close()"
        subprocess.run([sys.executable, "-c", send], env=env, check=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "alerts_app", "--processes", "2", "--threads", "8", "--path", str(HERE)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        while not r.get(done_key):
            time.sleep(0.002)
        start = time.monotonic()
        workers = children(proc.pid)
        cpu0 = cpu_seconds(workers)
        while int(r.get(done_key) or 0) < jobs:
            time.sleep(0.01)
        elapsed = time.monotonic() - start
        cpu = cpu_seconds(workers) - cpu0
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        return jobs / elapsed, cpu / jobs * 1e6
    finally:
        for key in r.scan_iter(match=f"{ns}:*", count=1000):
            r.delete(key)
        if kind == "redis":
            b = redis.Redis.from_url(url)
            for key in b.scan_iter(match=f"dramatiq-{ns}:*", count=1000):
                b.delete(key)
        else:
            import pika

            conn = pika.BlockingConnection(pika.URLParameters(url))
            channel = conn.channel()
            for suffix in ("", ".DQ", ".XQ"):
                channel.queue_delete(queue + suffix)
            conn.close()
        shutil.rmtree(prom, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--brokers", default="redis,rabbitmq")
    parser.add_argument("--workloads", default="noop,fail")
    parser.add_argument("--webhook", action="store_true", help="healthy vs hanging webhook, every job alerting")
    args = parser.parse_args()
    urls = {"redis": f"{REDIS}/14", "rabbitmq": AMQP}
    if args.webhook:
        compare_webhooks(args, urls)
        return
    print(f"{args.jobs} jobs per round, {args.reps} reps, --processes 2 --threads 8; medians")
    print(
        "| broker | workload | bundle jobs/s | +alerts+metrics jobs/s | ratio "
        "| bundle CPU µs/job | +alerts CPU µs/job | ratio |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for kind in args.brokers.split(","):
        for workload in args.workloads.split(","):
            results: dict[str, list[tuple[float, float]]] = {"bundle": [], "alerts": []}
            for _ in range(args.reps):
                for variant in ("bundle", "alerts"):
                    results[variant].append(one_round(kind, urls[kind], variant, workload, args.jobs))
            b_rate = statistics.median(x[0] for x in results["bundle"])
            a_rate = statistics.median(x[0] for x in results["alerts"])
            b_cpu = statistics.median(x[1] for x in results["bundle"])
            a_cpu = statistics.median(x[1] for x in results["alerts"])
            print(
                f"| {kind} | {workload} | {b_rate:,.0f} | {a_rate:,.0f} | {a_rate / b_rate:.2f} "
                f"| {b_cpu:,.0f} | {a_cpu:,.0f} | {a_cpu / b_cpu:.2f} |",
                flush=True,
            )


def compare_webhooks(args: argparse.Namespace, urls: dict[str, str]) -> None:
    ok, hanging = webhook(False), webhook(True)
    hooks = {name: f"http://127.0.0.1:{s.server_address[1]}/hook" for name, s in (("ok", ok), ("hang", hanging))}
    print(f"{args.jobs} jobs per round, each failing with its own error type; {args.reps} reps; medians")
    print("| broker | webhook answers jobs/s | webhook hangs jobs/s | ratio | answers CPU µs/job | hangs CPU µs/job |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind in args.brokers.split(","):
        results: dict[str, list[tuple[float, float]]] = {"ok": [], "hang": []}
        for _ in range(args.reps):
            for name in ("ok", "hang"):
                results[name].append(one_round(kind, urls[kind], "alerts", "distinct", args.jobs, hooks[name]))
        o_rate = statistics.median(x[0] for x in results["ok"])
        h_rate = statistics.median(x[0] for x in results["hang"])
        o_cpu = statistics.median(x[1] for x in results["ok"])
        h_cpu = statistics.median(x[1] for x in results["hang"])
        print(
            f"| {kind} | {o_rate:,.0f} | {h_rate:,.0f} | {h_rate / o_rate:.2f} | {o_cpu:,.0f} | {h_cpu:,.0f} |",
            flush=True,
        )
    _Hook.hang.set()


if __name__ == "__main__":
    main()
