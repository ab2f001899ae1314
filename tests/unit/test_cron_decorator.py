"""``@dr.cron``: expressions, time zones, arguments and registries, checked at import."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from itertools import pairwise
from zoneinfo import ZoneInfo

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

import dramatiq_reliable as dr
import dramatiq_reliable.actors
from dramatiq_reliable.actors._crontab import fields_of, weekdays


def ms(*args: int, tz: str = "UTC") -> int:
    return int(datetime(*args, tzinfo=ZoneInfo(tz)).timestamp() * 1000)  # type: ignore[misc]


def utc(fire_ms: int) -> str:
    return datetime.fromtimestamp(fire_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def declare(broker: StubBroker, expression: str, *, name: str = "job", **options: object) -> dr.Schedule:
    @dr.cron(expression, **options)  # type: ignore[arg-type]
    @dramatiq.actor(broker=broker, actor_name=name)
    def job(n: int = 0) -> None: ...

    schedule = dr.registry_of(broker).get(options.get("name", name))  # type: ignore[arg-type]
    assert schedule is not None
    return schedule


def test_five_fields_fire_on_the_minute_and_six_on_the_second() -> None:
    broker = StubBroker()
    daily = declare(broker, "0 2 * * *", name="daily")
    assert [utc(f) for f in daily.fires_between(ms(2024, 5, 1), ms(2024, 5, 3))] == [
        "2024-05-01 02:00:00",
        "2024-05-02 02:00:00",
    ]
    fast = declare(broker, "*/20 * * * * *", name="fast")
    assert [utc(f) for f in fast.fires_between(ms(2024, 5, 1), ms(2024, 5, 1, 0, 1))] == [
        "2024-05-01 00:00:20",
        "2024-05-01 00:00:40",
        "2024-05-01 00:01:00",
    ]
    hourly = declare(broker, "@hourly", name="hourly")
    assert hourly.next_fire_after(ms(2024, 5, 1, 10, 30)) == ms(2024, 5, 1, 11)


def test_weekdays_count_from_sunday_as_crontab_does() -> None:
    # Given crontab's numbering (0 and 7 are Sunday), unlike APScheduler's from_crontab (0 = Monday)
    assert weekdays("0") == "sun" and weekdays("7") == "sun"
    assert weekdays("1-5") == "mon,tue,wed,thu,fri"
    assert weekdays("*/2") == "sun,tue,thu,sat"
    assert weekdays("5-7") == "sun,fri,sat"
    assert weekdays("mon,WED") == "mon,wed"
    # When a job is declared for Sundays, Then it fires on a Sunday (2024-05-05)
    sunday = declare(StubBroker(), "0 9 * * 0")
    assert utc(sunday.next_fire_after(ms(2024, 5, 1))) == "2024-05-05 09:00:00"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("61 * * * *", "Error validating expression '61'"),
        ("* * * *", "expected 5 fields"),
        ("* * * * * * *", "got 7"),
        ("0 0 1 * 1", "both day-of-month and day-of-week are restricted"),
        ("0 0 * * 8", "bad day-of-week '8'"),
        ("0 0 30 2 *", "never fires"),
        ("", "empty cron expression"),
    ],
)
def test_a_bad_expression_fails_at_import_naming_the_actor(expression: str, says: str) -> None:
    with pytest.raises(dr.ConfigurationError) as info:
        declare(StubBroker(), expression, name="nightly_report")
    assert "actor 'nightly_report'" in str(info.value)
    assert says in str(info.value)
    assert "\n" not in str(info.value)


def test_an_unknown_timezone_fails_at_import_naming_the_actor() -> None:
    with pytest.raises(dr.ConfigurationError, match=r"actor 'report'.*unknown timezone 'Europe/Berln'"):
        declare(StubBroker(), "0 2 * * *", name="report", timezone="Europe/Berln")


def test_arguments_are_checked_against_the_actor_and_for_json() -> None:
    with pytest.raises(dr.ConfigurationError, match=r"actor 'job'.*do not fit the actor"):
        declare(StubBroker(), "0 2 * * *", args=(1, 2))
    with pytest.raises(dr.ArgumentsError, match="not JSON-serializable"):
        declare(StubBroker(), "0 2 * * *", kwargs={"n": object()})
    with pytest.raises(dr.ConfigurationError, match="args must be a tuple"):
        declare(StubBroker(), "0 2 * * *", args="1")  # type: ignore[arg-type]


def test_cron_must_be_stacked_on_an_actor() -> None:
    with pytest.raises(dr.ConfigurationError, match="must be stacked on a Dramatiq actor"):

        @dr.cron("0 2 * * *")  # type: ignore[type-var]
        def plain() -> None: ...


def test_schedules_live_on_the_broker_of_their_actor() -> None:
    # Given two brokers with actors of the same name
    first, second = StubBroker(), StubBroker()
    declare(first, "0 2 * * *", args=(1,))
    declare(second, "0 3 * * *")
    # Then each broker's registry holds its own schedule only
    assert [(s.name, s.expression, s.args) for s in dr.registry_of(first)] == [("job", "0 2 * * *", (1,))]
    assert [s.expression for s in dr.registry_of(second)] == ["0 3 * * *"]
    assert len(dr.registry_of(StubBroker())) == 0


def test_one_actor_can_have_several_named_schedules_but_names_are_unique() -> None:
    broker = StubBroker()

    @dr.cron("0 2 * * *", name="nightly", kwargs={"n": 1})
    @dr.cron("0 * * * *", name="hourly")
    @dramatiq.actor(broker=broker)
    def report(n: int = 0) -> None: ...

    assert [s.name for s in dr.registry_of(broker)] == ["hourly", "nightly"]
    with pytest.raises(dr.ConfigurationError, match="a schedule of that name already exists"):
        dr.cron("*/5 * * * *", name="hourly")(report)


def test_job_ids_are_derived_from_name_and_fire_time() -> None:
    schedule = declare(StubBroker(), "* * * * *")
    fire = ms(2024, 5, 1, 12, 0)
    assert schedule.job_id(fire) == declare(StubBroker(), "*/5 * * * *").job_id(fire)
    assert schedule.job_id(fire) != schedule.job_id(fire + 60_000)
    other = declare(StubBroker(), "* * * * *", name="other")
    assert other.job_id(fire) != schedule.job_id(fire)


# -- daylight saving time (Europe/Berlin: 2024-03-31 02:00 CET -> 03:00 CEST; 2024-10-27 03:00 CEST -> 02:00 CET)


def test_spring_forward_a_missing_local_time_fires_once_an_hour_later() -> None:
    # Given a daily 02:30 job in Berlin; 02:30 does not exist on 2024-03-31
    daily = declare(StubBroker(), "30 2 * * *", timezone="Europe/Berlin")
    fires = daily.fires_between(ms(2024, 3, 29, 12), ms(2024, 4, 2))
    # Then it fires once that day, at 01:30 UTC (03:30 summer time), and at 02:30 on the other days
    assert [utc(f) for f in fires] == [
        "2024-03-30 01:30:00",  # 02:30 CET
        "2024-03-31 01:30:00",  # the instant 02:30 CET would have been = 03:30 CEST
        "2024-04-01 00:30:00",  # 02:30 CEST
    ]
    # And an hourly job goes on every 60 minutes of real time across the change
    hourly = declare(StubBroker(), "0 * * * *", timezone="Europe/Berlin")
    fires = hourly.fires_between(ms(2024, 3, 30, 23), ms(2024, 3, 31, 3))
    assert [b - a for a, b in pairwise(fires)] == [3_600_000] * (len(fires) - 1)
    assert len(fires) == 4


def test_fall_back_a_fixed_local_time_fires_once_and_wildcards_follow_real_time() -> None:
    # Given a daily 02:30 job in Berlin; 02:30 happens twice on 2024-10-27
    daily = declare(StubBroker(), "30 2 * * *", timezone="Europe/Berlin")
    fires = daily.fires_between(ms(2024, 10, 26, 12), ms(2024, 10, 28, 12))
    # Then it fires at the first 02:30 only (00:30 UTC), once per day
    assert [utc(f) for f in fires] == ["2024-10-27 00:30:00", "2024-10-28 01:30:00"]
    local = [daily.local_time(f) for f in fires]
    assert [(t.hour, t.minute) for t in local] == [(2, 30), (2, 30)]

    # And a job every 30 minutes fires in both passes of the repeated hour (real time)
    half_hourly = declare(StubBroker(), "*/30 * * * *", timezone="Europe/Berlin")
    fires = half_hourly.fires_between(ms(2024, 10, 26, 23, 45), ms(2024, 10, 27, 2))
    assert [utc(f) for f in fires] == [
        "2024-10-27 00:00:00",  # 02:00 CEST
        "2024-10-27 00:30:00",  # 02:30 CEST
        "2024-10-27 01:00:00",  # 02:00 CET
        "2024-10-27 01:30:00",  # 02:30 CET
        "2024-10-27 02:00:00",  # 03:00 CET
    ]
    # And each fire time is its own tick, with its own job id
    assert len({half_hourly.job_id(f) for f in fires}) == len(fires)


def test_fields_of_keeps_everything_else_for_apscheduler() -> None:
    assert fields_of("15 10 L * *")["day"] == "L"
    assert fields_of("0 0 1 jan *")["month"] == "jan"
    assert fields_of("@weekly")["day_of_week"] == "sun"


@pytest.mark.parametrize(
    ("expression", "zone", "start"),
    [
        ("30 2 * * *", "Europe/Berlin", datetime(2024, 10, 26, 12, tzinfo=timezone.utc)),
        ("30 * * * *", "Europe/Helsinki", datetime(2017, 10, 28, 22, tzinfo=timezone.utc)),  # apscheduler#1021
        ("0 */2 * * *", "Europe/Berlin", datetime(2024, 10, 26, 20, tzinfo=timezone.utc)),  # apscheduler#980
    ],
)
def test_the_trigger_always_moves_forward_across_fall_back(expression: str, zone: str, start: datetime) -> None:
    # Given the next fire time asked after the previous one, in the trigger's zone or in UTC
    schedule = declare(StubBroker(), expression, timezone=zone)
    for as_utc in (False, True):
        fire = schedule.trigger.get_next_fire_time(None, start)
        seen = [fire]
        for _ in range(30):
            previous = fire.astimezone(timezone.utc) if as_utc else fire
            fire = schedule.trigger.get_next_fire_time(previous, previous)
            seen.append(fire)
        # Then every answer is strictly later than the one before (APScheduler 3.11's own can repeat one)
        instants = [f.timestamp() for f in seen]
        assert instants == sorted(set(instants))


def test_without_apscheduler_cron_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given APScheduler cannot be imported (and the trigger module was not imported yet)
    monkeypatch.setitem(sys.modules, "apscheduler.triggers.cron", None)
    monkeypatch.delitem(sys.modules, "dramatiq_reliable.actors._crontab", raising=False)
    monkeypatch.delattr(dramatiq_reliable.actors, "_crontab", raising=False)
    # Then declaring a schedule fails at import, naming the actor and the extra
    with pytest.raises(dr.ConfigurationError, match=r"actor 'job'.*install dramatiq-reliable\[cron\]"):
        declare(StubBroker(), "0 2 * * *")
