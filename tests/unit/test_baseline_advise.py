"""`dr-agent baseline advise` and `mark-shutdown`: the backtest ranks an exact method first; a marked
day lands in a config fragment that validates, and a bad one changes nothing."""

from __future__ import annotations

import json
import shutil
from datetime import date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.cli import main
from agent.cli.cmd_baseline import backtest, pseudo_event_days
from agent.config.calendar import Calendar
from agent.config.load import load_site_config
from agent.platform.store import Store
from agent.settlement.baseline import LoadSeries

REPO = Path(__file__).resolve().parents[2]
SH = ZoneInfo("Asia/Shanghai")
CAL = Calendar(tz="Asia/Shanghai", weekend=frozenset())  # a plant running 7 days a week


def trend_load(lt: datetime, k: int) -> float:
    """500 kW plus k (days since the start) times a slope that depends on the hour: 2 kW/day in the
    morning, 8 kW/day in 14:00-16:00, 0 otherwise. Linear in k at every interval, so linear_trend is
    exact by construction; the real-time rule (13:45 load), the day-of adjustments (fitted on the
    morning's slope) and the plain averages (lagging) are not."""
    h = lt.hour
    slope = 8.0 if 14 <= h < 16 else 2.0 if 8 <= h < 14 else 0.0
    return 500.0 + k * slope


def series(days: int, f=trend_load, step_s: int = 900) -> LoadSeries:
    first = date(2025, 9, 1)
    t0 = datetime.combine(first, time(0), tzinfo=SH).timestamp()
    vals = []
    for i in range(days * 86400 // step_s):
        lt = datetime.fromtimestamp(t0 + i * step_s, SH)
        vals.append(f(lt, (lt.date() - first).days))
    return LoadSeries(t0, step_s, vals)


def test_the_advisor_ranks_the_method_that_is_exact_by_construction_first() -> None:
    s = series(50)
    days = pseudo_event_days(s, CAL, time(14), time(16), frozenset())[20:]
    scores = backtest(s, CAL, time(14), time(16), days, draws=200)
    ranked = list(scores)
    assert ranked[0] == "linear_trend"
    best = scores["linear_trend"]
    assert best.n == len(days) == 30 and best.cv_rmse == pytest.approx(0.0, abs=1e-9)
    # Every other method is off, and the plain averages under-credit a growing load.
    for m in ranked[1:]:
        assert (scores[m].cv_rmse or 0) > 0.01, m
    assert (scores["jiangsu_5day"].nmbe or 0) < 0 and scores["jiangsu_5day"].nmbe_ci is not None
    lo, hi = scores["jiangsu_5day"].nmbe_ci
    assert lo <= (scores["jiangsu_5day"].nmbe or 0) <= hi < 0


def _site(tmp_path: Path) -> Path:
    cfg = tmp_path / "site.yaml"
    shutil.copy(REPO / "config" / "demo-site.yaml", cfg)
    return cfg


def test_advise_on_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The demo site's meter with 40 days of the trend load, as 1-minute readings in a real SQLite file.
    cfg_path = _site(tmp_path)
    cfg, _ = load_site_config(cfg_path)
    db = tmp_path / "site.sqlite"
    s = series(40, step_s=300)
    store = Store(db)
    store.add_readings(
        (cfg.site.meter, s.time_at(i) + j * 60, v)
        for i, v in enumerate(s.values)
        if v is not None
        for j in range(5)
    )
    store.close()
    rc = main(
        ["baseline", "advise", "-c", str(cfg_path), "--db", str(db), "--window", "14:00-16:00", "--json"]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    # Weekends are not pseudo-events on the demo calendar; on working days linear_trend is still exact.
    assert out["best"] == "linear_trend"
    assert out["official"] == cfg.contract.official_baseline
    assert out["methods"]["linear_trend"]["cv_rmse"] == pytest.approx(0.0, abs=1e-9)
    rc = main(["baseline", "advise", "-c", str(cfg_path), "--db", str(db), "--window", "14:00-16:00"])
    text = capsys.readouterr().out
    assert rc == 0 and "Fairest rule for this site: linear_trend" in text
    assert "The contract settles on realtime_15min (*)" in text
    assert main(["baseline", "advise", "-c", str(cfg_path), "--db", str(tmp_path / "none.sqlite")]) == 2
    assert "no such database" in capsys.readouterr().err


def test_mark_shutdown_writes_a_fragment_that_validates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_path = _site(tmp_path)
    assert (
        main(["baseline", "mark-shutdown", "-c", str(cfg_path), "2026-11-20", "--reason", "boiler repair"])
        == 0
    )
    assert main(["baseline", "mark-shutdown", "-c", str(cfg_path), "2026-11-06"]) == 0
    frag = tmp_path / "conf.d" / "50-shutdown-days.yaml"
    text = frag.read_text()
    assert "    - 2026-11-06\n    - 2026-11-20  # boiler repair\n" in text
    cfg, _ = load_site_config(cfg_path)
    assert cfg.calendar.shutdown_days == [date(2026, 11, 6), date(2026, 11, 20)]
    assert cfg.calendar.calendar(cfg.site.timezone).is_shutdown(date(2026, 11, 20))
    assert main(["baseline", "mark-shutdown", "-c", str(cfg_path), "2026-11-20"]) == 0
    assert "already marked" in capsys.readouterr().out
    # Not a date: a clear error, nothing written.
    assert main(["baseline", "mark-shutdown", "-c", str(cfg_path), "20-11-2026"]) == 2
    assert "is not a date; write YYYY-MM-DD" in capsys.readouterr().err
    assert frag.read_text() == text


def test_advise_window_from_the_contract() -> None:
    from agent.cli.cmd_baseline import contract_window

    cfg, _ = load_site_config(REPO / "config" / "demo-site.yaml")
    assert contract_window(cfg, None) == (time(10), time(12))  # allowed 10:00-15:00: its first 2 h
    assert contract_window(cfg, "13:30-14:15") == (time(13, 30), time(14, 15))
