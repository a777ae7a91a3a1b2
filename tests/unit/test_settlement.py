"""Settlement maths against hand calculations (verified kW = (E_baseline - E_metered) / duration)."""

from __future__ import annotations

import pytest

from agent.settlement.formula import energy_kwh, minute_means, settle


def test_energy_holds_each_sample_until_the_next() -> None:
    # 100 kW for 30 min then 200 kW for 30 min = 50 + 100 = 150 kWh.
    kwh, covered = energy_kwh([(0.0, 100.0), (1800.0, 200.0)], 0.0, 3600.0, max_hold_s=3600)
    assert kwh == pytest.approx(150.0)
    assert covered == pytest.approx(3600.0)


def test_energy_clips_to_the_window_and_reports_gaps() -> None:
    # A sample before the window counts only from the window start; nothing before the first sample.
    kwh, covered = energy_kwh([(-600.0, 60.0), (600.0, 120.0)], 0.0, 1200.0, max_hold_s=3600)
    assert kwh == pytest.approx(60 * 600 / 3600 + 120 * 600 / 3600)
    kwh, covered = energy_kwh([(600.0, 120.0)], 0.0, 1200.0, max_hold_s=3600)
    assert covered == pytest.approx(600.0)
    # A reading does not stand for more than max_hold_s: a silent meter is a gap.
    kwh, covered = energy_kwh([(0.0, 120.0)], 0.0, 1200.0, max_hold_s=30)
    assert covered == pytest.approx(30.0) and kwh == pytest.approx(1.0)


def test_minute_means() -> None:
    samples = [(0.0, 10.0), (30.0, 20.0), (60.0, 40.0), (119.0, 50.0)]
    assert minute_means(samples, 0.0, 120.0) == [(0.0, 15.0), (60.0, 45.0)]


def test_settlement_matches_a_hand_calculation() -> None:
    # Baseline 900 kW flat; metered 800 kW for the first 30 min, 760 kW for the next 30 min.
    # E_b = 900 kWh, E_m = 400 + 380 = 780 kWh, verified = (900 - 780) / 1 h = 120 kW = 12 % of 1000 kW.
    samples = [(float(t), 800.0) for t in range(0, 1800)] + [(float(t), 760.0) for t in range(1800, 3600)]
    s = settle(
        event_id="e1",
        samples=samples,
        start=0.0,
        end=3600.0,
        baseline_kw=900.0,
        baseline_method="realtime_15min",
        peak_kw=1000.0,
        band_pct=(5.0, 20.0),
        committed_kw=100.0,
        incentive_cny_per_kw=100.0,
    )
    assert s["verified_reduction_kw"] == pytest.approx(120.0, rel=1e-3)
    assert s["verified_reduction_pct_of_peak"] == pytest.approx(12.0, rel=1e-3)
    assert s["baseline_kwh"] == pytest.approx(900.0)
    assert s["measured_kwh"] == pytest.approx(780.0, rel=1e-3)
    assert s["in_band"] is True and s["in_band_fraction"] == 1.0
    assert s["compliance"] == 1.0
    assert s["estimated_incentive_cny"] == pytest.approx(12000.0, rel=1e-3)


def test_in_band_fraction_ignores_the_first_minute_and_counts_minutes_out_of_band() -> None:
    # Baseline 1000; minute 0 unshed (out of band, ignored); minutes 1-7 shed 100 kW (in band);
    # minutes 8-9 shed 300 kW (above the 200 kW top): 7 of 9 judged minutes in band.
    samples = []
    for m in range(10):
        kw = 1000.0 if m == 0 else (900.0 if m < 8 else 700.0)
        samples += [(m * 60.0 + s, kw) for s in range(0, 60, 5)]
    s = settle(
        event_id="e2",
        samples=samples,
        start=0.0,
        end=600.0,
        baseline_kw=1000.0,
        baseline_method="x",
        peak_kw=1000.0,
        band_pct=(5.0, 20.0),
        committed_kw=100.0,
    )
    assert s["minutes_judged"] == 9
    assert s["in_band_fraction"] == pytest.approx(7 / 9, rel=1e-3)
    assert s["in_band_fraction_all"] == pytest.approx(7 / 10, rel=1e-3)


def test_partial_coverage_is_reported_not_hidden() -> None:
    samples = [(float(t), 800.0) for t in range(0, 1800)]  # meter silent for the second half
    s = settle(
        event_id="e3",
        samples=samples,
        start=0.0,
        end=3600.0,
        baseline_kw=900.0,
        baseline_method="x",
        peak_kw=1000.0,
        band_pct=(5.0, 20.0),
        committed_kw=100.0,
    )
    assert s["data_coverage"] == pytest.approx(0.5, abs=0.01)
