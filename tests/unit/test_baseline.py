"""Baseline methods on series small enough to check by hand.

The March fixture (Europe/London, hourly) is built so that every number can be
worked out in a comment: the load at local hour h on day k (k = days since
1 Mar 2024) is ``10*k + h`` kW. A baseline over 14:00–16:00 from days with
mean k = m is therefore ``[10*m + 14, 10*m + 15]``; picking the wrong UTC
sample on a daylight-saving day would be off by exactly 1 kW.

Calendar of the look-back (event Tue 2 Apr 2024, BST; every day before
Sun 31 Mar is GMT, so 14:00 local is 14:00 UTC there but 13:00 UTC on the
event day):

    k  date   day  note
    12 13 Mar Wed  +500 kW spike at 03:00 (a high peak, small energy)
    13 14 Mar Thu
    14 15 Mar Fri
    -  16,17  Sat/Sun
    17 18 Mar Mon
    18 19 Mar Tue
    19 20 Mar Wed  excluded: a DR event day
    20 21 Mar Thu
    21 22 Mar Fri
    -  23 Mar Sat
    23 24 Mar Sun  make-up working day (working, not "typical")
    24 25 Mar Mon
    25 26 Mar Tue
    26 27 Mar Wed  gap: 14:00 missing
    27 28 Mar Thu
    28 29 Mar Fri  holiday (Good Friday)
    -  30,31  Sat/Sun (31 Mar: clocks go forward, a 23 h day)
    31 1 Apr  Mon  holiday (Easter Monday)
    32 2 Apr  Tue  event day, 14:00-16:00 BST
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from agent.config.calendar import Calendar
from agent.config.model import BASELINE_METHODS
from agent.settlement.baseline import (
    METHODS,
    EventWindow,
    LoadSeries,
    beijing_5of10,
    caiso_10in10,
    compute_all,
    jiangsu_5day,
    linear_trend,
    pjm_high4of5,
    realtime_15min,
    realtime_15min_from_samples,
    regression,
)

LON = ZoneInfo("Europe/London")
EXCLUDED = frozenset({date(2024, 3, 20)})
CAL = Calendar(
    tz="Europe/London",
    holidays=frozenset({date(2024, 3, 29), date(2024, 4, 1)}),
    extra_working_days=frozenset({date(2024, 3, 24)}),
)
EVENT = EventWindow(
    start=datetime(2024, 4, 2, 14, tzinfo=LON),
    end=datetime(2024, 4, 2, 16, tzinfo=LON),
    notice_date=date(2024, 4, 1),
)


def build(
    first: date, last: date, f: Callable[[datetime, int], float | None], step_s: int = 3600
) -> LoadSeries:
    """Series from local midnight of ``first`` to that of ``last``; f(local time, day index)."""
    t0 = datetime.combine(first, time(0), tzinfo=LON).timestamp()
    t1 = datetime.combine(last, time(0), tzinfo=LON).timestamp()
    vals = []
    for i in range(round((t1 - t0) / step_s)):
        lt = datetime.fromtimestamp(t0 + i * step_s, LON)
        vals.append(f(lt, (lt.date() - first).days))
    return LoadSeries(t0, step_s, vals)


def march_load(lt: datetime, k: int) -> float | None:
    if lt.date() == date(2024, 3, 27) and lt.hour == 14:
        return None
    spike = 500.0 if lt.date() == date(2024, 3, 13) and lt.hour == 3 else 0.0
    return 10.0 * k + lt.hour + spike


MARCH = build(date(2024, 3, 1), date(2024, 4, 3), march_load)


def approx(xs: list[float]) -> object:
    return pytest.approx(xs, rel=1e-12, abs=1e-9)


# -- LoadSeries ----------------------------------------------------------------


def test_series_window_slice_energy_with_gaps() -> None:
    s = LoadSeries(0.0, 900, [4.0, None, 8.0, 12.0])
    assert s.end == 3600.0
    assert s.window(-900, 1800) == [None, 4.0, None]
    assert s.slice(900, 2700).values == [None, 8.0]
    # Full hour: 4+8+12 kW for 15 min each = 6 kWh from 3/4 of the hour.
    e = s.energy_kwh(0, 3600)
    assert e.kwh == pytest.approx(6.0)
    assert e.coverage == pytest.approx(0.75)
    assert s.mean_kw(0, 3600) == (pytest.approx(8.0), pytest.approx(0.75))
    # Partial intervals pro rata: [450, 2250) = half of 4 kW, gap, half of 8 kW.
    e = s.energy_kwh(450, 2250)
    assert e.kwh == pytest.approx((4 * 450 + 8 * 450) / 3600)
    assert e.coverage == pytest.approx(900 / 1800)
    assert s.mean_kw(900, 1800) == (None, 0.0)
    with pytest.raises(ValueError, match="grid"):
        s.window(100, 900)


def test_series_from_datetime_needs_aware() -> None:
    with pytest.raises(ValueError, match="aware"):
        LoadSeries.from_datetime(datetime(2024, 1, 1), 900, [1.0])
    s = LoadSeries.from_datetime(datetime(2024, 1, 1, tzinfo=UTC), 900, [1.0])
    assert s.start == 1704067200.0


def test_event_window_validation() -> None:
    with pytest.raises(ValueError, match="aware"):
        EventWindow(datetime(2024, 1, 1, 14), datetime(2024, 1, 1, 16))
    with pytest.raises(ValueError, match="after"):
        EventWindow(EVENT.end, EVENT.start)


# -- the methods on the March fixture --------------------------------------------


def test_jiangsu_5day() -> None:
    # Back from the notice day (1 Apr): 31/30 weekend, 29 holiday, 28 ok (k27),
    # 27 gap, 26 (k25), 25 (k24), 24 make-up (not normal), 23 Sat, 22 (k21),
    # 21 (k20). Mean k = 117/5 = 23.4 -> [248, 249].
    r = jiangsu_5day(MARCH, EVENT, CAL, excluded_dates=EXCLUDED)
    assert r.available
    assert r.curve_kw == approx([248.0, 249.0])
    assert r.mean_kw == pytest.approx(248.5)
    assert r.energy_kwh == pytest.approx(497.0)
    assert r.days_used == [date(2024, 3, d) for d in (28, 26, 25, 22, 21)]
    assert r.skipped_days[date(2024, 3, 27)] == "gap: 1 of 2 intervals missing"
    assert r.skipped_days[date(2024, 3, 24)] == "not a normal working day"
    assert r.skipped_days[date(2024, 3, 29)] == "not a normal working day"
    # 6 days examined with data, one reading missing.
    assert r.coverage == pytest.approx(11 / 12)
    assert r.start == EVENT.start_ts and r.step_s == 3600


def test_jiangsu_counts_back_from_the_notice_day() -> None:
    # Notice on 22 Mar: 21 (k20), 20 (k19), 19 (k18), 18 (k17), 15 (k14) -> k 17.6.
    ev = EventWindow(EVENT.start, EVENT.end, notice_date=date(2024, 3, 22))
    r = jiangsu_5day(MARCH, ev, CAL)
    assert r.curve_kw == approx([190.0, 191.0])


def test_realtime_15min() -> None:
    # Control at 14:00 BST: [13:45, 14:00) lies in the 13:00 hour of k=32 -> 333, flat.
    r = realtime_15min(MARCH, EVENT, CAL)
    assert r.curve_kw == approx([333.0, 333.0])
    assert r.coverage == 1.0
    later = EventWindow(EVENT.start, EVENT.end, control_start=datetime(2024, 4, 2, 14, 30, tzinfo=LON))
    assert realtime_15min(MARCH, later, CAL).mean_kw == pytest.approx(334.0)


def test_realtime_15min_partial_intervals_and_gap() -> None:
    # 15-min series; control at 14:05 -> 10 min of the 13:45 value, 5 of the 14:00 one.
    s = build(date(2024, 4, 2), date(2024, 4, 3), lambda lt, k: lt.hour * 100 + lt.minute, 900)
    ev = EventWindow(EVENT.start, EVENT.end, control_start=datetime(2024, 4, 2, 14, 5, tzinfo=LON))
    r = realtime_15min(s, ev, CAL)
    assert r.mean_kw == pytest.approx((10 * 1345 + 5 * 1400) / 15)
    assert len(r.curve_kw) == 8
    gappy = LoadSeries(s.start, 900, [None] * len(s.values))
    out = realtime_15min(gappy, ev, CAL)
    assert not out.available and "0%" in (out.reason or "")


def test_realtime_15min_from_samples() -> None:
    cs = 10_000.0
    # 1 s polls: 100 kW for the first 450 s of the window, 200 kW for the last 450 s.
    polls = [(cs - 900 + i, 100.0 if i < 450 else 200.0) for i in range(900)]
    assert realtime_15min_from_samples(polls, cs) == pytest.approx(150.0)
    # A reading from before the window holds into it; readings after cs are ignored.
    polls2 = [(cs - 905, 50.0), *((cs - 895 + i, 150.0) for i in range(895)), (cs + 1, 1e6)]
    assert realtime_15min_from_samples(polls2, cs) == pytest.approx((5 * 50 + 895 * 150) / 900)
    # Sparse readings: each holds at most 60 s -> 120 s of 900 covered -> None...
    sparse = [(cs - 900, 100.0), (cs - 300, 400.0)]
    assert realtime_15min_from_samples(sparse, cs) is None
    # ...unless the caller trusts longer holds: (600*100 + 300*400) / 900.
    assert realtime_15min_from_samples(sparse, cs, max_hold_s=math.inf) == pytest.approx(200.0)
    assert realtime_15min_from_samples([], cs) is None


def test_beijing_5of10_by_energy_and_by_peak() -> None:
    # Typical days from D-2 (31 Mar) back, skipping weekends, holidays, the
    # make-up day, the gap day and the excluded day: k = 27 25 24 21 20 18 17 14 13 12.
    # Daily mean = 10k + 11.5 (k=12: + 500/24 = 152.3), so by energy the top 5 are
    # k 27 25 24 21 20 -> mean 23.4 -> [248, 249].
    r = beijing_5of10(MARCH, EVENT, CAL, excluded_dates=EXCLUDED)
    assert r.available
    assert r.curve_kw == approx([248.0, 249.0])
    assert r.days_used == [date(2024, 3, d) for d in (28, 26, 25, 22, 21)]
    # By peak the 13 Mar spike (623 kW) ranks first: k 12 27 25 24 21 -> 21.8 -> [232, 233].
    p = beijing_5of10(MARCH, EVENT, CAL, excluded_dates=EXCLUDED, rank_by="peak")
    assert p.curve_kw == approx([232.0, 233.0])
    assert date(2024, 3, 13) in p.days_used
    # Without the exclusion, 20 Mar (k19) is typical and joins the pool, which
    # then stops at 14 Mar: the spike day drops out and the top 5 are k 27..20 again.
    q = beijing_5of10(MARCH, EVENT, CAL, rank_by="peak")
    assert q.curve_kw == approx([248.0, 249.0])
    assert date(2024, 3, 13) not in q.days_used


def test_caiso_10in10_with_capped_day_of_ratio() -> None:
    # Eligible (working, incl. make-up; not 20 Mar; complete 10:00-16:00):
    # k = 27 25 24 23 21 20 18 17 14 13 -> mean 20.2 -> unadjusted [216, 217].
    # Adjustment hours 10:00-13:00: baseline 202 + 11 = 213, actual 320 + 11 = 331,
    # ratio 1.554 -> capped at 1.2 -> [259.2, 260.4].
    r = caiso_10in10(MARCH, EVENT, CAL, excluded_dates=EXCLUDED)
    assert r.available
    assert r.curve_kw == approx([259.2, 260.4])
    assert r.adjustment_ratio == pytest.approx(1.2)
    assert r.adjustment_kw == pytest.approx(259.8 - 216.5)
    assert len(r.days_used) == 10 and date(2024, 3, 24) in r.days_used
    assert r.skipped_days[date(2024, 3, 27)] == "gap: 1 of 6 intervals missing"
    assert r.skipped_days[date(2024, 3, 20)] == "excluded (DR event day)"
    assert r.coverage == pytest.approx(65 / 66)
    assert any("capped" in n for n in r.notes)
    uncapped = caiso_10in10(MARCH, EVENT, CAL, excluded_dates=EXCLUDED, cap=1.0)
    assert uncapped.curve_kw == approx([216 * 331 / 213, 217 * 331 / 213])
    none = caiso_10in10(MARCH, EVENT, CAL, excluded_dates=EXCLUDED, adjust_hours=None)
    assert none.curve_kw == approx([216.0, 217.0])
    assert none.adjustment_ratio is None


def test_pjm_high4of5_symmetric_additive() -> None:
    # Last 5 eligible: k 27 25 24 23 21; highest 4 by window mean: 27 25 24 23
    # -> mean 24.75 -> [261.5, 262.5]. Adjustment over 10:00-13:00:
    # actual 331 - baseline (247.5 + 11) = +72.5 -> [334, 335].
    r = pjm_high4of5(MARCH, EVENT, CAL, excluded_dates=EXCLUDED)
    assert r.curve_kw == approx([334.0, 335.0])
    assert r.adjustment_kw == pytest.approx(72.5)
    assert r.days_used == [date(2024, 3, d) for d in (28, 26, 25, 24)]
    flat = pjm_high4of5(MARCH, EVENT, CAL, excluded_dates=EXCLUDED, adjust_hours=None)
    assert flat.curve_kw == approx([261.5, 262.5])


def test_linear_trend_extrapolates_exactly_on_a_line() -> None:
    # Same 10 days as CAISO; y = 10k + h is a line in the day offset, so the
    # extrapolation to k=32 is exact: [334, 335].
    r = linear_trend(MARCH, EVENT, CAL, excluded_dates=EXCLUDED)
    assert r.curve_kw == approx([334.0, 335.0])
    assert len(r.days_used) == 10


def test_regression_time_of_day_and_day_type_on_dst_week() -> None:
    # 7 days before the event (26 Mar-1 Apr, incl. the 23 h 31 Mar): working days
    # are 26 (k25), 27 (k26, 14:00 missing), 28 (k27). Without temperature the
    # OLS solution for a cell is its mean: 14:00 -> (264 + 284)/2 = 274,
    # 15:00 -> (265 + 275 + 285)/3 = 275.
    r = regression(MARCH, EVENT, CAL, days=7, min_rows_per_cell=2)
    assert r.available
    assert r.curve_kw == approx([274.0, 275.0])
    assert r.coverage == pytest.approx(166 / 167)  # 6 * 24 + 23 readings, one gap
    assert len(r.days_used) == 7
    # With the default guard (3 readings per cell) the 14:00 cell is too thin.
    thin = regression(MARCH, EVENT, CAL, days=7)
    assert not thin.available and "fewer than 3" in (thin.reason or "")


def test_regression_by_weekday_gives_each_working_weekday_its_own_cells() -> None:
    # Working days draw 100 kW, Tuesdays 150, other days 20. The 21 days before Tue 2 Apr hold
    # 14 working days (the make-up Sunday 24 Mar included, the holidays 29 Mar and 1 Apr not),
    # 3 of them Tuesdays: one working-day cell averages (3*150 + 11*100) / 14; hour of week
    # predicts the Tuesday level.
    def load(lt: datetime, k: int) -> float:
        if not CAL.is_working_day(lt.date()):
            return 20.0
        return 150.0 if lt.weekday() == 1 else 100.0

    series = build(date(2024, 3, 1), date(2024, 4, 3), load)
    pooled = regression(series, EVENT, CAL, days=21)
    assert pooled.curve_kw == approx([(3 * 150 + 11 * 100) / 14] * 2)
    weekly = regression(series, EVENT, CAL, days=21, by_weekday=True)
    assert weekly.curve_kw == approx([150.0, 150.0])
    # Fewer days than weeks x the guard: a weekday cell can be too thin where the pooled one is not.
    thin = regression(series, EVENT, CAL, days=14, by_weekday=True)
    assert not thin.available and "fewer than 3" in (thin.reason or "")


def test_regression_recovers_a_temperature_response() -> None:
    # T = 5 + (k mod 3) + 0.25 h (always < 18 C); load = 50 + 2h + 3T on every day.
    def temp(lt: datetime, k: int) -> float:
        return 5 + (k % 3) + 0.25 * lt.hour

    first, last = date(2024, 3, 1), date(2024, 4, 3)
    temps = build(first, last, temp)
    load = build(first, last, lambda lt, k: 50 + 2 * lt.hour + 3 * temp(lt, k))
    # At the event (k=32, k mod 3 = 2): T = 10.5 and 10.75 -> 109.5 and 112.25.
    r = regression(load, EVENT, CAL, days=21, temperature=temps)
    assert r.curve_kw == approx([109.5, 112.25])
    # The cooling term is all zero below 18 C, hence singular: dropped and said so.
    assert any("dropped the 'cdd' term" in n for n in r.notes)
    r10 = regression(load, EVENT, CAL, days=21, temperature=temps, cooling_base_c=10.0)
    assert r10.curve_kw == pytest.approx([109.5, 112.25], rel=1e-9)
    assert not any("dropped" in n for n in r10.notes)
    # A temperature series on another grid (half-hourly, same values) is averaged per interval.
    temps30 = build(first, last, lambda lt, k: temp(lt.replace(minute=0), k), 1800)
    r30 = regression(load, EVENT, CAL, days=21, temperature=temps30)
    assert r30.curve_kw == approx([109.5, 112.25])


def test_october_dst_and_a_makeup_day_on_the_25_hour_day() -> None:
    # Clocks go back on Sun 27 Oct 2024 (a 25 h day), declared a make-up working day.
    # Event Tue 29 Oct 14:00 GMT (k=28); look-back days before the 27th are BST.
    cal = Calendar(tz="Europe/London", extra_working_days=frozenset({date(2024, 10, 27)}))
    s = build(date(2024, 10, 1), date(2024, 10, 31), lambda lt, k: 10.0 * k + lt.hour)
    ev = EventWindow(datetime(2024, 10, 29, 14, tzinfo=LON), datetime(2024, 10, 29, 16, tzinfo=LON))
    # Working days back from the 28th: k 27 26(make-up) 24 23 22 21 20 17 16 15 -> 21.1.
    r = caiso_10in10(s, ev, cal, adjust_hours=None)
    assert r.curve_kw == approx([225.0, 226.0])
    assert date(2024, 10, 27) in r.days_used
    # Day-of: actual 280 + 11 = 291 over baseline 211 + 11 = 222 -> capped 1.2.
    assert caiso_10in10(s, ev, cal).curve_kw == approx([270.0, 271.2])
    # 10 working days excluding make-up ones: k 27 24 23 22 21 20 17 16 15 14;
    # linear in k, so the trend lands on k=28 exactly.
    assert linear_trend(s, ev, Calendar(tz="Europe/London")).curve_kw == approx([294.0, 295.0])
    assert realtime_15min(s, ev, cal).curve_kw == approx([293.0, 293.0])


def test_window_off_the_grid_is_unavailable() -> None:
    ev = EventWindow(EVENT.start + timedelta(minutes=5), EVENT.end)
    for name, fn in METHODS.items():
        r = fn(MARCH, ev, CAL)
        assert not r.available, name
        assert "grid" in (r.reason or "")


def test_every_configurable_method_is_implemented_and_no_other() -> None:
    # Configuration validates official_baseline against its own names; settlement runs METHODS.
    assert set(METHODS) == set(BASELINE_METHODS)
    assert len(BASELINE_METHODS) == len(set(BASELINE_METHODS))


# -- compute_all ---------------------------------------------------------------


def test_compute_all_marks_official_and_never_raises_on_short_history() -> None:
    # Two days of history only (31 Mar, 1 Apr) plus the event day.
    short = build(date(2024, 3, 31), date(2024, 4, 3), lambda lt, k: 100.0 + lt.hour)
    out = compute_all(short, EVENT, CAL, official="jiangsu_5day")
    assert set(out) == set(METHODS)
    assert out["jiangsu_5day"].official
    assert [n for n, r in out.items() if r.official] == ["jiangsu_5day"]
    for name in ("jiangsu_5day", "beijing_5of10", "caiso_10in10", "pjm_high4of5"):
        assert not out[name].available, name
        assert out[name].reason
    assert not out["linear_trend"].available
    assert not out["regression"].available  # no working-day rows at all
    assert out["realtime_15min"].available
    assert out["realtime_15min"].curve_kw == approx([113.0, 113.0])


def test_compute_all_full_history_and_failure_isolation() -> None:
    out = compute_all(
        MARCH,
        EVENT,
        CAL,
        official="caiso_10in10",
        excluded_dates=EXCLUDED,
        params={"beijing_5of10": {"rank_by": "median"}, "regression": {"days": 8}},
    )
    assert out["caiso_10in10"].curve_kw == approx([259.2, 260.4])
    # 8 days add 25 Mar (k24) to the working cells: 14:00 -> (254+264+284)/3 = 267.33.
    assert out["regression"].curve_kw == approx([802 / 3, (255 + 265 + 275 + 285) / 4])
    bad = out["beijing_5of10"]
    assert not bad.available and "rank_by" in (bad.reason or "")
    assert all(r.available for n, r in out.items() if n != "beijing_5of10")


def test_compute_all_rejects_configuration_errors() -> None:
    with pytest.raises(ValueError, match="unknown official"):
        compute_all(MARCH, EVENT, CAL, official="nyiso")
    with pytest.raises(ValueError, match="unknown baseline"):
        compute_all(MARCH, EVENT, CAL, official="caiso_10in10", params={"nope": {}})
