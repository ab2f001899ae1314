"""How fast the support page answers over many records: ``python -m bench.web``.

Fills a private ``redis-server`` the way the memory benchmark does (``bench/memory.py``: jobs
run through the real middlewares into a real ``RedisStore``): ``--count`` tracked invoices
(``invoice(order_id, customer_id)``, 100,000 by default) and ``--dead`` dead letters with
their failed records. Then starts the page as a user does (``dramatiq-reliable --store URL
web``, a subprocess, read-only, ``--search-key order_id``) and times HTTP requests from this
process over one kept-alive connection: median and p90 of ``--reps`` requests per page after
one warm-up request, the whole response read. Target: the search page under 100 ms.

    python -m bench.web                       # 100,000 jobs, 10,000 dead letters (about 2 minutes)
    python -m bench.web --count 1000000       # a million jobs
    python -m bench.web --count 5000 --dead 500 --reps 5     # a smoke run

Writes ``bench/out/web-<time>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dramatiq_reliable as dr

from . import memory
from .listing import cli_command
from .servers import RedisServer, free_port
from .stats import median, percentile

#: The search page's target (ms).
TARGET_MS = 100.0
PREFIX = "webbench"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.web", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=100_000, help="tracked jobs in the store [100000]")
    p.add_argument("--dead", type=int, default=10_000, help="dead letters in the store [10000]")
    p.add_argument("--reps", type=int, default=20, help="timed requests per page [20]")
    p.add_argument("--redis-server", default="redis-server", help="the redis-server binary to start")
    p.add_argument("--out", type=Path, default=Path("bench/out"), help="folder for the JSON [bench/out]")
    return p.parse_args(argv)


def fill(store_url: str, count: int, dead: int) -> dict[str, Any]:
    """Run the jobs into the store under :data:`PREFIX`; what ``memory.measure`` reported."""
    out: dict[str, Any] = {}
    for name, n in (("tracked", count), ("dead+record", dead)):
        if n <= 0:
            continue
        started = time.perf_counter()
        result = memory.measure(store_url, PREFIX, name, max(n - 1000, 1), warmup=min(1000, n))
        if result.get("status") != "ok":
            raise RuntimeError(f"filling {name} failed: {result.get('error')}")
        out[name] = {"items": result["items_in_store"], "seconds": round(time.perf_counter() - started, 1)}
        print(f"filled {result['items_in_store']:,} {name} items in {out[name]['seconds']} s", flush=True)
    return out


def pages(store: dr.Store) -> list[tuple[str, str, bool]]:
    """``(label, path, is a search)`` of the requests timed, with ids and keys that exist."""
    some = store.find_jobs(actor="invoice", limit=1).items
    if not some:
        raise RuntimeError("no invoice job in the store")
    job = some[0]
    order = job.keys.get("order_id", "1")
    dead = store.dead_letters(limit=1).items
    out = [
        ("search: order_id=N (a business key)", f"/?q=order_id%3D{order}", True),
        ("search: N alone (--search-key order_id)", f"/?q={order}", True),
        ("search: a job id (answers 303 to its page)", f"/?q={job.id}", True),
        ("search: customer_id=7 (a key with 100 jobs)", "/?q=customer_id%3D7", True),
        ("search: no filter (newest 50)", "/", True),
        ("search: status done", "/?status=done", True),
        ("search: actor invoice", "/?actor=invoice", True),
        ("search: actor invoice, status running (none running)", "/?actor=invoice&status=running", True),
        ("search: actor invoice, status failed (none match)", "/?actor=invoice&status=failed", True),
        ("search: actor invoice, order_id=N", f"/?actor=invoice&q=order_id%3D{order}", True),
        ("job page", f"/jobs/{job.id}", False),
        ("dead letters (store's copy, counts)", "/dead", False),
        ("queues (store only)", "/queues", False),
    ]
    if dead:
        out.append(("dead letter page", f"/dead/{dead[0].id}", False))
        out.append(("failed job's page", f"/jobs/{dead[0].id}", False))
    return out


def time_page(conn: http.client.HTTPConnection, path: str, reps: int) -> dict[str, Any]:
    times = []
    status = 0
    size = 0
    for i in range(reps + 1):
        started = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        status, size = response.status, len(body)
        if i:  # the first request warms the caches
            times.append(elapsed)
    return {"median_ms": median(times), "p90_ms": percentile(times, 0.9), "status": status, "bytes": size}


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dramatiq-reliable web exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the page did not start")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    results: dict[str, Any] = {"what": "support page", "count": args.count, "dead": args.dead, "reps": args.reps}
    with RedisServer(args.redis_server) as server:
        results["filled"] = fill(server.url, args.count, args.dead)
        store = dr.RedisStore(server.url, prefix=PREFIX)
        timed = pages(store)
        store.close()
        port = free_port()
        url = f"{server.url}?prefix={PREFIX}"
        command = [*cli_command(), "--store", url, "web", "--port", str(port), "--search-key", "order_id"]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(port, proc)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            rows = []
            for label, path, is_search in timed:
                row = {"page": label, "path": path, "search": is_search, **time_page(conn, path, args.reps)}
                rows.append(row)
                print(f"{label:60} {row['median_ms']:7.1f} ms  p90 {row['p90_ms']:7.1f} ms  HTTP {row['status']}")
            conn.close()
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    results["pages"] = rows
    worst = max(r["p90_ms"] for r in rows if r["search"])
    results["search_p90_worst_ms"] = worst
    results["target_ms"] = TARGET_MS
    results["ok"] = worst < TARGET_MS
    print(report(results))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = args.out / f"web-{stamp}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {path}")
    return 0 if results["ok"] else 1


def report(results: dict[str, Any]) -> str:
    """The Markdown table of a run."""
    lines = [
        f"\n### Support page over {results['count']:,} jobs and {results['dead']:,} dead letters",
        "",
        "| page | median ms | p90 ms | HTTP |",
        "|---|---:|---:|---:|",
    ]
    for r in results["pages"]:
        lines.append(f"| {r['page']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['status']} |")
    verdict = "met" if results["ok"] else "NOT met"
    lines += ["", f"Search page, worst p90: {results['search_p90_worst_ms']:.1f} ms (target < 100 ms: {verdict})."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
