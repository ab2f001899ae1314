"""How long reading takes over many records: ``jobs list`` and ``dead list``/``dead stats``.

Runs over what the memory benchmark left in the store (100,000 finished jobs, 100,000 dead
letters by default). Two timings per query:

* **library**: ``store.find_jobs(...)`` / ``store.dead_letters(...)`` in this process, one
  page of 20, median and p90 of ``reps`` calls after one warm-up call;
* **CLI**: ``dramatiq-reliable --store URL jobs list ...`` as a user runs it, wall time of
  the whole command (Python start-up and imports included: ``--version`` shows that part).

The CLI reads the store under the default prefix (``dr``), so the CLI timings need the
records there: the harness uses that prefix on its private store server only.
"""

from __future__ import annotations

import functools
import inspect
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dramatiq_reliable as dr

from .stats import median, percentile

PAGE = 20


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "dramatiq-reliable"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from dramatiq_reliable.cli import entry; entry()"]


def _time(fn: Callable[[], Any], reps: int) -> dict[str, Any]:
    fn()  # warm-up: connection, first page of the index in Redis' caches
    times = []
    result = None
    for _ in range(reps):
        t = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t) * 1000)
    items = getattr(result, "items", result)
    return {
        "median_ms": median(times),
        "p90_ms": percentile(times, 0.9),
        "returned": len(items) if isinstance(items, (list, tuple)) else None,
    }


def _time_cli(args: list[str], reps: int) -> dict[str, Any]:
    times = []
    code = 0
    out = b""
    err = b""
    for i in range(reps + 1):
        t = time.perf_counter()
        proc = subprocess.run([*cli_command(), *args], capture_output=True, check=False)
        if i:  # the first run warms the file cache
            times.append((time.perf_counter() - t) * 1000)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    row: dict[str, Any] = {"median_ms": median(times), "p90_ms": percentile(times, 0.9), "exit_code": code}
    row["output_lines"] = out.count(b"\n")
    if code != 0:
        row["error"] = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        row["error"] = row["error"][0]
    return row


def jobs_queries(actor: str, key: tuple[str, str] | None) -> list[tuple[str, dict[str, Any], list[str]]]:
    """``(label, find_jobs keywords, CLI arguments)`` of the listing queries."""
    queries: list[tuple[str, dict[str, Any], list[str]]] = [
        ("first page, no filter", {}, []),
        ("--status done", {"status": "done"}, ["--status", "done"]),
        (f"--actor {actor}", {"actor": actor}, ["--actor", actor]),
    ]
    if key is not None:
        queries.append((f"--key {key[0]}={key[1]}", {"key": key}, ["--key", f"{key[0]}={key[1]}"]))
    queries.append(
        (
            f"--actor {actor} --status running (none match)",
            {"actor": actor, "status": "running"},
            ["--actor", actor, "--status", "running"],
        )
    )
    return queries


def run_jobs_listing(
    store_url: str, prefix: str, *, actor: str, key: tuple[str, str] | None, reps: int, cli: bool
) -> dict[str, Any]:
    """Time ``jobs list`` queries over the records under ``prefix``."""
    store = dr.RedisStore(store_url, prefix=prefix)
    rows = []
    try:
        for label, query, args in jobs_queries(actor, key):
            timed = _time(functools.partial(store.find_jobs, limit=PAGE, **query), reps)
            row: dict[str, Any] = {"query": label, "library": timed}
            if cli:
                command = ["--store", store_url, "jobs", "list", "--limit", str(PAGE), *args]
                row["cli"] = _time_cli(command, max(reps // 4, 3))
            rows.append(row)
    finally:
        store.close()
    out: dict[str, Any] = {"what": "jobs list", "page": PAGE, "queries": rows}
    if cli:
        out["cli_startup"] = _time_cli(["--version"], 3)
    return out


def run_dead_listing(store_url: str, prefix: str, *, actor: str, reps: int, cli: bool) -> dict[str, Any]:
    """Time ``dead list`` and ``dead stats`` over the dead letters under ``prefix``."""
    store = dr.RedisStore(store_url, prefix=prefix)
    rows: list[dict[str, Any]] = []
    try:
        reader = getattr(store, "dead_letters", None)
        if reader is not None:
            takes_limit = "limit" in inspect.signature(reader).parameters
            kwargs: dict[str, Any] = {"limit": PAGE} if takes_limit else {}
            rows.append({"query": "dead letters, first page", "library": _time(lambda: reader(**kwargs), reps)})
            if "actor" in inspect.signature(reader).parameters:
                rows.append(
                    {"query": f"dead letters of {actor}", "library": _time(lambda: reader(actor=actor, **kwargs), reps)}
                )
        if cli:
            n = max(reps // 4, 3)
            for label, args in [
                ("dead list", ["dead", "list"]),
                (f"dead list --actor {actor}", ["dead", "list", "--actor", actor]),
                ("dead stats", ["dead", "stats"]),
            ]:
                rows.append({"query": label, "cli": _time_cli(["--store", store_url, *args], n)})
    finally:
        store.close()
    return {"what": "dead letters", "queries": rows}
