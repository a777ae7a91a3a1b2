"""Settlement on the official baseline, the others beside it, data quality, incentive tiers and the year's money."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from agent.config.model import ContractConfig
from agent.settlement.baseline import BaselineResult
from agent.settlement.books import incentive_rate, ledger_entries, money, participation_factor, year_books
from agent.settlement.formula import data_quality, sample_gaps, settle

TZ = ZoneInfo("Asia/Shanghai")


def curve(method: str, values: list[float], start: float = 0.0, official: bool = False) -> BaselineResult:
    return BaselineResult(
        method=method,
        available=True,
        start=start,
        step_s=60,
        curve_kw=values,
        mean_kw=sum(values) / len(values),
        days_used=[date(2025, 7, 14)],
        coverage=1.0,
        official=official,
    )


def flat_samples(kw: float, start: float, end: float, step: float = 5.0) -> list[tuple[float, float]]:
    out = []
    t = start
    while t < end:
        out.append((t, kw))
        t += step
    return out


def test_official_curve_baseline_settles_and_the_others_are_listed() -> None:
    # 10 minutes; official baseline 1000 kW for 5 min then 900 kW for 5 min: E_b = 1000/12 + 900/12 = 158.33 kWh.
    # Metered 850 kW flat: E_m = 141.67 kWh; verified = (158.33 - 141.67) / (1/6 h) = 100 kW.
    # The other method, flat 1100 kW, would verify 250 kW.
    official = curve("jiangsu_5day", [1000.0] * 5 + [900.0] * 5, official=True)
    other = curve("caiso_10in10", [1100.0] * 10)
    missing = BaselineResult(method="regression", available=False, reason="too little history")
    s = settle(
        event_id="e",
        samples=flat_samples(850.0, 0, 600),
        start=0.0,
        end=600.0,
        baseline_kw=1200.0,  # the live fallback: not used while the official one is available
        baseline_method="realtime_15min",
        peak_kw=1000.0,
        band_pct=(5.0, 20.0),
        committed_kw=100.0,
        incentive_cny_per_kw=100.0,
        baselines={"jiangsu_5day": official, "caiso_10in10": other, "regression": missing},
        official_baseline="jiangsu_5day",
    )
    assert s["baseline_method"] == "jiangsu_5day" and s["official_baseline"] == "jiangsu_5day"
    assert s["baseline_kwh"] == pytest.approx(950 / 6, rel=1e-6)
    assert s["baseline_kw"] == pytest.approx(950.0)
    assert s["verified_reduction_kw"] == pytest.approx(100.0, rel=1e-6)
    assert s["compliance"] == 1.0
    assert s["estimated_incentive_cny"] == pytest.approx(10000.0)
    assert s["baselines"]["caiso_10in10"]["verified_reduction_kw"] == pytest.approx(250.0)
    assert s["baselines"]["jiangsu_5day"]["official"] is True
    assert s["baselines"]["regression"] == {
        "available": False,
        "official": False,
        "mean_kw": None,
        "energy_kwh": None,
        "verified_reduction_kw": None,
        "reason": "too little history",
    }
    # In band judged minute by minute against the curve: 150 kW then 50 kW below it, both in [50, 200].
    assert s["in_band_fraction"] == 1.0 and s["in_band_fraction_all"] == 1.0
    assert s["data_quality"]["status"] == "ok"
    assert "notes" not in s


def test_official_unavailable_falls_back_to_the_real_time_baseline_with_a_note() -> None:
    s = settle(
        event_id="e",
        samples=flat_samples(900.0, 0, 600),
        start=0.0,
        end=600.0,
        baseline_kw=1000.0,
        baseline_method="realtime_15min",
        peak_kw=1000.0,
        band_pct=(5.0, 20.0),
        committed_kw=100.0,
        baselines={
            "beijing_5of10": BaselineResult(method="beijing_5of10", available=False, reason="only 3 days")
        },
        official_baseline="beijing_5of10",
    )
    assert s["baseline_method"] == "realtime_15min" and s["official_baseline"] == "beijing_5of10"
    assert s["verified_reduction_kw"] == pytest.approx(100.0)
    assert s["notes"] == [
        "official baseline beijing_5of10 unavailable (only 3 days); settled on realtime_15min"
    ]
    assert s["data_quality"]["status"] == "degraded"


def test_gaps_are_listed_and_a_silent_meter_is_stale() -> None:
    # Readings every 5 s, except a 2-minute silence from 120 s; each reading holds 30 s at most.
    samples = [(t, 500.0) for t in range(0, 120, 5)] + [(t, 500.0) for t in range(240, 600, 5)]
    gaps = sample_gaps(samples, 0.0, 600.0, 30.0)
    assert [(g.start, g.end) for g in gaps] == [(145.0, 240.0)]
    dq = data_quality(samples, 0.0, 600.0, max_hold_s=30.0, stale_after_s=10.0, baseline_ok=True)
    assert dq["gap_count"] == 1 and dq["gap_seconds"] == 95.0 and dq["longest_gap_s"] == 95.0
    assert dq["meter_stale"] is True
    assert dq["meter_coverage"] == pytest.approx(505 / 600, abs=1e-4)
    assert dq["status"] == "poor"
    # A meter that stops before the end leaves a gap to the end; one that starts late, from the start.
    assert [(g.start, g.end) for g in sample_gaps([(100.0, 1.0)], 0.0, 200.0, 30.0)] == [
        (0.0, 100.0),
        (130.0, 200.0),
    ]


def beijing() -> ContractConfig:
    return ContractConfig.model_validate(
        {
            "peak_kw": 1000,
            "incentive_cny_per_kw": 80,
            "incentive_by_notice": [
                {"notice_up_to_s": 14400, "cny_per_kw": 100},
                {"notice_up_to_s": 1800, "cny_per_kw": 120},
            ],
        }
    )


@pytest.mark.parametrize(
    ("notice_s", "rate"),
    [(600, 120), (1800, 120), (1801, 100), (4 * 3600, 100), (4 * 3600 + 1, 80), (86400, 80)],
)
def test_beijing_rates_by_notice_time(notice_s: float, rate: float) -> None:
    assert incentive_rate(beijing(), "contracted", notice_s)[0] == rate


def test_unknown_notice_pays_the_base_rate_and_says_so() -> None:
    rate, why = incentive_rate(beijing(), "contracted", None)
    assert rate == 80 and "unknown" in why
    # A tier for one program does not apply to another.
    c = ContractConfig.model_validate(
        {
            "peak_kw": 1000,
            "incentive_cny_per_kw": 100,
            "incentive_by_notice": [{"notice_up_to_s": 1800, "cny_per_kw": 130, "program": "realtime"}],
        }
    )
    assert incentive_rate(c, "realtime", 900)[0] == 130
    assert incentive_rate(c, "contracted", 900)[0] == 100


def test_unknown_official_baseline_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="unknown baseline method 'jiangsu'"):
        ContractConfig.model_validate({"peak_kw": 1000, "official_baseline": "jiangsu"})


def test_participation_factor_follows_the_jiangsu_rule() -> None:
    c = ContractConfig.model_validate(
        {"peak_kw": 1000, "min_events_per_year": 10, "default_below_events_per_year": 5}
    )
    assert participation_factor(c, 12)[0] == 1.0
    assert participation_factor(c, 10)[0] == 1.0
    assert participation_factor(c, 7)[0] == pytest.approx(0.7)
    assert participation_factor(c, 5)[0] == pytest.approx(0.5)
    assert participation_factor(c, 4) == (0.0, "4 < 5 responses: a default, no incentive")


def ts(y: int, m: int, d: int, h: int = 10) -> float:
    return datetime(y, m, d, h, tzinfo=TZ).timestamp()


def settlement(
    event_id: str, start: float, kw: float, cny: float, program: str = "contracted", **kw_: object
) -> dict:
    return {
        "event_id": event_id,
        "start": start,
        "end": start + 3600,
        "duration_s": 3600.0,
        "program": program,
        "verified_reduction_kw": kw,
        "estimated_incentive_cny": cny,
        **kw_,
    }


def test_money_sums_the_year_and_leaves_out_tests_and_other_years() -> None:
    rows = [
        settlement("a", ts(2025, 3, 3), 100.0, 10000.0),
        settlement("b", ts(2025, 3, 3, 13), 80.0, 8000.0),
        settlement("c", ts(2025, 5, 1), 50.0, 6500.0, program="realtime"),
        settlement("t", ts(2025, 5, 2), 90.0, 0.0, test_event=True),
        settlement("old", ts(2024, 12, 31), 100.0, 10000.0),
    ]
    m = money(rows, TZ, 2025)
    assert m["total"] == {
        "events_settled": 3,
        "verified_kw_sum": 230.0,
        "verified_kw_mean": pytest.approx(76.667, abs=1e-3),
        "verified_kwh": 230.0,
        "estimated_incentive_cny": 24500.0,
    }
    assert m["programs"]["realtime"]["estimated_incentive_cny"] == 6500.0
    assert m["days"]["2025-03-03"] == {"events": 2, "hours": 2.0, "verified_kwh": 180.0}


def event_row(event_id: str, start: float, state: str, opt: str = "in", program: str = "contracted") -> dict:
    return {
        "event_id": event_id,
        "opt": opt,
        "state": state,
        "effective_start": start,
        "payload": {
            "start": datetime.fromtimestamp(start, TZ).isoformat(),
            "duration_s": 3600,
            "program": program,
        },
    }


def test_year_books_apply_participation_to_the_money() -> None:
    c = ContractConfig.model_validate(
        {
            "peak_kw": 1000,
            "min_events_per_year": 10,
            "default_below_events_per_year": 5,
            "incentive_cny_per_kw": 100,
        }
    )
    starts = [ts(2025, 3, d) for d in range(3, 10)]
    rows = [event_row(f"e{i}", t, "completed") for i, t in enumerate(starts)]
    rows.append(event_row("cancelled-early", ts(2025, 4, 1), "cancelled"))  # never ran: not counted
    rows.append(event_row("declined", ts(2025, 4, 2), "opted_out", opt="out"))
    rows.append(event_row("next", ts(2025, 12, 1), "far"))
    settled = [settlement(f"e{i}", t, 100.0, 10000.0) for i, t in enumerate(starts)]
    books = year_books(c, TZ, 2025, ts(2025, 12, 31, 23), rows, settled)
    assert books["programs"]["contracted"]["events"] == 8 and books["programs"]["contracted"]["planned"] == 1
    assert books["participation"]["responses"] == 7
    m = books["money"]
    assert m["total"]["estimated_incentive_cny"] == 70000.0
    assert m["participation_factor"] == pytest.approx(0.7)
    assert m["estimated_incentive_after_participation_cny"] == pytest.approx(49000.0)
    assert books["days"]["2025-03-03"]["events"] == 1


def test_ledger_entries_count_a_cancelled_event_only_if_it_ran() -> None:
    rows = [event_row("ran", ts(2025, 6, 2), "cancelled"), event_row("never", ts(2025, 6, 3), "cancelled")]
    entries = ledger_entries(
        rows, {"ran": settlement("ran", ts(2025, 6, 2), 10.0, 0.0) | {"end": ts(2025, 6, 2) + 600}}
    )
    assert [(e.event_id, e.state, e.hours) for e in entries] == [("ran", "cancelled", pytest.approx(1 / 6))]
