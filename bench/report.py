"""The results as Markdown: the table printed at the end of a run and ``bench/RESULTS.md``.

``python -m bench.report bench/out/<run>/results.json [--out bench/RESULTS.md]`` rebuilds it
from a run's JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import stats


def num(value: float | None, digits: int = 0) -> str:
    """``3863.4`` → ``3,863``; ``None`` → ``-``."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A Markdown table; ``align`` holds ``l`` or ``r`` per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def throughput_table(rows: Sequence[dict[str, Any]]) -> str:
    broker_counts = any(r.get("broker_round_trips") is not None for r in rows)
    header = [
        "broker", "variant", "jobs/s", "x bare", "worker CPU µs/job", "x bare", "spread",
        "enqueue jobs/s", "x bare", "store round trips/job", "script calls/job", "store commands/job",
        "enqueue round trips/job", "others' CPU (cores)",
    ]  # fmt: skip
    if broker_counts:
        header += ["broker Redis round trips/job", "broker Redis commands/job"]
    body = []
    for r in rows:
        if not r.get("rounds"):
            body.append([r["broker"], r["variant"], f"not run: {r.get('note', '')}"] + [""] * (len(header) - 3))
            continue
        body.append(
            [
                r["broker"],
                r["variant"],
                num(r.get("jobs_per_s")),
                ratio(r.get("ratio")),
                num(r.get("cpu_us")),
                ratio(r.get("cpu_ratio")),
                pct(r.get("jobs_per_s_spread")),
                num(r.get("enqueue_per_s")),
                ratio(r.get("enqueue_ratio")),
                num(r.get("store_round_trips"), 2),
                num(r.get("store_script_calls"), 2),
                num(r.get("store_commands"), 2),
                num(r.get("enqueue_round_trips"), 2),
                num(r.get("others_cores"), 2),
            ]
            + ([num(r.get("broker_round_trips"), 2), num(r.get("broker_commands"), 2)] if broker_counts else [])
        )
    return table(header, body, "ll" + "r" * (len(header) - 2))


def checks_table(checks: Sequence[dict[str, Any]]) -> str:
    body = []
    for c in checks:
        value = c["value"]
        shown = f"{value:.2f}" if isinstance(value, float) and value < 100 else num(value)
        body.append([c["what"], c["target"], shown, "yes" if c["ok"] else "**no**"])
    return table(["target", "wanted", "measured", "met"], body, "lrrr")


def memory_table(profiles: Sequence[dict[str, Any]]) -> str:
    body = []
    for p in profiles:
        what = "retained finished job" if p["kind"] == "job" else "dead letter"
        if p.get("status") != "ok":
            reason = f"not run: {p.get('error')}"
            body.append([p["profile"], what, p.get("description", ""), num(p.get("count")), reason, ""])
            continue
        parts = ", ".join(f"{name} {num(size)}" for name, size in p.get("keys_bytes_per_item", {}).items())
        body.append(
            [
                p["profile"],
                what,
                f"{p['description']}; {' + '.join(p.get('middlewares', []))}",
                num(p["count"]),
                num(p["bytes_per_item"]),
                parts,
            ]
        )
    header = ["profile", "item", "jobs and middlewares", "items", "bytes/item", "by key family (MEMORY USAGE)"]
    return table(header, body, "lllrrl")


def latency_table(cells: Sequence[dict[str, Any]]) -> str:
    body = []
    for c in cells:
        if c.get("status") != "ok":
            reason = f"not run: {c.get('error')}"
            body.append([c["broker"], c["variant"], str(c.get("round")), reason, "", "", "", "", ""])
            continue
        lat, send = c["latency"], c["send"]
        body.append(
            [
                c["broker"],
                c["variant"],
                str(c["round"]),
                num(lat["samples"]),
                num(lat["p50_ms"], 1),
                num(lat["p90_ms"], 1),
                num(lat["p99_ms"], 1),
                num(send["p50_ms"], 2),
                num(send["p99_ms"], 2),
            ]
        )
    header = ["broker", "variant", "round", "samples", "p50 ms", "p90 ms", "p99 ms", "send() p50 ms", "send() p99 ms"]
    return table(header, body, "lll" + "r" * 6)


def listing_table(listings: Sequence[dict[str, Any]]) -> str:
    body = []
    for listing in listings:
        for q in listing.get("queries", []):
            lib, cli = q.get("library"), q.get("cli")
            cli_text = "-"
            if cli is not None:
                if cli.get("exit_code") == 0:
                    cli_text = num(cli["median_ms"])
                else:
                    cli_text = f"exit {cli['exit_code']}: {cli.get('error', '')}"
            body.append(
                [
                    f"{listing['what']} ({num(listing.get('records'))} records)",
                    q["query"],
                    num(lib["median_ms"], 1) if lib else "-",
                    num(lib["p90_ms"], 1) if lib else "-",
                    str(lib["returned"]) if lib else "-",
                    cli_text,
                ]
            )
        startup = listing.get("cli_startup")
        if startup:
            body.append([listing["what"], "`--version` (CLI start-up alone)", "-", "-", "-", num(startup["median_ms"])])
    return table(["over", "query", "library median ms", "library p90 ms", "returned", "CLI wall ms"], body, "llrrrr")


def render(results: dict[str, Any]) -> str:
    """The whole report."""
    meta = results.get("meta", {})
    settings = results.get("settings", {})
    versions = meta.get("versions", {})
    machine = meta.get("machine", {})
    git = versions.get("git") or {}
    out = ["# dramatiq-reliable: benchmark results", ""]
    if results.get("banner"):
        out += [f"> {results['banner']}", ""]
    out += [
        f"- **Date**: {meta.get('date', '?')} (run `{settings.get('run_id', '?')}`, "
        f"{num(results.get('duration_s', 0) / 60, 1)} min)",
        "- **Versions**: "
        + ", ".join(f"{name} {value}" for name, value in versions.items() if name != "git" and value)
        + (f"; git {git.get('commit')}{' (src modified)' if git.get('src_modified') else ''}" if git else ""),
        f"- **Machine**: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
        f"{num(machine.get('memory_gib'), 1)} GiB, {machine.get('kernel', '?')}; load average "
        f"{machine.get('loadavg_start')} at the start, {machine.get('loadavg_end')} at the end",
    ]
    parts = settings.get("parts") or [p for p in ("throughput", "latency", "memory", "listing") if results.get(p)]
    line = f"- **Settings**: parts {', '.join(parts)}; "
    if "throughput" in parts:
        line += (
            f"{num(settings.get('jobs'))} no-op jobs per measurement, rounds: {settings.get('rounds')}, "
            f"`--processes {settings.get('processes')} --threads {settings.get('threads')}`, "
        )
    line += f"brokers {', '.join(settings.get('brokers', []))}; the bundle is `dr.install` = "
    out += [line + (" + ".join(settings.get("bundle", [])) or "?"), ""]
    if settings.get("command"):
        out += [f"Command: `{settings['command']}`", ""]
    if results.get("skipped"):
        out += ["Skipped: " + "; ".join(f"{s['variant']} ({s['reason']})" for s in results["skipped"]), ""]
    summary = results.get("summary") or []
    if summary:
        out += [
            "## Throughput",
            "",
            'Medians over the rounds; "x bare" is the median of the per-round ratios to bare Dramatiq on the '
            'same broker. "spread" is (max - min) / median of jobs/s over the rounds. Store traffic is per '
            "job, over the workers' whole life (worker side) or the enqueue loop (enqueue side). \"others' CPU\" "
            "is the cores busy with anything but the workers, the harness and the servers they use, during "
            "the window: it should be near 0 for figures worth publishing.",
            "",
            throughput_table(summary),
            "",
        ]
    checks = results.get("checks") or []
    if checks:
        out += ["## Targets", "", checks_table(checks), ""]
    if results.get("memory"):
        out += ["## Redis memory", "", memory_table(results["memory"]), ""]
    if results.get("latency"):
        out += ["## Enqueue → start latency at low load", "", latency_table(results["latency"]), ""]
    if results.get("listing"):
        out += ["## Listing", "", listing_table(results["listing"]), ""]
    errors = [c for c in results.get("throughput", []) if c.get("status") == "error"]
    warnings = [c for c in results.get("throughput", []) if c.get("warning")]
    if errors or warnings:
        out += ["## Problems", ""]
        out += [f"- round {c['round']} {c['broker']} {c['variant']}: {c['error']}" for c in errors]
        out += [f"- round {c['round']} {c['broker']} {c['variant']}: {c['warning']}" for c in warnings]
        out.append("")
    return "\n".join(out)


def finish(results: dict[str, Any]) -> dict[str, Any]:
    """Add the summary and the target checks to a run's results."""
    results["summary"] = stats.summarize(results.get("throughput", []))
    results["checks"] = stats.checks(results["summary"], results.get("memory", []))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a run's results.json")
    parser.add_argument("--out", type=Path, help="write the Markdown here (default: print it)")
    args = parser.parse_args(argv)
    results = finish(json.loads(args.results.read_text()))
    text = render(results)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
