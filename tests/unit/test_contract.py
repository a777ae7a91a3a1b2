"""Each contract rule both ways: accepted exactly at the limit, refused one past it, reason naming the rule."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.config.model import ContractConfig
from agent.events.contract import decide
from agent.events.model import DrEvent
from agent.settlement.ledger import Ledger, LedgerEntry

TZ = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 7, 1)

JIANGSU: dict[str, Any] = {
    "peak_kw": 1000,
    "band_pct": [5, 20],
    "allowed_hours": ["10:00", "15:00"],
    "min_events_per_year": 10,
    "default_below_events_per_year": 5,
    "programs": {
        "contracted": {"max_events_per_day": 2, "max_hours_per_day": 2, "min_notice_s": 3600},
        "realtime": {"max_events_per_day": 2, "max_event_duration_s": 1800, "max_days_per_year": 10},
    },
}


def contract(**over: Any) -> ContractConfig:
    return ContractConfig.model_validate({**JIANGSU, **over})


def at(hh: int, mm: int = 0, day: date = DAY) -> float:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=TZ).timestamp()


def ev(
    event_id: str,
    start: float,
    duration_s: float = 1800,
    program: str = "contracted",
    **extra: Any,
) -> DrEvent:
    body: dict[str, Any] = {
        "event_id": event_id,
        "program": program,
        "start": datetime.fromtimestamp(start, TZ).isoformat(),
        "duration_s": duration_s,
        "target": {"reduce_pct_of_peak": 10},
    }
    body.update(extra)
    return DrEvent.model_validate(body)


NOW = at(6)  # well ahead of the day's events: notice is never the issue unless a test makes it so


def check(
    e: DrEvent, accepted: list[DrEvent] | None = None, c: ContractConfig | None = None, now: float = NOW
):
    return decide(e, c or contract(), TZ, accepted or [], now)


# -- allowed hours -----------------------------------------------------------------------


def test_allowed_hours_inclusive_at_both_edges() -> None:
    d = check(ev("a", at(10), 3600))
    assert (d.opt, d.code) == ("in", "accepted")
    d = check(ev("b", at(14), 3600))  # ends exactly 15:00
    assert (d.opt, d.code) == ("in", "accepted")


@pytest.mark.parametrize(
    ("start", "dur", "shown"), [(at(9, 59), 600, "09:59-10:09"), (at(14, 31), 1800, "14:31-15:01")]
)
def test_allowed_hours_one_minute_past_refused(start: float, dur: float, shown: str) -> None:
    d = check(ev("a", start, dur))
    assert (d.opt, d.code) == ("out", "outside_allowed_hours")
    assert d.reason == f"outside_allowed_hours: {shown} is not within 10:00-15:00"


# -- contracted: at most 2 events and 2 hours a day ------------------------------------------


def test_daily_event_limit_second_accepted_third_refused() -> None:
    first = ev("c1", at(10), 1800)
    second = ev("c2", at(11), 1800)
    assert check(second, [first]).opt == "in"
    d = check(ev("c3", at(13), 1800), [first, second])
    assert (d.opt, d.code) == ("out", "daily_event_limit")
    assert d.reason == "daily_event_limit: 2 contracted events already on 2026-07-01 (the limit is 2)"


def test_daily_event_limit_counts_per_program_and_day() -> None:
    two = [ev("c1", at(10), 1800), ev("c2", at(11), 1800)]
    assert check(ev("r1", at(13), 900, "realtime"), two).opt == "in"
    assert check(ev("c3", at(11, 0, date(2026, 7, 2)), 1800), two).opt == "in"


def test_daily_hours_limit_exactly_two_hours_accepted_one_second_more_refused() -> None:
    first = ev("c1", at(10), 3600)
    assert check(ev("c2", at(12), 3600), [first]).opt == "in"
    d = check(ev("c2", at(12), 3601), [first])
    assert (d.opt, d.code) == ("out", "daily_hours_limit")
    assert d.reason.startswith("daily_hours_limit: 1.00 h of contracted events already on 2026-07-01")
    assert "the limit is 2 h" in d.reason


def test_min_notice_exact_accepted_one_second_short_refused() -> None:
    e = ev("c1", at(11), 1800)
    assert check(e, now=at(10)).opt == "in"
    d = check(e, now=at(10) + 1)
    assert (d.opt, d.code) == ("out", "insufficient_notice")
    assert d.reason == "insufficient_notice: 3599 s notice, the contract asks 3600 s for contracted"


# -- real-time: 30 minutes each, 2 a day, 10 days a year -------------------------------------


def test_realtime_duration_30_min_accepted_one_second_more_refused() -> None:
    assert check(ev("r", at(11), 1800, "realtime")).opt == "in"
    d = check(ev("r", at(11), 1801, "realtime"))
    assert (d.opt, d.code) == ("out", "event_too_long")
    assert d.reason == "event_too_long: 1801 s exceeds 1800 s for realtime"


def test_realtime_two_a_day() -> None:
    two = [ev("r1", at(10), 900, "realtime"), ev("r2", at(11), 900, "realtime")]
    assert check(two[1], two[:1]).opt == "in"
    d = check(ev("r3", at(12), 900, "realtime"), two)
    assert d.code == "daily_event_limit" and "2 realtime events already" in d.reason


def test_realtime_ten_days_a_year() -> None:
    nine = [ev(f"r{i}", at(11, 0, date(2026, 8, 1) + timedelta(days=i)), 900, "realtime") for i in range(9)]
    assert check(ev("r10", at(11), 900, "realtime"), nine).opt == "in"
    ten = [*nine, ev("r10", at(11, 0, date(2026, 9, 1)), 900, "realtime")]
    d = check(ev("r11", at(11), 900, "realtime"), ten)
    assert (d.opt, d.code) == ("out", "yearly_day_limit")
    assert d.reason == "yearly_day_limit: 10 realtime event days already in 2026 (the limit is 10)"
    # A second event on a day already counted adds no day.
    assert check(ev("r11", at(14, 0, date(2026, 9, 1)), 900, "realtime"), ten).opt == "in"
    # Last year's days do not count.
    assert check(ev("r11", at(11, 0, date(2027, 1, 4)), 900, "realtime"), ten).opt == "in"


def test_yearly_event_limit() -> None:
    c = contract(programs={"contracted": {"max_events_per_year": 2}})
    two = [ev("c1", at(10, 0, date(2026, 8, 3))), ev("c2", at(10, 0, date(2026, 9, 2)))]
    assert check(two[1], two[:1], c).opt == "in"
    d = check(ev("c3", at(11)), two, c)
    assert d.code == "yearly_event_limit" and "2 contracted events already in 2026" in d.reason


# -- blackout dates and the site's must-run windows --------------------------------------------


def test_blackout_date() -> None:
    c = contract(blackout_dates=["2026-07-01"])
    d = check(ev("c", at(11)), c=c)
    assert (d.opt, d.code) == ("out", "blackout_date")
    assert d.reason == "blackout_date: 2026-07-01 is a blackout date in the contract"
    assert check(ev("c", at(11, 0, date(2026, 7, 2))), c=c).opt == "in"


def test_must_run_window_touching_is_fine_overlapping_is_refused() -> None:
    c = contract(must_run=[{"name": "line-2 curing", "hours": ["12:00", "13:00"], "weekdays": ["wed"]}])
    assert check(ev("a", at(11), 3600), c=c).opt == "in"  # ends 12:00 exactly
    assert check(ev("b", at(13), 3600), c=c).opt == "in"  # starts 13:00 exactly
    d = check(ev("c", at(11, 1), 3600), c=c)
    assert (d.opt, d.code) == ("out", "must_run")
    assert "'line-2 curing' (12:00-13:00 on 2026-07-01) must not be disturbed" in d.reason
    # 2026-07-02 is a Thursday: the window does not apply.
    assert check(ev("d", at(12, 0, date(2026, 7, 2))), c=c).opt == "in"


# -- band and partial opt-in ------------------------------------------------------------------


def test_band_top_exact_accepted_above_is_partial() -> None:
    d = check(ev("a", at(11), target={"reduce_kw": 200}))
    assert (d.opt, d.code, d.committed_kw, d.partial) == ("in", "accepted", 200, False)
    d = check(ev("a", at(11), target={"reduce_kw": 250}))
    assert (d.opt, d.code, d.committed_kw, d.partial) == ("in", "partial", 200, True)
    assert d.reason.startswith("partial: 250 kW asked, the contract band tops at 200 kW (20 % of peak)")


def test_below_band_commits_its_minimum() -> None:
    d = check(ev("a", at(11), target={"reduce_kw": 30}))
    assert (d.opt, d.committed_kw) == ("in", 50)
    assert "below the band" in d.reason


def test_intervals_commit_per_interval_and_flag_partial() -> None:
    e = ev(
        "m",
        at(11),
        3600,
        intervals=[
            {"duration_s": 1200, "target": {"reduce_kw": 100}},
            {"duration_s": 1200, "target": {"reduce_kw": 300}},
            {"duration_s": 1200, "target": {"reduce_pct_of_peak": 15}},
        ],
    )
    d = check(e)
    assert d.intervals_kw == (100, 200, 150)
    assert d.partial and d.committed_kw == 200
    assert "in interval 1" in d.reason


# -- overlaps resolved by priority -----------------------------------------------------------


def test_overlap_equal_priority_first_stays() -> None:
    d = check(ev("b", at(11, 15)), [ev("a", at(11))])
    assert (d.opt, d.code) == ("out", "overlapping_event")
    assert "overlaps a (priority 0)" in d.reason


def test_overlap_higher_priority_supersedes_and_frees_its_slot() -> None:
    low = ev("low", at(11), priority=5)
    other = ev("other", at(13), priority=5)
    d = check(ev("high", at(11, 15), priority=1), [low, other])
    assert (d.opt, d.code, d.supersedes) == ("in", "accepted", ("low",))
    assert "supersedes low (lower priority)" in d.reason
    # Back to back is not an overlap.
    assert check(ev("next", at(11, 30)), [low]).opt == "in"


def test_past_event_refused() -> None:
    d = check(ev("old", at(5), 1800))
    assert (d.opt, d.code) == ("out", "event_in_past")


def test_ledger_counts_cancelled_running_event_only_for_its_run() -> None:
    entries = [
        LedgerEntry("c1", "contracted", at(10), at(10, 30), "cancelled"),
        LedgerEntry("c2", "contracted", at(11), at(12), "completed"),
    ]
    ledger = Ledger(contract(), TZ, entries)
    assert ledger.day_usage("contracted", DAY) == (2, pytest.approx(1.5))
    d = decide(ev("c3", at(13), 1800), contract(), TZ, [], NOW, ledger=ledger)
    assert d.code == "daily_event_limit"
