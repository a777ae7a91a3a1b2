"""`dr-agent report --png`: one event's baselines against the metered load, readable at a glance.

Top panel: the whole local event day, metered load with the event shaded,
so the event sits in the day's shape. Bottom panel: the event and an hour
either side: the official baseline bold, the other methods thin, the target
band (the contract's % of peak below the official baseline) shaded, the
metered load, and the verified reduction in the legend. matplotlib comes
from the `charts` extra and is imported only here, only when asked for.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent.settlement.baseline import LoadSeries

OFFICIAL_COLOUR = "#c0392b"
METER_COLOUR = "#1f3b73"
BAND_COLOUR = "#2e8b57"
EVENT_COLOUR = "#f4d03f"
OTHER_COLOURS = ["#7f8c8d", "#8e44ad", "#d35400", "#16a085", "#2980b9", "#a0522d", "#bdc3c7"]


class ChartsUnavailable(RuntimeError):
    """matplotlib is missing: install the `charts` extra."""


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ChartsUnavailable(
            "charts need matplotlib: pip install 'dr-agent[charts]' (or: pip install matplotlib)"
        ) from exc
    return plt


def _steps(series: LoadSeries, tz: ZoneInfo) -> tuple[list[datetime], list[float]]:
    """Step-plot points of a series; a gap breaks the line (NaN), it is never bridged."""
    xs: list[datetime] = []
    ys: list[float] = []
    for i, v in enumerate(series.values):
        xs.append(datetime.fromtimestamp(series.time_at(i), tz))
        ys.append(math.nan if v is None else v)
    if series.values:
        xs.append(datetime.fromtimestamp(series.end, tz))
        ys.append(ys[-1])
    return xs, ys


def _fmt_kw(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:,.1f} kW"


def render(
    body: dict[str, Any],
    day_load: LoadSeries,
    tz: ZoneInfo,
    out: str | Path,
    *,
    site: str = "",
) -> Path:
    """Write the chart of settlement `body` (with its `curves`) over `day_load` (1-min means) to `out`."""
    plt = _pyplot()
    import matplotlib.dates as mdates
    from matplotlib.patches import Patch

    start, end = float(body["start"]), float(body["end"])
    t0, t1 = datetime.fromtimestamp(start, tz), datetime.fromtimestamp(end, tz)
    official = body.get("baseline_method") or body.get("official_baseline") or "baseline"
    peak = float(body.get("peak_kw") or 0) or None
    lo_kw, hi_kw = body.get("band_kw") or [0.0, 0.0]
    curves = (body.get("curves") or {}).get("kw", {})
    c_start = float((body.get("curves") or {}).get("start", start))
    c_step = int((body.get("curves") or {}).get("step_s", 60))
    verified = body.get("verified_reduction_kw")
    pct = body.get("verified_reduction_pct_of_peak")

    fig, (ax_day, ax) = plt.subplots(
        2, 1, figsize=(12, 8.2), gridspec_kw={"height_ratios": [1, 2.3]}, constrained_layout=True
    )
    when = f"{t0:%Y-%m-%d %H:%M}–{t1:%H:%M}"
    fig.suptitle(
        f"DR event {body['event_id']}  ·  {when} ({tz.key})" + (f"  ·  {site}" if site else ""),
        fontsize=15,
        fontweight="bold",
    )
    committed = body.get("committed_kw")
    compliance = body.get("compliance")
    dq = (body.get("data_quality") or {}).get("status", "?")
    head = [
        f"Verified reduction {_fmt_kw(verified)}" + (f" ({pct:.1f} % of peak)" if pct is not None else ""),
        f"committed {_fmt_kw(committed)}" if committed is not None else "",
        f"compliance {compliance * 100:.0f} %" if compliance is not None else "",
    ]
    tail = [
        f"in band {float(body.get('in_band_fraction', 0)) * 100:.0f} % of minutes",
        f"estimated incentive {float(body.get('estimated_incentive_cny') or 0):,.0f} CNY",
        f"data quality: {dq}",
    ]
    ax_day.set_title(
        "   ·   ".join(s for s in head if s) + "\n" + "   ·   ".join(tail), fontsize=11, loc="left"
    )

    # -- the day ------------------------------------------------------------------
    dx, dy = _steps(day_load, tz)
    ax_day.plot(dx, dy, color=METER_COLOUR, lw=1.0, drawstyle="steps-post", label="Metered load")
    ax_day.axvspan(t0, t1, color=EVENT_COLOUR, alpha=0.45, lw=0, label="Event")
    if official in curves:
        ob = LoadSeries(c_start, c_step, list(curves[official]))
        bx, by = _steps(ob, tz)
        ax_day.plot(
            bx, by, color=OFFICIAL_COLOUR, lw=2.0, drawstyle="steps-post", label=f"Baseline ({official})"
        )
    ax_day.set_ylabel("kW")
    ax_day.set_xlim(datetime.fromtimestamp(day_load.start, tz), datetime.fromtimestamp(day_load.end, tz))
    ax_day.xaxis.set_major_locator(mdates.HourLocator(byhour=range(0, 24, 2), tz=tz))
    ax_day.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=tz))
    ax_day.grid(alpha=0.3)
    ax_day.legend(loc="upper left", fontsize=9, ncols=3, framealpha=0.9)

    # -- the event, zoomed ------------------------------------------------------------
    pad = max(1800.0, min(3600.0, (end - start)))
    z0, z1 = start - pad, end + pad
    zoom = (
        day_load.slice(math.floor(z0 / 60) * 60, math.ceil(z1 / 60) * 60)
        if day_load.step_s == 60
        else day_load
    )
    ax.axvspan(t0, t1, color=EVENT_COLOUR, alpha=0.18, lw=0)
    handles: list[Any] = []
    others = [m for m in curves if m != official]
    for i, m in enumerate(others):
        s = LoadSeries(c_start, c_step, list(curves[m]))
        x, y = _steps(s, tz)
        v = ((body.get("baselines") or {}).get(m) or {}).get("verified_reduction_kw")
        (h,) = ax.plot(
            x,
            y,
            color=OTHER_COLOURS[i % len(OTHER_COLOURS)],
            lw=1.0,
            ls="--",
            drawstyle="steps-post",
            label=f"{m} (would verify {_fmt_kw(v)})",
        )
        handles.append(h)
    if official in curves:
        ob = LoadSeries(c_start, c_step, list(curves[official]))
        x, y = _steps(ob, tz)
        upper = [b - lo_kw for b in y]
        lower = [b - hi_kw for b in y]
        band = ax.fill_between(
            x,
            lower,
            upper,
            step="post",
            color=BAND_COLOUR,
            alpha=0.18,
            lw=0,
        )
        band_label = f"Target band: {lo_kw:,.0f}–{hi_kw:,.0f} kW below baseline"
        if peak:
            bp = body.get("band_pct") or [0, 0]
            band_label += f" ({bp[0]:g}–{bp[1]:g} % of peak)"
        band.set_label(band_label)
        (hb,) = ax.plot(
            x,
            y,
            color=OFFICIAL_COLOUR,
            lw=3.0,
            drawstyle="steps-post",
            label=f"Official baseline ({official}): verified {_fmt_kw(verified)}",
        )
        handles = [hb, band, *handles]
        if committed:
            (hc,) = ax.plot(
                x,
                [b - float(committed) for b in y],
                color=OFFICIAL_COLOUR,
                lw=1.2,
                ls=":",
                drawstyle="steps-post",
                label=f"Commitment: {float(committed):,.0f} kW below the official baseline",
            )
            handles.insert(2, hc)
    mx, my = _steps(zoom, tz)
    (hm,) = ax.plot(
        mx, my, color=METER_COLOUR, lw=1.8, drawstyle="steps-post", label="Metered load (1-min mean)"
    )
    handles.insert(0, hm)
    handles.append(Patch(color=EVENT_COLOUR, alpha=0.35, label="Event window"))
    ax.set_xlim(datetime.fromtimestamp(z0, tz), datetime.fromtimestamp(z1, tz))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=tz))
    ax.set_ylabel("Site load, kW")
    ax.grid(alpha=0.3)
    # Leave room for the legend under the curves.
    ys = [v for v in my if math.isfinite(v)]
    for c in curves.values():
        ys.extend(c)
    ys.extend(v - hi_kw for v in curves.get(official, []))
    if ys:
        span = max(max(ys) - min(ys), 1.0)
        ax.set_ylim(min(ys) - 0.55 * span, max(ys) + 0.1 * span)
    ax.legend(handles=handles, loc="lower left", fontsize=9, ncols=2, framealpha=0.95)
    notes = body.get("notes") or []
    if notes:
        fig.text(0.01, 0.005, "Note: " + "; ".join(notes), fontsize=8, color="#555555")
    path = Path(out)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
