"""Metering history on real SQLite: aggregates, gaps kept as gaps, retention per table and device."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config.model import StorageConfig
from agent.platform.store import Store
from agent.settlement.history import Pruner, load_series, prune, series_gaps

pytestmark = pytest.mark.integration

T0 = 1_752_000_000.0 // 900 * 900  # a quarter-hour boundary


def test_minute_and_quarter_hour_aggregates_and_gaps(tmp_path: Path) -> None:
    s = Store(tmp_path / "h.sqlite")
    # Readings every 10 s for 30 minutes at 100 kW, then 200 kW; minutes 10-12 silent.
    rows = [("meter", T0 + t, 100.0 if t < 900 else 200.0) for t in range(0, 1800, 10) if not 600 <= t < 780]
    s.add_readings(rows)
    minutes = load_series(s, "meter", T0, T0 + 1800)
    assert minutes.step_s == 60 and len(minutes.values) == 30
    assert minutes.values[0] == 100.0 and minutes.values[15] == 200.0
    assert minutes.values[10:13] == [None, None, None]  # a gap, not a guess
    assert [(g.start - T0, g.end - T0) for g in series_gaps(minutes)] == [(600.0, 780.0)]
    quarters = load_series(s, "meter", T0, T0 + 1800, step_s=900)
    assert quarters.values == [100.0, 200.0]
    # Widened to whole intervals; an interval outside the data is a gap too.
    wide = load_series(s, "meter", T0 - 30, T0 + 1830)
    assert wide.start == T0 - 60 and wide.values[0] is None and wide.values[-1] is None
    with pytest.raises(ValueError, match="60 or 900"):
        load_series(s, "meter", T0, T0 + 60, step_s=300)
    s.close()


def test_batches_fold_into_the_same_aggregates(tmp_path: Path) -> None:
    s = Store(tmp_path / "h.sqlite")
    s.add_readings([("meter", T0 + t, 100.0) for t in range(0, 30)])
    s.add_readings([("meter", T0 + t, 160.0) for t in range(30, 60)])
    assert load_series(s, "meter", T0, T0 + 60).values == [130.0]
    assert s.db.execute("SELECT n, kw_min, kw_max FROM readings_15m").fetchone() == (60, 100.0, 160.0)
    s.close()


def test_retention_per_table_and_device(tmp_path: Path) -> None:
    s = Store(tmp_path / "h.sqlite")
    day = 86400.0
    now = T0 + 500 * day
    for age_days in (1, 10, 50, 450, 900):
        t = now - age_days * day
        s.add_readings([("meter", t, 1.0), ("chiller", t, 2.0)])
    storage = StorageConfig(
        raw_retention_s=2 * day,
        meter_minute_retention_days=400,
        device_minute_retention_days=35,
        quarter_hour_retention_days=800,
    )
    deleted = prune(s, storage, ["meter", "chiller"], "meter", now)

    def ages(table: str, device: str, col: str, step: float) -> list[int]:
        rows = s.db.execute(f"SELECT {col} FROM {table} WHERE device=? ORDER BY {col} DESC", (device,))
        return [round((now - r[0] * step) / day) for r in rows]

    assert ages("readings", "meter", "ts", 1) == [1]
    assert ages("readings_1m", "meter", "minute", 60) == [1, 10, 50]
    assert ages("readings_1m", "chiller", "minute", 60) == [1, 10]
    assert ages("readings_15m", "chiller", "quarter", 900) == [1, 10, 50, 450]
    # raw 4+4, minutes 2 (meter) + 3 (chiller), quarters 1+1.
    assert deleted == 8 + 5 + 2
    s.close()


def test_pruner_runs_at_most_hourly(tmp_path: Path) -> None:
    s = Store(tmp_path / "h.sqlite")
    p = Pruner()
    assert p.due(T0)
    p.run(s, StorageConfig(), ["meter"], "meter", T0)
    assert not p.due(T0 + 3599) and p.due(T0 + 3600)
    s.close()


def test_a_failed_batch_leaves_no_half_written_aggregates(tmp_path: Path) -> None:
    s = Store(tmp_path / "h.sqlite")
    s.add_readings([("meter", T0, 100.0)])
    with pytest.raises(Exception):  # noqa: B017 - any error from inside the batch
        s.add_readings([("meter", T0 + 1, 100.0), ("meter", T0 + 2, None)])  # type: ignore[list-item]
    assert s.db.execute("SELECT count(*) FROM readings").fetchone()[0] == 1
    assert s.db.execute("SELECT n FROM readings_1m").fetchone()[0] == 1
    s.close()
