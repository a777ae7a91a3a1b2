"""Charts of a simulated (or recorded) event: baseline, measured load, the band and the steps.

matplotlib is the optional `charts` extra; `charts_available()` lets a command
say how to install it before doing any work.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

INSTALL_HINT = "charts need matplotlib: pip install 'dr-agent[charts]' (or: pip install matplotlib)"


class ChartsUnavailable(RuntimeError):
    """matplotlib is not installed."""


def charts_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot_event(
    path: str | Path,
    timeline: Sequence[dict[str, Any]],
    *,
    tz: ZoneInfo,
    title: str,
    event_window: tuple[float, float],
    actions: Sequence[dict[str, Any]] = (),
) -> None:
    """Write a PNG: measured site load, the baseline, the band as the load range it allows, the steps."""
    if not charts_available():
        raise ChartsUnavailable(INSTALL_HINT)
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    def t(ts: float) -> datetime:
        return datetime.fromtimestamp(ts, tz)

    xs = [t(s["ts"]) for s in timeline if s.get("measured_kw") is not None]
    load = [s["measured_kw"] for s in timeline if s.get("measured_kw") is not None]
    raw = [s.get("site_kw_raw") for s in timeline if s.get("measured_kw") is not None]
    banded = [s for s in timeline if s.get("baseline_kw") is not None and s.get("band_kw")]
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=100)
    if any(r is not None for r in raw):
        ax.plot(
            xs,
            [r if r is not None else float("nan") for r in raw],
            color="#bbbbbb",
            lw=0.8,
            label="meter (raw)",
        )
    ax.plot(xs, load, color="#1f77b4", lw=1.6, label="measured load (filtered)")
    if banded:
        bx = [t(s["ts"]) for s in banded]
        base = [s["baseline_kw"] for s in banded]
        ax.plot(bx, base, color="black", ls="--", lw=1.2, label="baseline")
        ax.fill_between(
            bx,
            [s["baseline_kw"] - s["band_kw"][1] for s in banded],
            [s["baseline_kw"] - s["band_kw"][0] for s in banded],
            color="#2ca02c",
            alpha=0.18,
            label="contracted band (load range)",
        )
        committed = [s for s in banded if s.get("committed_kw") is not None]
        if committed:
            ax.plot(
                [t(s["ts"]) for s in committed],
                [s["baseline_kw"] - s["committed_kw"] for s in committed],
                color="#2ca02c",
                ls=":",
                lw=1.2,
                label="baseline - committed",
            )
    start, end = event_window
    ax.axvspan(t(start), t(end), color="#ff7f0e", alpha=0.06, label="event")
    ymin, ymax = ax.get_ylim()
    for i, act in enumerate(actions):
        colour = "#d62728" if act["op"] == "shed" else "#9467bd"
        ax.axvline(t(act["ts"]), color=colour, lw=0.7, alpha=0.6)
        ax.annotate(
            ("+" if act["op"] == "shed" else "−") + act["step"],
            (t(act["ts"]), ymax - (ymax - ymin) * (0.04 + 0.045 * (i % 8))),
            fontsize=6.5,
            color=colour,
            rotation=0,
        )
    ax.set_title(title)
    ax.set_ylabel("site load, kW")
    ax.set_xlabel(f"local time ({tz.key})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
