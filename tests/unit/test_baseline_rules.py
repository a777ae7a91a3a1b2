"""The programmes' rules to the letter, on hand-made histories (docs/baselines.md cites each rule).

Fixture: Europe/London, hourly, May-June 2024 (BST throughout unless a test says otherwise).
Working days draw 500 kW at every hour, weekend days 200 kW, holidays 150 kW, unless a test
changes a day; so a baseline built from the wrong kind of day is off by hundreds of kW.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config.calendar import Calendar
from agent.settlement.baseline import (
    METHODS,
    EventWindow,
    LoadSeries,
    beijing_5of10,
    caiso_10in10,
    jiangsu_5day,
    pjm_high4of5,
    realtime_15min,
    realtime_baseline,
    realtime_window,
    regression,
)
from agent.settlement.history import control_periods

LON = ZoneInfo("Europe/London")
HOLIDAYS = frozenset({date(2024, 5, 27), date(2024, 5, 6)})  # bank holidays (Mondays)
CAL = Calendar(tz="Europe/London", holidays=HOLIDAYS)


def build(first: date, last: date, f: Callable[[datetime], float | None], step_s: int = 3600) -> LoadSeries:
    t0 = datetime.combine(first, time(0), tzinfo=LON).timestamp()
    t1 = datetime.combine(last, time(0), tzinfo=LON).timestamp()
    return LoadSeries(
        t0,
        step_s,
        [f(datetime.fromtimestamp(t0 + i * step_s, LON)) for i in range(round((t1 - t0) / step_s))],
    )


def plant(
    cal: Calendar = CAL, changes: dict[date, float | None] | None = None
) -> Callable[[datetime], float | None]:
    changes = changes or {}

    def f(lt: datetime) -> float | None:
        d = lt.date()
        if d in changes:
            return changes[d]
        kind = cal.day_type(d)
        return {"working": 500.0, "makeup": 500.0, "weekend": 200.0, "holiday": 150.0}[kind]

    return f


def window(d: date, h0: int = 14, h1: int = 16, notice: date | None = None) -> EventWindow:
    return EventWindow(
        datetime.combine(d, time(h0), tzinfo=LON),
        datetime.combine(d, time(h1), tzinfo=LON),
        notice_date=notice,
    )


SERIES = build(date(2024, 4, 1), date(2024, 7, 1), plant())


# -- normal production days (Jiangsu, Beijing) ------------------------------------------------


def test_jiangsu_replaces_a_weekday_shutdown_and_a_thin_day() -> None:
    # Event Thu 13 Jun, notice Wed 12 Jun. The 5 working days before: 11 10 7 6 5 Jun.
    # 10 Jun the plant was shut (20 kW all day, unmarked: caught by the 50 % screen);
    # 6 Jun it ran at 240 kW (48 % of the typical 500: abnormal too).
    s = build(
        date(2024, 4, 1), date(2024, 7, 1), plant(changes={date(2024, 6, 10): 20.0, date(2024, 6, 6): 240.0})
    )
    ev = window(date(2024, 6, 13), notice=date(2024, 6, 12))
    r = jiangsu_5day(s, ev, CAL)
    assert r.available and r.curve_kw == pytest.approx([500.0, 500.0])
    assert r.days_used == [date(2024, 6, d) for d in (11, 7, 5, 4, 3)]
    assert r.skipped_days[date(2024, 6, 10)].startswith("abnormal day: event-window load 20.0 kW under 50%")
    assert "abnormal day" in r.skipped_days[date(2024, 6, 6)]
    # The screen off: both days count and the site is under-credited by (480 + 260) / 5 = 148 kW.
    off = jiangsu_5day(s, ev, CAL, min_day_share=None)
    assert off.curve_kw == pytest.approx([352.0, 352.0])
    # A day at 60 % of typical is a normal (if slow) day: kept.
    slow = build(date(2024, 4, 1), date(2024, 7, 1), plant(changes={date(2024, 6, 10): 300.0}))
    assert jiangsu_5day(slow, ev, CAL).curve_kw == pytest.approx([460.0, 460.0])


def test_a_marked_shutdown_is_skipped_by_every_look_back_method() -> None:
    # 11 Jun ran at 450 kW (not thin) but the operator marked it: no look-back uses it.
    s = build(date(2024, 4, 1), date(2024, 7, 1), plant(changes={date(2024, 6, 11): 450.0}))
    cal = Calendar(tz="Europe/London", holidays=HOLIDAYS, shutdowns=frozenset({date(2024, 6, 11)}))
    ev = window(date(2024, 6, 12))
    for name in (
        "jiangsu_5day",
        "beijing_5of10",
        "caiso_10in10",
        "pjm_high4of5",
        "linear_trend",
        "regression",
    ):
        r = METHODS[name](s, ev, cal)
        assert r.available, (name, r.reason)
        assert date(2024, 6, 11) not in r.days_used, name
        assert r.mean_kw == pytest.approx(500.0), name
        if name != "beijing_5of10":  # Beijing starts at D-2 and never looks at D-1
            assert r.skipped_days[date(2024, 6, 11)] == "marked shutdown (calendar.shutdown_days)", name


def test_beijing_back_fills_a_day_with_too_little_data_to_rank() -> None:
    # Event Fri 14 Jun; typical days from D-2 (12 Jun) back: 12 11 10 7 6 5 4 3 31 30 May.
    # 7 Jun has its window complete but only 12 h of the day (under 90 %): dropped, and the pool
    # back-fills with 29 May. Days are 500 kW except 29 May and 30 May at 600 kW, so the top 5 by
    # daily load must contain both 600 kW days: (2*600 + 3*500)/5 = 540.
    def f(lt: datetime) -> float | None:
        d = lt.date()
        if d == date(2024, 6, 7) and lt.hour < 12:
            return None
        if d in (date(2024, 5, 29), date(2024, 5, 30)):
            return 600.0
        return plant()(lt)

    s = build(date(2024, 4, 1), date(2024, 7, 1), f)
    r = beijing_5of10(s, window(date(2024, 6, 14)), CAL)
    assert r.available, r.reason
    assert r.skipped_days[date(2024, 6, 7)] == "day only 50% present"
    assert date(2024, 5, 29) in r.days_used and date(2024, 5, 30) in r.days_used
    assert r.curve_kw == pytest.approx([540.0, 540.0])


# -- weekend and holiday events ----------------------------------------------------------------


def test_a_weekend_event_with_each_method() -> None:
    # Sat 15 Jun, 14:00-16:00. True load 200 kW (weekend). Weekday baselines would say 500.
    ev = window(date(2024, 6, 15))
    for name in ("jiangsu_5day", "beijing_5of10", "linear_trend"):
        r = METHODS[name](SERIES, ev, CAL)
        assert not r.available, name
        assert (r.reason or "").startswith(
            "not defined by this programme: the event day 2024-06-15 is a weekend"
        )
    # CAISO 4-in-4: Sun 9, Sat 8, Sun 2, Sat 1 Jun (all 200 kW); day-of ratio 200/200.
    c = caiso_10in10(SERIES, ev, CAL)
    assert c.curve_kw == pytest.approx([200.0, 200.0])
    assert c.days_used == [date(2024, 6, 9), date(2024, 6, 8), date(2024, 6, 2), date(2024, 6, 1)]
    assert c.adjustment_ratio == pytest.approx(1.0)
    # PJM high 2 of 3 Saturdays: 8 Jun, 1 Jun, 25 May; make 25 May the low one -> 8 and 1 Jun.
    s = build(date(2024, 4, 1), date(2024, 7, 1), plant(changes={date(2024, 5, 25): 180.0}))
    p = pjm_high4of5(s, ev, CAL)
    assert p.available, p.reason
    assert p.days_used == [date(2024, 6, 8), date(2024, 6, 1)]
    assert p.skipped_days[date(2024, 6, 9)] == "not a weekend day 5 day"
    assert p.curve_kw == pytest.approx([200.0, 200.0]) and p.adjustment_kw == pytest.approx(0.0)
    # The regression predicts from its non-working cells; real-time from the 15 min before.
    # 60 days back (16 Apr-14 Jun): 16 weekend days at 200 kW and 2 holidays at 150 share the cells.
    g = regression(SERIES, ev, CAL)
    assert g.curve_kw == pytest.approx([(16 * 200 + 2 * 150) / 18] * 2)
    assert any("weekend event" in n for n in g.notes)
    assert realtime_15min(SERIES, ev, CAL).curve_kw == pytest.approx([200.0, 200.0])


def test_a_holiday_event_pjm_sunday_class_caiso_weekend_and_holiday_days() -> None:
    # Bank holiday Mon 27 May. PJM: Sundays and holidays: Sun 26, Sun 19, Sun 12 May (200 kW),
    # high 2 of 3 -> 200; the holiday 6 May is further back. CAISO 4-in-4 of weekend/holiday days:
    # 26 25 19 18 May -> 200. Jiangsu: not defined.
    ev = window(date(2024, 5, 27))
    p = pjm_high4of5(SERIES, ev, CAL, adjust_hours=None)
    assert p.days_used == [date(2024, 5, 26), date(2024, 5, 19)]
    assert any("sunday/holiday days only" in n for n in p.notes)
    assert caiso_10in10(SERIES, ev, CAL, adjust_hours=None).days_used == [
        date(2024, 5, d) for d in (26, 25, 19, 18)
    ]
    j = jiangsu_5day(SERIES, ev, CAL)
    assert not j.available and "is a holiday" in (j.reason or "")
    assert p.skipped_days[date(2024, 5, 25)] == "not a sunday/holiday day"
    # A midweek holiday (Wed 22 May, 150 kW) joins the Sunday/holiday class: the pool is
    # 26 (200), 22 (150), 19 (200) May and the high 2 of 3 leave the holiday out.
    cal = Calendar(tz="Europe/London", holidays=HOLIDAYS | {date(2024, 5, 22)})
    s = build(date(2024, 4, 1), date(2024, 7, 1), plant(cal))
    q = pjm_high4of5(s, ev, cal, adjust_hours=None)
    assert q.days_used == [date(2024, 5, 26), date(2024, 5, 19)]
    assert date(2024, 5, 22) not in q.skipped_days
    assert q.curve_kw == pytest.approx([200.0, 200.0])


def test_weekend_event_across_the_spring_dst_change() -> None:
    # Sun 7 Apr 2024 event, 14:00-16:00 BST. The Sunday pool: 31 Mar (the 23 h day, clocks went
    # forward at 01:00), 24 Mar, 17 Mar (GMT). Load = 100 + local hour on Sundays: 14:00 local must
    # read 114 on every day, whatever the UTC offset.
    cal = Calendar(tz="Europe/London")

    def f(lt: datetime) -> float:
        return 100.0 + lt.hour if lt.weekday() == 6 else (300.0 if lt.weekday() == 5 else 500.0)

    s = build(date(2024, 3, 1), date(2024, 4, 9), f)
    ev = window(date(2024, 4, 7))
    p = pjm_high4of5(s, ev, cal, adjust_hours=None)
    assert p.days_used == [date(2024, 3, 31), date(2024, 3, 24)]
    assert p.curve_kw == pytest.approx([114.0, 115.0])
    c = caiso_10in10(s, ev, cal, adjust_hours=None)
    # 4-in-4 of weekend days: Sat 6 Apr (300), Sun 31 Mar, Sat 30 Mar (300), Sun 24 Mar.
    assert c.curve_kw == pytest.approx([(600 + 2 * 114) / 4, (600 + 2 * 115) / 4])


# -- PJM's low-usage screen --------------------------------------------------------------------


def test_pjm_replaces_low_usage_days() -> None:
    # Event Wed 12 Jun. The 5 most recent weekdays: 11 10 7 6 5 Jun; 10 Jun at 100 kW is under
    # 25 % of their average (420): replaced by 4 Jun. High 4 of 5 then averages 500s.
    s = build(date(2024, 4, 1), date(2024, 7, 1), plant(changes={date(2024, 6, 10): 100.0}))
    ev = window(date(2024, 6, 12))
    r = pjm_high4of5(s, ev, CAL, adjust_hours=None)
    assert r.skipped_days[date(2024, 6, 10)].startswith("low-usage day: event-period load 100.0 kW under 25%")
    assert r.curve_kw == pytest.approx([500.0, 500.0])
    # Without the screen 10 Jun is in the 5 and drops out of the high 4 anyway; at 130 kW (31 %)
    # it is not low usage and still drops out: the two differ only in the 5 days looked at.
    off = pjm_high4of5(s, ev, CAL, adjust_hours=None, low_usage_share=None)
    assert date(2024, 6, 10) not in off.skipped_days and off.curve_kw == pytest.approx([500.0, 500.0])
    # Two low days among 5 (100 kW each): average 340, 25 % = 85 -> not low: the screen is PJM's
    # (relative to the basis average), not ours.
    two = build(
        date(2024, 4, 1),
        date(2024, 7, 1),
        plant(changes={date(2024, 6, 10): 100.0, date(2024, 6, 11): 100.0}),
    )
    r2 = pjm_high4of5(two, ev, CAL, adjust_hours=None)
    assert date(2024, 6, 10) not in r2.skipped_days
    assert r2.curve_kw == pytest.approx([(3 * 500 + 100) / 4] * 2)


# -- the real-time baseline and earlier events ---------------------------------------------------


def test_back_to_back_events_real_time_window_skips_the_first() -> None:
    # 1 s polls. Normal load 1000 kW; event A controls [0, 1800) at 600 kW, recovers [1800, 2400)
    # at 800 kW; event B's control starts at 2700. The naive window [1800, 2700) holds 600 s of
    # recovery: (600*800 + 300*1000)/900 = 866.7 kW. Skipping A's period: [2400, 2700) and
    # [-600, 0), all 1000 kW.
    def kw(t: float) -> float:
        return 600.0 if 0 <= t < 1800 else 800.0 if 1800 <= t < 2400 else 1000.0

    polls = [(float(t), kw(t)) for t in range(-3600, 2700)]
    naive = realtime_baseline(polls, 2700.0)
    assert naive.kw == pytest.approx(866.67, abs=0.01)
    assert realtime_window(2700.0, 900.0, [(0.0, 2400.0)]) == [(2400.0, 2700.0), (-600.0, 0.0)]
    rt = realtime_baseline(polls, 2700.0, skip=[(0.0, 2400.0)])
    assert rt.kw == pytest.approx(1000.0)
    assert rt.covered_s == pytest.approx(900.0)
    assert "skipped an earlier event's control and recovery" in rt.quality
    assert "spread over the 55 min before it" in rt.quality
    # The minute series gives the same, and says so.
    s = LoadSeries(-3600.0, 60, [kw(-3600.0 + 60 * i) for i in range(6300 // 60 + 60)])
    ev = EventWindow(
        datetime.fromtimestamp(2700, LON),
        datetime.fromtimestamp(4500, LON),
        control_start=datetime.fromtimestamp(2700, LON),
    )
    m = realtime_15min(s, ev, CAL, skip=[(0.0, 2400.0)])
    assert m.mean_kw == pytest.approx(1000.0)
    assert any("skipped earlier events' control and recovery" in n for n in m.notes)


def _realtime_baseline_as_written(
    samples: list[tuple[float, float]],
    control_start_ts: float,
    window_s: float,
    max_hold_s: float,
    skip: list[tuple[float, float]],
) -> tuple[float, float]:
    """The real-time baseline's (acc, covered) exactly as first written (linear scans, `any` over
    the skipped periods): the oracle the faster one must match to the last bit."""
    pieces = realtime_window(control_start_ts, window_s, skip)
    pts = sorted(s for s in samples if s[0] < control_start_ts and not any(a <= s[0] < b for a, b in skip))
    acc = covered = 0.0
    for t0, t1 in pieces:
        first = 0
        for i, (t, _) in enumerate(pts):
            if t <= t0:
                first = i
            else:
                break
        for i in range(first, len(pts)):
            t, kw = pts[i]
            if t >= t1:
                break
            nxt = pts[i + 1][0] if i + 1 < len(pts) else t1
            a = max(t, t0)
            b = min(nxt, t + max_hold_s, t1)
            if b > a:
                acc += kw * (b - a)
                covered += b - a
    return acc, covered


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.one_of(st.integers(-1000, 1100).map(float), st.floats(-4000, 3000)), st.floats(0, 2000)),
        max_size=300,
    ),
    st.lists(
        st.tuples(
            st.one_of(st.integers(-3000, 1100).map(float), st.floats(-3000, 3000)),
            st.one_of(st.integers(-100, 2000).map(float), st.floats(-100, 2000)),
        ),
        max_size=6,
    ),
    st.sampled_from([30.0, 300.0, 900.0]),
    st.sampled_from([1.0, 60.0, 120.0]),
)
def test_real_time_baseline_matches_its_first_writing_to_the_bit(
    samples: list[tuple[float, float]],
    skip_raw: list[tuple[float, float]],
    window_s: float,
    max_hold_s: float,
) -> None:
    """Polls in any order and at any spacing (duplicates, gaps), skipped periods overlapping or
    empty: the same mean and coverage as the linear version, to the bit (control and settlement
    must agree to the watt)."""
    start = 1_790_000_000.0  # epoch-sized times: rounding as on a site
    polls = [(start + t, kw) for t, kw in samples]
    skip = [(start + a, start + a + d) for a, d in skip_raw]
    acc, covered = _realtime_baseline_as_written(polls, start + 1000.0, window_s, max_hold_s, skip)
    rt = realtime_baseline(
        polls, start + 1000.0, window_s, max_hold_s=max_hold_s, min_coverage=0.0, skip=skip
    )
    assert rt.covered_s == covered
    assert rt.kw == (None if covered <= 0 else acc / covered)


def test_real_time_baseline_matches_its_first_writing_on_whole_second_polls() -> None:
    """1 s polls and whole-second periods: every boundary (a piece's start, a skipped period's
    end) falls on a poll, where the two could part."""
    start = 1_790_000_000.0
    polls = [(start + t, 500.0 + (t * 37) % 101) for t in range(-7200, 1000)]
    for skip in ([], [(0.0, 100.0)], [(100.0, 400.0), (350.0, 700.0)], [(-2000.0, -1000.0), (500.0, 500.0)]):
        shifted = [(start + a, start + b) for a, b in skip]
        for hold in (1.0, 120.0):
            acc, covered = _realtime_baseline_as_written(polls, start + 1000.0, 900.0, hold, shifted)
            rt = realtime_baseline(polls, start + 1000.0, max_hold_s=hold, min_coverage=0.0, skip=shifted)
            assert (rt.kw, rt.covered_s) == (acc / covered, covered), (skip, hold)


def test_real_time_minimum_history() -> None:
    # 12 s of polls before control start: too little for any sensible minimum.
    polls = [(990.0 + i, 500.0) for i in range(10)]
    assert realtime_baseline(polls, 1000.0).kw is None  # default: 450 s needed
    assert realtime_baseline(polls, 1000.0, min_coverage=10 / 900).kw == pytest.approx(500.0)
    # 450 s of polls: exactly the default minimum.
    half = [(550.0 + i, 400.0) for i in range(450)]
    assert realtime_baseline(half, 1000.0).kw == pytest.approx(400.0)
    assert realtime_baseline(half, 1000.0, min_coverage=0.9).kw is None


def test_control_periods_from_stored_events() -> None:
    def row(
        eid: str,
        cs: float | None,
        end_h: int,
        *,
        opt: str = "in",
        ended: float | None = None,
        recovery: float = 0.0,
    ) -> dict[str, object]:
        start = datetime(2024, 6, 12, 10, tzinfo=LON)
        payload = {
            "event_id": eid,
            "program": "contracted",
            "start": start.isoformat(),
            "duration_s": end_h * 3600,
            "target": {"reduce_kw": 50},
            "recovery_s": recovery,
        }
        return {
            "event_id": eid,
            "opt": opt,
            "payload": payload,
            "runtime": {"control_start": cs, "ended_ts": ended},
        }

    t10 = datetime(2024, 6, 12, 10, tzinfo=LON).timestamp()
    rows = [
        row("a", t10, 1),  # ran 10:00-11:00, strategy rebound 600 s
        row("b", t10, 1, recovery=900.0, ended=t10 + 1800),  # stopped early at 10:30, own recovery 900 s
        row("c", None, 1),  # never controlled
        row("d", t10, 1, opt="out"),
        row("me", t10, 1),
        row("later", t10 + 7200, 1),
    ]
    got = control_periods(rows, t10 + 3600, "me", lambda program: 600.0)
    assert got == [(t10, t10 + 3600 + 600), (t10, t10 + 1800 + 900)]
    # A payload this version cannot read (no offset, no duration) ran no control we know of.
    bad = [row("e", t10, 1), row("f", t10, 1)]
    bad[0]["payload"] = {**bad[0]["payload"], "start": "2024-06-12T10:00:00"}  # type: ignore[dict-item]
    bad[1]["payload"] = {"event_id": "f", "start": "2024-06-12T10:00:00+01:00"}
    assert control_periods(bad, t10 + 3600, "me", lambda program: 600.0) == []
