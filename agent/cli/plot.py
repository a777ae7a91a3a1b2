"""Charts of a simulated (or recorded) event: baseline, measured load, the band and the steps.

matplotlib is the optional `charts` extra; `charts_available()` lets a command
say how to install it before doing any work.
"""

from __future__ import annotations

import importlib.util
import textwrap
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
    """Write a PNG: measured site load, the baseline, the band as the load range it allows, the steps.

    Steps shed or released in the same cycle share one numbered marker; a table under the chart
    says what each number did, so labels never pile up where many steps move at once.
    """
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
    groups = group_actions(actions)
    columns = step_table(groups, t) if groups else []
    table_in = 0.3 + 0.15 * max(len(c) for c in columns) if groups else 0.0
    fig = plt.figure(figsize=(11, 5.5 + table_in), dpi=100)
    if groups:
        grid = fig.add_gridspec(2, 1, height_ratios=[5.5, table_in])
        ax = fig.add_subplot(grid[0])
        ax_table = fig.add_subplot(grid[1])
    else:
        ax = fig.add_subplot()
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
    if groups:
        ymin, ymax = ax.get_ylim()
        ax.set_ylim(ymin, ymax + (ymax - ymin) * 0.25)  # headroom: the step markers sit above the curves
        _mark_steps(ax, groups, t)
        _draw_table(ax_table, columns)
    ax.set_title(title)
    ax.set_ylabel("site load, kW")
    ax.set_xlabel(f"local time ({tz.key})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    # Not fig.autofmt_xdate(): with the table as a second row it hides the chart's time labels.
    for label in ax.get_xticklabels():
        label.set_rotation(30)
        label.set_horizontalalignment("right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


SHED_COLOUR = "#d62728"
RELEASE_COLOUR = "#9467bd"
LANES = 4  # marker rows: a marker too close to the previous one in its row takes the next row
MAX_LINES = 14  # table lines in one column before a second column starts
WIDTH_CHARS = (150, 76)  # characters per table line with one column, with two


def group_actions(actions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive actions of one cycle (same time, same op) as one group: {ts, op, steps}."""
    groups: list[dict[str, Any]] = []
    for a in actions:
        last = groups[-1] if groups else None
        if last is not None and last["ts"] == a["ts"] and last["op"] == a["op"]:
            last["steps"].append(a["step"])
        else:
            groups.append({"ts": a["ts"], "op": a["op"], "steps": [a["step"]]})
    return groups


def step_table(groups: Sequence[dict[str, Any]], t: Any) -> list[list[tuple[str, str]]]:
    """The table under the chart as columns of (colour, line); a long group wraps, never truncated."""

    def entries(width: int) -> list[list[tuple[str, str]]]:
        out = []
        for n, g in enumerate(groups, start=1):
            colour = SHED_COLOUR if g["op"] == "shed" else RELEASE_COLOUR
            verb = "shed" if g["op"] == "shed" else "released"
            head = f"{n:>2}  {t(g['ts']):%H:%M:%S}  {verb:8}  "
            text = textwrap.wrap(", ".join(g["steps"]), max(20, width - len(head)), break_on_hyphens=False)
            out.append([(colour, (head if i == 0 else " " * len(head)) + w) for i, w in enumerate(text)])
        return out

    one = entries(WIDTH_CHARS[0])
    if sum(len(e) for e in one) <= MAX_LINES:
        return [[line for e in one for line in e]]
    two = entries(WIDTH_CHARS[1])
    total = sum(len(e) for e in two)
    left: list[tuple[str, str]] = []
    right: list[tuple[str, str]] = []
    for e in two:  # whole groups, about half of the lines on the left
        if not right and (not left or len(left) + len(e) <= (total + 1) // 2):
            left.extend(e)
        else:
            right.extend(e)
    return [left, right]


def assign_lanes(times: Sequence[float], min_gap: float, lanes: int = LANES) -> list[int]:
    """A row for each marker (times ascending): the first row whose last marker is `min_gap` away."""
    last: list[float | None] = [None] * lanes
    out = []
    for x in times:
        free = [i for i in range(lanes) if last[i] is None or x - (last[i] or 0.0) >= min_gap]
        # All rows crowded: the row whose last marker is oldest overlaps least.
        lane = free[0] if free else min(range(lanes), key=lambda i: last[i] or 0.0)
        last[lane] = x
        out.append(lane)
    return out


def _mark_steps(ax: Any, groups: list[dict[str, Any]], t: Any) -> None:
    """A line and a numbered marker per group, in rows under the chart's top edge."""
    import matplotlib.transforms as mtransforms

    x0, x1 = ax.get_xlim()  # matplotlib date numbers (days)
    span_s = max(x1 - x0, 1e-9) * 86400
    lanes = assign_lanes([g["ts"] for g in groups], span_s * 0.022)
    # x in data, y in axes fraction.
    trans = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    for n, (g, lane) in enumerate(zip(groups, lanes, strict=True), start=1):
        colour = SHED_COLOUR if g["op"] == "shed" else RELEASE_COLOUR
        ax.axvline(t(g["ts"]), color=colour, lw=0.7, alpha=0.5)
        ax.annotate(
            str(n),
            (t(g["ts"]), 0.965 - 0.055 * lane),
            xycoords=trans,
            ha="center",
            va="center",
            fontsize=7,
            color="white",
            bbox={"boxstyle": "circle,pad=0.25", "fc": colour, "ec": "none"},
        )


def _draw_table(ax_table: Any, columns: list[list[tuple[str, str]]]) -> None:
    ax_table.axis("off")
    rows = max(len(c) for c in columns)
    for col, lines in enumerate(columns):
        for row, (colour, text) in enumerate(lines):
            ax_table.text(
                col / len(columns),
                1.0 - (row + 0.5) / rows,
                text,
                transform=ax_table.transAxes,
                fontsize=7.5,
                family="monospace",
                color=colour,
                va="center",
            )
