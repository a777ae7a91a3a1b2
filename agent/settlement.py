"""Settlement maths: pure functions over metered samples, no clock, no I/O.

verified reduction kW = (baseline energy - metered energy) / event duration
(the Jiangsu rule, DOMAIN.md). Energy integrates the samples as a step
function (each reading holds until the next), the way interval meters do.
In-band is judged on 1-minute means of realized curtailment, the granularity
of interval metering, not on single noisy readings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def energy_kwh(
    samples: Sequence[tuple[float, float]], start: float, end: float, max_hold_s: float = 30.0
) -> tuple[float, float]:
    """Energy over [start, end) from (ts, kW) samples; returns (kWh, covered seconds).

    Each reading holds until the next one, but at most `max_hold_s`: a silent
    meter is a gap in coverage, not a flat line.
    """
    if end <= start:
        return 0.0, 0.0
    pts = sorted(samples)
    total = 0.0
    covered = 0.0
    for i, (ts, kw) in enumerate(pts):
        nxt = pts[i + 1][0] if i + 1 < len(pts) else end
        a, b = max(ts, start), min(nxt, end, ts + max_hold_s)
        if b > a:
            total += kw * (b - a)
            covered += b - a
    return total / 3600.0, covered


def minute_means(
    samples: Sequence[tuple[float, float]], start: float, end: float
) -> list[tuple[float, float]]:
    """Mean of the samples in each whole minute from `start` (minute start ts, mean kW)."""
    out: list[tuple[float, float]] = []
    buckets: dict[int, list[float]] = {}
    for ts, kw in samples:
        if start <= ts < end:
            buckets.setdefault(int((ts - start) // 60), []).append(kw)
    for i in sorted(buckets):
        vals = buckets[i]
        out.append((start + 60 * i, sum(vals) / len(vals)))
    return out


def settle(
    *,
    event_id: str,
    samples: Sequence[tuple[float, float]],
    start: float,
    end: float,
    baseline_kw: float,
    baseline_method: str,
    peak_kw: float,
    band_pct: tuple[float, float],
    committed_kw: float | None,
    incentive_cny_per_kw: float = 0.0,
    in_band_from_s: float = 60.0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The settlement record of one event (what the site is paid on, and how well it tracked)."""
    duration_s = end - start
    measured_kwh, covered_s = energy_kwh(samples, start, end)
    coverage = covered_s / duration_s if duration_s > 0 else 0.0
    # Scale measured energy to the full window only for the mean; gaps are reported, not hidden.
    measured_kw = measured_kwh * 3600 / covered_s if covered_s > 0 else float("nan")
    baseline_kwh = baseline_kw * duration_s / 3600
    measured_full_kwh = measured_kw * duration_s / 3600 if covered_s > 0 else float("nan")
    verified_kw = (baseline_kwh - measured_full_kwh) / (duration_s / 3600) if duration_s > 0 else 0.0
    lo_kw, hi_kw = peak_kw * band_pct[0] / 100, peak_kw * band_pct[1] / 100
    minutes = minute_means(samples, start, end)
    judged = [(ts, baseline_kw - kw) for ts, kw in minutes if ts >= start + in_band_from_s]
    in_band = [lo_kw <= r <= hi_kw for _ts, r in judged]
    all_band = [lo_kw <= baseline_kw - kw <= hi_kw for _ts, kw in minutes]
    compliance = None
    if committed_kw:
        compliance = min(1.0, max(0.0, verified_kw / committed_kw))
    body: dict[str, Any] = {
        "event_id": event_id,
        "start": start,
        "end": end,
        "duration_s": duration_s,
        "baseline_method": baseline_method,
        "baseline_kw": round(baseline_kw, 3),
        "baseline_kwh": round(baseline_kwh, 4),
        "measured_kw": round(measured_kw, 3),
        "measured_kwh": round(measured_full_kwh, 4),
        "verified_reduction_kw": round(verified_kw, 3),
        "verified_reduction_pct_of_peak": round(verified_kw / peak_kw * 100, 3),
        "committed_kw": None if committed_kw is None else round(committed_kw, 3),
        "compliance": None if compliance is None else round(compliance, 4),
        "band_pct": [band_pct[0], band_pct[1]],
        "band_kw": [round(lo_kw, 3), round(hi_kw, 3)],
        "in_band": lo_kw <= verified_kw <= hi_kw,
        "in_band_fraction": round(sum(in_band) / len(in_band), 4) if in_band else 0.0,
        "in_band_fraction_all": round(sum(all_band) / len(all_band), 4) if all_band else 0.0,
        "in_band_judged_from_s": in_band_from_s,
        "minutes_judged": len(in_band),
        "data_coverage": round(coverage, 4),
        "incentive_cny_per_kw": incentive_cny_per_kw,
        "estimated_incentive_cny": round(max(0.0, min(verified_kw, hi_kw)) * incentive_cny_per_kw, 2),
    }
    if extra:
        body.update(extra)
    return body
