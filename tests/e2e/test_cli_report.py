"""`dr-agent report` on a database the agent wrote: the list, one event, the year, CSV, JSON and the chart."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
from pathlib import Path

import pytest

from agent.cli.simulate import BASELINE_LEAD_S, simulate_event
from agent.config.load import load_site_config
from tests.helpers import dr_agent
from tests.integration.test_settlement_sim import DEMO, Recorder, demo_event, history_rows

pytestmark = pytest.mark.e2e

EVENT = "JS-20250715-01"


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agent's database after one simulated event with three weeks of metered history before it."""
    path = tmp_path_factory.mktemp("report") / "agent.sqlite"
    cfg, _ = load_site_config(DEMO)
    ev = demo_event(EVENT)
    rec = Recorder(history=history_rows(cfg, 21, ev.start_ts - BASELINE_LEAD_S), keep_db=path)
    res = asyncio.run(simulate_event(cfg, ev, on_tick=rec, tail_s=1200))
    assert res.settlement is not None and path.is_file()
    return path


def report(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*dr_agent(), "report", "-c", str(DEMO), "--db", str(db), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_list_and_one_event_as_tables(db: Path) -> None:
    p = report(db)
    assert p.returncode == 0, p.stderr
    head, row = p.stdout.splitlines()[:2]
    assert "verified kW" in head and "incentive CNY" in head
    assert row.startswith(EVENT) and "2025-07-15 10:30-10:45" in row and "realtime_15min" in row

    p = report(db, EVENT)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "official: realtime_15min" in out and "data         ok" in out
    for method in (
        "jiangsu_5day",
        "beijing_5of10",
        "caiso_10in10",
        "pjm_high4of5",
        "linear_trend",
        "regression",
    ):
        line = next(line for line in out.splitlines() if line.startswith(method))
        assert "unavailable" not in line, line
    assert (
        next(line for line in out.splitlines() if line.startswith("realtime_15min")).split()[1] == "official"
    )


def test_json_and_csv_agree_with_the_stored_settlement(db: Path) -> None:
    p = report(db, EVENT, "--format", "json")
    assert p.returncode == 0, p.stderr
    body = json.loads(p.stdout)
    assert body["event_id"] == EVENT and set(body["baselines"]) >= {"jiangsu_5day", "regression"}
    hours = body["duration_s"] / 3600
    assert body["verified_reduction_kw"] == pytest.approx(
        (body["baseline_kwh"] - body["measured_kwh"]) / hours, abs=0.01
    )
    p = report(db, EVENT, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    by = {r["method"]: r for r in rows}
    assert by["realtime_15min"]["official"] == "True"
    assert float(by["jiangsu_5day"]["verified_reduction_kw"]) == pytest.approx(
        body["baselines"]["jiangsu_5day"]["verified_reduction_kw"]
    )
    listed = json.loads(report(db, "--format", "json").stdout)
    assert [s["event_id"] for s in listed] == [EVENT] and "curves" not in listed[0]


def test_year_books(db: Path) -> None:
    p = report(db, "--year", "2025", "--format", "json")
    assert p.returncode == 0, p.stderr
    books = json.loads(p.stdout)
    assert books["programs"]["contracted"]["events"] == 1
    assert books["money"]["total"]["events_settled"] == 1
    assert books["money"]["total"]["estimated_incentive_cny"] > 0
    assert list(books["days"]) == ["2025-07-15"]
    p = report(db, "--year", "2025")
    assert p.returncode == 0 and "contracted" in p.stdout and "2025-07-15" in p.stdout


def test_png_chart(db: Path, tmp_path: Path) -> None:
    png = tmp_path / "event.png"
    p = report(db, EVENT, "--png", str(png))
    assert p.returncode == 0, p.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000
    assert f"wrote {png}" in p.stderr


def test_errors_name_what_is_missing(db: Path, tmp_path: Path) -> None:
    p = report(db, "no-such-event")
    assert p.returncode == 1 and "no settlement for event 'no-such-event'" in p.stderr and EVENT in p.stderr
    p = subprocess.run(
        [*dr_agent(), "report", "--db", str(tmp_path / "missing.sqlite")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "no such database" in p.stderr
    assert not (tmp_path / "missing.sqlite").exists()
