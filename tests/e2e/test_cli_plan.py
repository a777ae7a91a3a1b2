"""`dr-agent plan`: the steps the controller would take, with expected kW, on every shipped example."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import dr_agent

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "strategies" / "examples"
SITES = sorted(p for p in EXAMPLES.glob("*.yaml") if not p.name.endswith(".strategy.yaml"))


def plan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*dr_agent(), "plan", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("site", SITES, ids=lambda p: p.stem)
def test_plan_reaches_band_on_every_example(site: Path) -> None:
    proc = plan("-c", str(site), "--target-pct", "10", "--sim", "--at", "11:00", "--json")
    assert proc.returncode == 0, proc.stderr
    p = json.loads(proc.stdout)
    lo, hi = p["band_kw"]
    assert p["in_band"] is True and lo <= p["expected_kw"] <= hi
    cum = [s["cumulative_kw"] for s in p["steps"]]
    assert cum == sorted(cum) and abs(cum[-1] - p["expected_kw"]) < 0.05
    assert all(s["expected_kw"] > 0 and s["status"] == "shed" for s in p["steps"])
    # Steps come out in stage order: the strategy's order is the controller's.
    stages = [s["stage"] for s in p["steps"]]
    assert stages == sorted(stages, key=[x["stage"] for x in p["steps"] + p["not_used"]].index)


def test_plan_table_shows_constraints_and_what_stops_it() -> None:
    proc = plan(
        "-c", str(EXAMPLES / "factory.yaml"), "--target-kw", "150", "--load-kw", "1300", "--at", "11:00"
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "site load 1300.0 kW (given; device states: simulated defaults)" in out
    assert "band 75.0-300.0 kW" in out and "committed 150.0 kW" in out
    assert "compressor-1" in out and "switch off" in out
    # The compressor's short window and anti-short-cycle times are shown where they bite.
    assert "max_shed_s 900 s < event 1800 s" in out and "min off 300 s / min on 600 s" in out
    assert "result: about" in out and "stops because:" in out


def test_plan_says_when_the_band_cannot_be_reached() -> None:
    proc = plan(
        "-c",
        str(EXAMPLES / "office.yaml"),
        "--target-pct",
        "20",
        "--load-kw",
        "700",
        "--at",
        "09:00",
        "--json",
        "--strategy",
        "office-fast",
    )
    assert proc.returncode == 0, proc.stderr
    p = json.loads(proc.stdout)
    assert p["strategy"] == "office-fast"
    assert p["committed_kw"] == 160.0


def test_plan_outside_allowed_hours_marks_steps_not_now() -> None:
    proc = plan(
        "-c", str(EXAMPLES / "factory.yaml"), "--target-pct", "10", "--sim", "--at", "16:00", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    p = json.loads(proc.stdout)
    not_now = [s for s in p["not_used"] if s["status"] == "not-now"]
    assert {s["device"] for s in not_now} == {"compressor-1", "compressor-2"}
    assert "allowed_hours 10:00-15:00: not at 16:00" in not_now[0]["notes"][0]


def test_recorded_day_gives_the_load(tmp_path: Path) -> None:
    day = tmp_path / "day.csv"
    day.write_text(
        "ts,kw\n2026-06-30T10:55:00+08:00,1111\n2026-06-30T11:00:00+08:00,1234.5\n2026-06-30T11:05:00+08:00,999\n"
    )
    proc = plan(
        "-c",
        str(EXAMPLES / "factory.yaml"),
        "--target-pct",
        "10",
        "--recorded",
        str(day),
        "--at",
        "11:02",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["load_kw"] == 1234.5


def test_plan_without_devices_says_what_to_do_in_one_line() -> None:
    # The example's Modbus endpoints are loopback ports nobody listens on: the meter cannot be read.
    proc = plan("-c", str(EXAMPLES / "factory.yaml"), "--target-pct", "10")
    assert proc.returncode == 1
    # One line, no log noise before it: what is missing and the three ways to give it.
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "cannot read the site meter 'main-meter'" in lines[0]
    assert all(opt in lines[0] for opt in ("--sim", "--load-kw", "--recorded"))
    assert proc.stdout == ""


def test_plan_without_at_plans_inside_the_contract_hours_and_says_so() -> None:
    proc = plan("-c", str(EXAMPLES / "factory.yaml"), "--target-pct", "10", "--sim")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("planned for ") and "allowed hours 10:00-15:00" in first, first
    assert proc.stderr == ""
    p = json.loads(plan("-c", str(EXAMPLES / "factory.yaml"), "--target-pct", "10", "--sim", "--json").stdout)
    assert "10:00" <= p["at"][11:16] and p["at"][11:16] <= "14:30", p["at"]

    # A minute may turn between the two runs: the same note but for the time it says "now" is
    # ("planned for now, 12:42, …" inside the hours, "… cannot run now, at 15:20)" outside).
    def now_masked(note: str) -> str:
        return re.sub(r"(now, (?:at )?)\d\d:\d\d", r"\1HH:MM", note)

    assert now_masked(p["at_note"]) == now_masked(first)
    # With --at, no note: the reader chose the time.
    p = json.loads(
        plan(
            "-c", str(EXAMPLES / "factory.yaml"), "--target-pct", "10", "--sim", "--at", "16:00", "--json"
        ).stdout
    )
    assert "at_note" not in p and p["at"][11:16] == "16:00"


@pytest.mark.parametrize(
    ("now", "duration_min", "expected", "says"),
    [
        ("11:20", 30, "11:20", "planned for now, 11:20, inside"),
        ("14:45", 30, "10:00", "a 30-min event cannot run now, at 14:45"),
        ("23:31", 30, "10:00", "planned for 10:00, the start of the contract's allowed hours 10:00-15:00"),
        ("07:00", 30, "10:00", "cannot run now, at 07:00"),
    ],
)
def test_default_plan_time(now: str, duration_min: float, expected: str, says: str) -> None:
    from datetime import date, datetime, time
    from zoneinfo import ZoneInfo

    from agent.cli.cmd_plan import _at
    from agent.config.load import load_site_config

    cfg, _ = load_site_config(EXAMPLES / "factory.yaml")
    tz = ZoneInfo(cfg.site.timezone)
    at, note = _at(
        cfg, None, duration_min * 60, datetime.combine(date(2026, 7, 1), time.fromisoformat(now), tz)
    )
    assert f"{at:%H:%M}" == expected and at.date() == date(2026, 7, 1)
    assert says in note
