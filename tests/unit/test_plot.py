"""Step markers on the simulate chart: one numbered marker per tick, rows that keep them apart,
a table that names every step (wrapped, never cut)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from agent.cli.plot import assign_lanes, group_actions, plot_event, step_table


def _t(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def test_steps_of_one_tick_share_a_marker() -> None:
    actions = [
        {"ts": 100.0, "op": "shed", "step": "lighting/1:a"},
        {"ts": 100.0, "op": "shed", "step": "lighting/2:b"},
        {"ts": 100.0, "op": "release", "step": "chargers/1:c"},
        {"ts": 160.0, "op": "shed", "step": "chargers/1:c"},
    ]
    groups = group_actions(actions)
    assert [(g["ts"], g["op"], g["steps"]) for g in groups] == [
        (100.0, "shed", ["lighting/1:a", "lighting/2:b"]),
        (100.0, "release", ["chargers/1:c"]),
        (160.0, "shed", ["chargers/1:c"]),
    ]


def test_close_markers_take_separate_rows() -> None:
    # 10 s apart with a 60 s minimum gap: rows 0, 1, 2, 3; then 70 s after the first, row 0 again.
    assert assign_lanes([0, 10, 20, 30, 70], 60.0, lanes=4) == [0, 1, 2, 3, 0]
    # All rows crowded: the row whose last marker is oldest.
    assert assign_lanes([0, 10, 20], 60.0, lanes=2) == [0, 1, 0]


def test_table_wraps_a_long_group_and_names_every_step() -> None:
    steps = [f"chargers/1:ev-charger-{chr(97 + i)}-of-the-car-park" for i in range(12)]
    groups = [{"ts": 0.0, "op": "shed", "steps": steps}]
    groups += [{"ts": 60.0 * i, "op": "release", "steps": [s]} for i, s in enumerate(steps, start=1)]
    columns = step_table(groups, _t)
    assert len(columns) == 2  # more lines than one column holds
    text = "\n".join(line for col in columns for _colour, line in col)
    assert "…" not in text
    for s in steps:
        assert text.count(s) == 2  # once shed in group 1, once released
    assert all(len(line) <= 76 for col in columns for _c, line in col)


def test_png_is_drawn_with_markers_and_table(tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    timeline = [
        {"ts": 1000.0 + i, "measured_kw": 500.0 - (i > 60) * 40, "baseline_kw": 500.0, "band_kw": [25, 100]}
        for i in range(300)
    ]
    actions = [{"ts": 1060.0, "op": "shed", "step": f"stage/{i}:dev-{i}"} for i in range(1, 9)]
    actions.append({"ts": 1200.0, "op": "release", "step": "stage/1:dev-1"})
    out = tmp_path / "chart.png"
    plot_event(
        out, timeline, tz=ZoneInfo("Asia/Shanghai"), title="t", event_window=(1060.0, 1240.0), actions=actions
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
