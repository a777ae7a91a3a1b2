"""Settlement maths: pure functions over metered samples, no clock, no I/O.

verified reduction kW = (baseline energy - metered energy) / event duration
(the Jiangsu rule, DOMAIN.md). Energy integrates the samples as a step
function (each reading holds until the next), the way interval meters do.
In-band is judged on 1-minute means of realized curtailment, the granularity
of interval metering, not on single noisy readings.

The baseline is any method of `agent.settlement.baseline` (the programme's official one
settles; the others are reported beside it); a flat baseline is the live
real-time one. docs/settlement.md describes every field of the record.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.settlement.baseline import BaselineResult, LoadSeries


@dataclass(frozen=True)
class Gap:
    """A span with no readings: [start, end) epoch s."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def as_dict(self) -> dict[str, float]:
        return {"start": self.start, "end": self.end, "seconds": round(self.seconds, 1)}


def sample_gaps(
    samples: Iterable[tuple[float, float]], start: float, end: float, max_hold_s: float
) -> list[Gap]:
    """Spans of [start, end) that no reading covers, each reading holding for at most `max_hold_s`
    (the same rule the settlement's energy uses, so the gaps listed are the energy not counted)."""
    out: list[Gap] = []
    covered_to = start
    for ts, _kw in sorted(samples):
        if ts >= end:
            break
        if ts > covered_to:
            out.append(Gap(covered_to, ts))
        covered_to = max(covered_to, min(end, ts + max_hold_s))
    if covered_to < end:
        out.append(Gap(covered_to, end))
    return [g for g in out if g.seconds > 0]


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


def _flat(kw: float, start: float, end: float) -> LoadSeries:
    """A flat baseline as a one-interval series covering [start, end)."""
    return LoadSeries(start, max(1, math.ceil(end - start)), [kw])


def _curve(res: BaselineResult) -> LoadSeries:
    return LoadSeries(res.start, res.step_s, list(res.curve_kw))


def _value_at(series: LoadSeries, ts: float) -> float | None:
    i = math.floor((ts - series.start) / series.step_s)
    return series.values[i] if 0 <= i < len(series.values) else None


def baseline_summary(
    res: BaselineResult, start: float, end: float, measured_full_kwh: float
) -> dict[str, Any]:
    """One method's line in the settlement: its mean and energy over [start, end) and the reduction it implies."""
    hours = (end - start) / 3600
    out: dict[str, Any] = {"available": res.available, "official": res.official}
    if res.available and hours > 0:
        e = _curve(res).energy_kwh(start, end)
        kwh = e.kwh / e.coverage if e.coverage > 0 else float("nan")
        out.update(
            {
                "mean_kw": round(kwh / hours, 3),
                "energy_kwh": round(kwh, 4),
                "verified_reduction_kw": round((kwh - measured_full_kwh) / hours, 3)
                if math.isfinite(measured_full_kwh)
                else None,
                "days_used": [d.isoformat() for d in res.days_used],
                "coverage": round(res.coverage, 4),
            }
        )
        if res.adjustment_kw is not None:
            out["adjustment_kw"] = round(res.adjustment_kw, 3)
        if res.adjustment_ratio is not None:
            out["adjustment_ratio"] = round(res.adjustment_ratio, 4)
    else:
        out.update({"mean_kw": None, "energy_kwh": None, "verified_reduction_kw": None})
    out["reason"] = res.reason
    if res.notes:
        out["notes"] = list(res.notes)
    return out


def data_quality(
    samples: Sequence[tuple[float, float]],
    start: float,
    end: float,
    *,
    max_hold_s: float,
    stale_after_s: float,
    baseline_ok: bool,
) -> dict[str, Any]:
    """What the settlement can be trusted for: meter coverage, its gaps, a stale meter, the baseline.

    status: ok (≥ 99 % covered, official baseline), degraded (≥ 90 %, or a
    fallback baseline), poor (less: the verified reduction is an estimate).
    """
    _kwh, covered = energy_kwh(samples, start, end, max_hold_s)
    coverage = covered / (end - start) if end > start else 0.0
    gaps = sample_gaps(samples, start, end, max_hold_s)
    longest = max((g.seconds for g in gaps), default=0.0)
    n = sum(1 for ts, _ in samples if start <= ts < end)
    if coverage >= 0.99 and baseline_ok:
        status = "ok"
    elif coverage >= 0.9:
        status = "degraded"
    else:
        status = "poor"
    return {
        "status": status,
        "meter_coverage": round(coverage, 4),
        "samples": n,
        "gap_count": len(gaps),
        "gap_seconds": round(sum(g.seconds for g in gaps), 1),
        "longest_gap_s": round(longest, 1),
        "meter_stale": longest > stale_after_s,
        # The first gaps only: a dead meter would otherwise make one gap per poll.
        "gaps": [g.as_dict() for g in gaps[:20]],
    }


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
    baselines: Mapping[str, BaselineResult] | None = None,
    official_baseline: str | None = None,
    max_hold_s: float = 30.0,
    stale_after_s: float = 10.0,
) -> dict[str, Any]:
    """The settlement record of one event (what the site is paid on, and how well it tracked).

    With `baselines` (every method, from `agent.settlement.baseline.compute_all`) the
    reduction is verified against `official_baseline` when it is available,
    else against the flat `baseline_kw` (`baseline_method`, normally the live
    realtime_15min) with a note; every method's figures are listed beside it.
    """
    duration_s = end - start
    hours = duration_s / 3600
    notes: list[str] = []
    fell_back = False
    official = (baselines or {}).get(official_baseline or "")
    if official is not None and official.available:
        curve = _curve(official)
        method = official.method
    else:
        curve = _flat(baseline_kw, start, end)
        method = baseline_method
        if official_baseline and official_baseline != baseline_method:
            fell_back = True
            why = official.reason if official is not None else "not computed"
            notes.append(
                f"official baseline {official_baseline} unavailable ({why}); settled on {baseline_method}"
            )
    if duration_s > 0:
        e = curve.energy_kwh(start, end)
        baseline_kwh = e.kwh / e.coverage if e.coverage > 0 else float("nan")
    else:
        baseline_kwh = 0.0
    baseline_mean = baseline_kwh / hours if hours > 0 else baseline_kw
    measured_kwh, covered_s = energy_kwh(samples, start, end, max_hold_s)
    coverage = covered_s / duration_s if duration_s > 0 else 0.0
    # Scale measured energy to the full window only for the mean; gaps are reported, not hidden.
    measured_kw = measured_kwh * 3600 / covered_s if covered_s > 0 else float("nan")
    measured_full_kwh = measured_kw * hours if covered_s > 0 else float("nan")
    verified_kw = (baseline_kwh - measured_full_kwh) / hours if hours > 0 else 0.0
    lo_kw, hi_kw = peak_kw * band_pct[0] / 100, peak_kw * band_pct[1] / 100
    minutes = minute_means(samples, start, end)
    realized = []
    for ts, kw in minutes:
        b = _value_at(curve, ts)
        realized.append((ts, (baseline_mean if b is None else b) - kw))
    in_band = [lo_kw <= r <= hi_kw for ts, r in realized if ts >= start + in_band_from_s]
    all_band = [lo_kw <= r <= hi_kw for _ts, r in realized]
    compliance = None
    if committed_kw:
        compliance = min(1.0, max(0.0, verified_kw / committed_kw))
    body: dict[str, Any] = {
        "event_id": event_id,
        "start": start,
        "end": end,
        "duration_s": duration_s,
        "baseline_method": method,
        "official_baseline": official_baseline or baseline_method,
        "baseline_kw": round(baseline_mean, 3),
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
    if baselines:
        body["baselines"] = {
            name: baseline_summary(res, start, end, measured_full_kwh) for name, res in baselines.items()
        }
    body["data_quality"] = data_quality(
        samples,
        start,
        end,
        max_hold_s=max_hold_s,
        stale_after_s=stale_after_s,
        baseline_ok=not fell_back,
    )
    if notes:
        body["notes"] = notes
    if extra:
        body.update(extra)
    return body
