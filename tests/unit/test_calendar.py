"""Calendar: day types with holidays and make-up days, DST-correct local time."""

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfoNotFoundError

import pytest

from agent.config.calendar import Calendar

# China 2024: National Day golden week Oct 1-7, with make-up Sundays Sep 29 and Oct 12.
CN = Calendar(
    tz="Asia/Shanghai",
    holidays=frozenset(date(2024, 10, d) for d in range(1, 8)),
    extra_working_days=frozenset({date(2024, 9, 29), date(2024, 10, 12)}),
)
LONDON = Calendar(tz="Europe/London")


def test_day_types_and_precedence() -> None:
    assert CN.day_type(date(2024, 9, 27)) == "working"  # Friday
    assert CN.day_type(date(2024, 9, 28)) == "weekend"  # Saturday
    assert CN.day_type(date(2024, 9, 29)) == "makeup"  # Sunday, worked
    assert CN.day_type(date(2024, 10, 2)) == "holiday"  # Wednesday, off
    assert CN.day_type(date(2024, 10, 12)) == "makeup"  # Saturday, worked
    assert CN.is_working_day(date(2024, 9, 29))
    assert not CN.is_typical_day(date(2024, 9, 29))  # make-up days are not "normal"
    assert CN.is_typical_day(date(2024, 9, 27))
    assert not CN.is_working_day(date(2024, 10, 2))
    assert not CN.is_working_day(date(2024, 9, 28))


def test_custom_weekend() -> None:
    friday_saturday = Calendar(tz="Asia/Dubai", weekend=frozenset({4, 5}))
    assert not friday_saturday.is_working_day(date(2024, 3, 1))  # Friday
    assert friday_saturday.is_working_day(date(2024, 3, 3))  # Sunday


def test_rejects_bad_input() -> None:
    with pytest.raises(ZoneInfoNotFoundError):
        Calendar(tz="Mars/Olympus")
    with pytest.raises(ValueError, match="both holiday and working"):
        Calendar(holidays=frozenset({date(2024, 1, 1)}), extra_working_days={date(2024, 1, 1)})
    with pytest.raises(TypeError):
        Calendar(holidays={datetime(2024, 1, 1)})  # a datetime would never match a date
    with pytest.raises(ValueError, match="weekend"):
        Calendar(weekend=frozenset({7}))


def test_accepts_plain_sets_and_lists() -> None:
    cal = Calendar(holidays=[date(2024, 1, 1)])  # type: ignore[arg-type]
    assert cal.holidays == frozenset({date(2024, 1, 1)})


def test_at_is_the_same_clock_time_across_dst() -> None:
    # Europe/London: GMT (UTC+0) until Sun 31 Mar 2024 01:00 UTC, then BST (UTC+1).
    before = LONDON.at(date(2024, 3, 28), time(14))
    after = LONDON.at(date(2024, 4, 2), time(14))
    assert before == datetime(2024, 3, 28, 14, tzinfo=UTC).timestamp()
    assert after == datetime(2024, 4, 2, 13, tzinfo=UTC).timestamp()
    # October: BST until Sun 27 Oct 2024 01:00 UTC.
    assert LONDON.at(date(2024, 10, 25), time(14)) == datetime(2024, 10, 25, 13, tzinfo=UTC).timestamp()
    assert LONDON.at(date(2024, 10, 28), time(14)) == datetime(2024, 10, 28, 14, tzinfo=UTC).timestamp()


def test_day_bounds_on_dst_days() -> None:
    a, b = LONDON.day_bounds(date(2024, 3, 31))
    assert b - a == 23 * 3600
    a, b = LONDON.day_bounds(date(2024, 10, 27))
    assert b - a == 25 * 3600
    a, b = CN.day_bounds(date(2024, 3, 31))
    assert b - a == 24 * 3600


def test_local_date_and_days_before() -> None:
    # 23:30 UTC on 1 Apr is 00:30 BST on 2 Apr.
    ts = datetime(2024, 4, 1, 23, 30, tzinfo=UTC).timestamp()
    assert LONDON.local_date(ts) == date(2024, 4, 2)
    it = LONDON.days_before(date(2024, 3, 2), first_offset=2)
    assert [next(it) for _ in range(3)] == [date(2024, 2, 29), date(2024, 2, 28), date(2024, 2, 27)]


def test_calendar_from_the_site_config() -> None:
    from agent.config.model import CalendarConfig

    cfg = CalendarConfig.model_validate(
        {
            "holidays": ["2024-10-01", "2024-10-02"],
            "extra_working_days": ["2024-09-29"],
            "weekend": ["fri", "sat"],
        }
    )
    cal = cfg.calendar("Asia/Shanghai")
    assert cal.zone.key == "Asia/Shanghai"
    assert cal.day_type(date(2024, 10, 1)) == "holiday"
    assert cal.day_type(date(2024, 9, 29)) == "makeup"  # a Sunday, worked
    assert cal.day_type(date(2024, 9, 27)) == "weekend"  # Friday in this plant's week
    assert cal.day_type(date(2024, 9, 30)) == "working"  # Monday
    assert CalendarConfig().calendar("UTC").weekend == frozenset({5, 6})
    with pytest.raises(ValueError, match="both as holiday and as extra working day: 2024-10-01"):
        CalendarConfig.model_validate({"holidays": ["2024-10-01"], "extra_working_days": ["2024-10-01"]})
