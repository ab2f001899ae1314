"""Medians, ratios to bare and percentiles over the measurements of a run (no I/O here)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

#: Per-cell figures summarised per (broker, variant): ``name -> dotted path in a cell``.
METRICS = {
    "jobs_per_s": "process.jobs_per_s",
    "cpu_us": "process.worker_cpu_us_per_job",
    "enqueue_per_s": "enqueue.jobs_per_s",
    "store_round_trips": "store.round_trips",
    "store_script_calls": "store.script_calls",
    "store_commands": "store.commands",
    "enqueue_round_trips": "enqueue.store.round_trips",
    "broker_round_trips": "broker_redis.round_trips",
    "broker_commands": "broker_redis.commands",
    "machine_busy_pct": "process.machine_busy_pct",
    "others_cores": "process.others_cores",
}
#: Figures compared with bare Dramatiq of the same round (paired ratios).
RATIOS = {"jobs_per_s": "ratio", "cpu_us": "cpu_ratio", "enqueue_per_s": "enqueue_ratio"}


def dig(data: Any, path: str) -> Any:
    """``dig(cell, "process.jobs_per_s")``; ``None`` if any step is missing."""
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not ``None`` (``None`` if there are none)."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0-1) of ``values``, interpolated between closest ranks."""
    if not values:
        return None
    if not 0 <= q <= 1:
        raise ValueError(f"q must be within [0, 1], not {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def spread(values: Iterable[float | None]) -> float | None:
    """``(max - min) / median``: how far apart the rounds were (0.03 = 3 %); ``None`` under 2 values."""
    present = [v for v in values if v is not None]
    mid = median(present)
    if len(present) < 2 or not mid:
        return None
    return (max(present) - min(present)) / mid


def paired_ratios(cells: Sequence[dict[str, Any]], broker: str, variant: str, path: str) -> list[float]:
    """``variant / bare`` of one figure, per round on ``broker`` (rounds missing either are left out)."""
    ok = [c for c in cells if c.get("status") == "ok" and c["broker"] == broker]
    bare = {c["round"]: dig(c, path) for c in ok if c["variant"] == "bare"}
    out = []
    for cell in ok:
        if cell["variant"] != variant:
            continue
        value, base = dig(cell, path), bare.get(cell["round"])
        if value is not None and base:
            out.append(value / base)
    return out


def summarize(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (broker, variant), in the order first seen: medians over rounds, ratios to bare."""
    keys: list[tuple[str, str]] = []
    for cell in cells:
        key = (cell["broker"], cell["variant"])
        if key not in keys:
            keys.append(key)
    rows = []
    for broker, variant in keys:
        mine = [c for c in cells if c["broker"] == broker and c["variant"] == variant]
        ok = [c for c in mine if c.get("status") == "ok"]
        row: dict[str, Any] = {"broker": broker, "variant": variant, "rounds": len(ok)}
        if not ok:
            reasons = sorted({str(c.get("error") or c.get("status")) for c in mine})
            row["note"] = "; ".join(reasons)
            rows.append(row)
            continue
        for name, path in METRICS.items():
            row[name] = median(dig(c, path) for c in ok)
        row["jobs_per_s_spread"] = spread(dig(c, METRICS["jobs_per_s"]) for c in ok)
        for name, ratio_name in RATIOS.items():
            row[ratio_name] = median(paired_ratios(cells, broker, variant, METRICS[name]))
        row["middlewares"] = ok[0].get("middlewares", [])
        rows.append(row)
    return rows


def latency_summary(samples_ms: Sequence[float]) -> dict[str, Any]:
    """p50, p90, p99 and max of enqueue→start latencies (ms)."""
    return {
        "samples": len(samples_ms),
        "p50_ms": percentile(samples_ms, 0.50),
        "p90_ms": percentile(samples_ms, 0.90),
        "p99_ms": percentile(samples_ms, 0.99),
        "max_ms": max(samples_ms) if samples_ms else None,
    }


#: The targets the benchmark checks.
TARGET_RATIO = 0.90
TARGET_ROUND_TRIPS = 2.0
TARGET_BYTES_PER_JOB = 1024


def checks(rows: Sequence[dict[str, Any]], memory: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets, each with the measured value and whether it is met."""
    out: list[dict[str, Any]] = []
    for row in rows:
        if row.get("ratio") is None:
            continue
        if row["variant"] in ("bundle", "jobstate+idempotency"):
            out.append(
                {
                    "what": f"{row['variant']} / bare jobs/s on {row['broker']}",
                    "target": f">= {TARGET_RATIO:.2f}",
                    "value": row["ratio"],
                    "ok": row["ratio"] >= TARGET_RATIO,
                }
            )
        if row["variant"] == "bundle" and row.get("store_round_trips") is not None:
            out.append(
                {
                    "what": f"store round trips per job, worker side, bundle on {row['broker']}",
                    "target": f"<= {TARGET_ROUND_TRIPS:g}",
                    "value": row["store_round_trips"],
                    "ok": row["store_round_trips"] <= TARGET_ROUND_TRIPS,
                }
            )
    for profile in memory:
        if profile.get("kind") == "job" and profile.get("bytes_per_item") is not None:
            out.append(
                {
                    "what": f"Redis bytes per retained job ({profile['profile']})",
                    "target": f"<= {TARGET_BYTES_PER_JOB}",
                    "value": profile["bytes_per_item"],
                    "ok": profile["bytes_per_item"] <= TARGET_BYTES_PER_JOB,
                }
            )
    return out
