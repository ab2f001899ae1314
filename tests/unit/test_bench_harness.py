"""The benchmark harness's own logic: medians, paired ratios, targets, counters, report, options.

No timings here: these check the arithmetic and formatting the published figures rest on.
"""

from __future__ import annotations

from typing import Any

import pytest
from bench import memory, report, run, stats, variants
from bench.servers import Counters, traffic
from dramatiq.brokers.stub import StubBroker

import dramatiq_reliable as dr


def cell(broker: str, variant: str, rnd: int, jobs_s: float, cpu: float, **extra: Any) -> dict[str, Any]:
    return {
        "broker": broker,
        "variant": variant,
        "round": rnd,
        "status": "ok",
        "process": {"jobs_per_s": jobs_s, "worker_cpu_us_per_job": cpu},
        "enqueue": {"jobs_per_s": 5000.0, "store": None},
        **extra,
    }


def test_percentile_interpolates_between_ranks() -> None:
    assert stats.percentile([1, 2, 3, 4], 0.5) == 2.5
    assert stats.percentile([10], 0.99) == 10
    assert stats.percentile(list(range(101)), 0.99) == pytest.approx(99)
    assert stats.percentile([], 0.5) is None
    with pytest.raises(ValueError):
        stats.percentile([1], 1.5)


def test_median_and_spread_ignore_missing_values() -> None:
    assert stats.median([3, None, 1, 2]) == 2
    assert stats.median([None]) is None
    assert stats.spread([90, 100, 110]) == pytest.approx(0.2)
    assert stats.spread([100]) is None  # one round says nothing about noise


def test_ratios_pair_each_round_with_bare_of_the_same_round_and_broker() -> None:
    # Given two rounds on two brokers, the machine slower in round 2
    cells = [
        cell("redis", "bare", 1, 1000, 300),
        cell("redis", "bundle", 1, 900, 330),
        cell("redis", "bare", 2, 800, 300),
        cell("redis", "bundle", 2, 760, 345),
        cell("rabbitmq", "bare", 1, 2000, 250),
        cell("rabbitmq", "bundle", 1, 1000, 500),
        {"broker": "redis", "variant": "watchdog", "round": 1, "status": "skipped", "error": "no Watchdog yet"},
        {"broker": "redis", "variant": "bundle", "round": 3, "status": "error", "error": "boom"},
    ]

    # When they are summarised
    rows = {(r["broker"], r["variant"]): r for r in stats.summarize(cells)}

    # Then each ratio is the median of per-round ratios, not a ratio of medians
    bundle = rows[("redis", "bundle")]
    assert bundle["ratio"] == pytest.approx((0.9 + 0.95) / 2)
    assert bundle["cpu_ratio"] == pytest.approx((1.1 + 1.15) / 2)
    assert bundle["jobs_per_s"] == pytest.approx(830)
    assert bundle["rounds"] == 2  # the failed round is left out
    assert rows[("redis", "bare")]["ratio"] == 1.0
    assert rows[("rabbitmq", "bundle")]["ratio"] == 0.5
    # And a variant that never ran says why
    assert rows[("redis", "watchdog")]["rounds"] == 0
    assert rows[("redis", "watchdog")]["note"] == "no Watchdog yet"


def test_checks_compare_with_the_targets() -> None:
    rows = [
        {"broker": "redis", "variant": "bundle", "ratio": 0.93, "store_round_trips": 0.7},
        {"broker": "rabbitmq", "variant": "bundle", "ratio": 0.85, "store_round_trips": 2.5},
        {"broker": "redis", "variant": "jobstate", "ratio": 0.5, "store_round_trips": 0.4},
    ]
    memory_rows = [
        {"kind": "job", "profile": "plain", "bytes_per_item": 900.0},
        {"kind": "job", "profile": "tracked", "bytes_per_item": 1351.0},
        {"kind": "dead", "profile": "dead", "bytes_per_item": 5000.0},
    ]
    verdicts = {c["what"]: c["ok"] for c in stats.checks(rows, memory_rows)}
    assert verdicts == {
        "bundle / bare jobs/s on redis": True,
        "store round trips per job, worker side, bundle on redis": True,
        "bundle / bare jobs/s on rabbitmq": False,
        "store round trips per job, worker side, bundle on rabbitmq": False,
        "Redis bytes per retained job (plain)": True,
        "Redis bytes per retained job (tracked)": False,
    }


def test_traffic_counts_per_job_and_leaves_the_harness_out() -> None:
    before = Counters(at=0, calls={"evalsha": 10, "get": 5, "info": 3}, reads=100, cpu=1.0)
    after = Counters(at=1, calls={"evalsha": 60, "get": 125, "set": 100, "info": 4, "incrby": 100}, reads=161, cpu=1.02)
    t = traffic(before, after, 100, own_reads=1 + 10, own_calls={"get": 10, "incrby": 100})
    assert t.script_calls == 0.5
    assert t.round_trips == 0.5  # 61 requests, 11 of them the harness's
    assert t.by_command == {"evalsha": 0.5, "get": 1.1, "set": 1.0}
    assert t.commands == pytest.approx(2.6)
    assert t.cpu_us == pytest.approx(200)


def test_key_families_group_ids_away() -> None:
    assert memory.family("dr:job:abc-123", "dr:") == "job"
    assert memory.family("dr:jobs:status:done", "dr:") == "jobs:status"
    assert memory.family("dr:jobs:key:order_id=7", "dr:") == "jobs:key"
    assert memory.family("dr:idem:done:send_invoice:invoice:7", "dr:") == "idem:done"


def test_rotate_changes_the_order_of_variants_each_round() -> None:
    names = ["bare", "jobstate", "bundle"]
    assert [run.rotate(names, r) for r in range(4)] == [
        ["bare", "jobstate", "bundle"],
        ["jobstate", "bundle", "bare"],
        ["bundle", "bare", "jobstate"],
        ["bare", "jobstate", "bundle"],
    ]


def test_options_take_the_preset_and_always_measure_bare() -> None:
    args = run.parse(["--quick", "--jobs", "5000", "--variants", "jobstate"])
    assert args.jobs == 5000
    assert args.rounds == run.PRESETS["quick"]["rounds"]
    assert args.variants == ["bare", "jobstate"]
    full = run.parse([])
    assert full.jobs == 20_000 and full.variants == variants.DEFAULT


def test_unknown_names_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--variants", "jobstat"], ["--brokers", "kafka"], ["--memory-profiles", "huge"]):
        with pytest.raises(SystemExit) as exc:
            run.parse(argv)
        assert exc.value.code == 2
    assert "unknown variant 'jobstat'" in capsys.readouterr().err


def test_a_variant_whose_middleware_is_missing_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(dr, "JobState")
    assert variants.missing("jobstate") == "dramatiq_reliable has no JobState yet"
    assert variants.missing("jobstate+idempotency") == "dramatiq_reliable has no JobState yet"
    assert variants.missing("bare") is None
    monkeypatch.setattr(dr, "Watchdog", object, raising=False)
    assert variants.missing("watchdog") is None


def test_variants_add_their_middlewares_as_a_user_would() -> None:
    store = dr.MemoryStore()
    broker = StubBroker()
    assert variants.apply("bare", broker, None) == []
    assert variants.apply("jobstate+idempotency", broker, store) == ["JobState", "Idempotency"]
    assert [type(m).__name__ for m in broker.middleware[-2:]] == ["JobState", "Idempotency"]
    bundled = StubBroker()
    assert variants.apply("bundle", bundled, store) == variants.bundle_members()


def test_report_shows_figures_ratios_and_what_did_not_run() -> None:
    results = report.finish(
        {
            "meta": {"date": "2026-11-21T10:00:00+00:00", "versions": {"dramatiq": "2.2.1"}, "machine": {"cores": 2}},
            "settings": {"run_id": "abc", "jobs": 20000, "rounds": 3, "brokers": ["redis"], "bundle": ["JobState"]},
            "skipped": [{"variant": "watchdog", "reason": "dramatiq_reliable has no Watchdog yet"}],
            "throughput": [
                cell("redis", "bare", 1, 3863.4, 327),
                cell("redis", "bundle", 1, 3500, 360, store={"round_trips": 0.68, "script_calls": 0.67}),
            ],
            "memory": [
                {"profile": "dead", "kind": "dead", "count": 10, "status": "skipped", "error": "no DeadLetters"}
            ],
            "duration_s": 600,
        }
    )
    text = report.render(results)
    assert "| redis | bare | 3,863 | 1.00x | 327 | 1.00x | - |" in text
    assert "| redis | bundle | 3,500 | 0.91x | 360 | 1.10x | - |" in text
    assert "| 0.68 | 0.67 |" in text
    assert "| bundle / bare jobs/s on redis | >= 0.90 | 0.91 | yes |" in text
    assert "Skipped: watchdog (dramatiq_reliable has no Watchdog yet)" in text
    assert "not run: no DeadLetters" in text
    assert "(run `abc`, 10.0 min)" in text
