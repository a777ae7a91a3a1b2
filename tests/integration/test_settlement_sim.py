"""A simulated event on config/demo-site.yaml, settled by the agent, against an independent hand calculation.

The agent's own code runs (polling, lifecycle, control, restore, settlement
over real SQLite); the test records every meter reading the agent took and
recomputes baseline energy, metered energy and the verified reduction from
them with the formula alone: (E_baseline - E_metered) / duration.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.cli.simulate import BASELINE_LEAD_S, simulate_event
from agent.config.load import load_site_config
from agent.config.model import OutdoorTemperature
from agent.events.model import DrEvent
from agent.runtime.daemon import Agent
from agent.settlement.history import TEMPERATURE_KEY
from drivers.sim.models import FACTORY_DAY
from drivers.sim.plant import SimulatedPlant

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parents[2] / "config" / "demo-site.yaml"
TZ = ZoneInfo("Asia/Shanghai")
# A Tuesday: the five working days before it are Mon 14, Fri 11, Thu 10, Wed 9, Tue 8 July.
EVENT_START = datetime(2025, 7, 15, 10, 30, tzinfo=TZ)


def demo_event(event_id: str = "sim-settle", minutes: float = 15, pct: float = 10) -> DrEvent:
    return DrEvent.model_validate(
        {
            "event_id": event_id,
            "program": "contracted",
            "start": EVENT_START.isoformat(),
            "duration_s": minutes * 60,
            "target": {"reduce_pct_of_peak": pct},
        }
    )


def history_rows(cfg: Any, days: int, until: float, seed: int = 7) -> list[tuple[str, float, float]]:
    """One meter reading a minute for `days` before `until`: the simulated plant's daily shape (the
    factory profile, at the level the plant draws), each day scaled by its own factor, plus noise."""
    rnd = random.Random(seed)
    factor: dict[date, float] = {}
    rows = []
    t = (until - days * 86400) // 60 * 60
    while t < until:
        local = datetime.fromtimestamp(t, TZ)
        f = factor.setdefault(local.date(), 1 + rnd.uniform(-0.04, 0.04))
        kw = cfg.contract.peak_kw * FACTORY_DAY.at(local.hour + local.minute / 60) * f + rnd.gauss(0, 3)
        rows.append((cfg.site.meter, float(t), round(kw, 2)))
        # Outdoor °C: warmer afternoons, and days that differ.
        rows.append((TEMPERATURE_KEY, float(t), 24 + 6 * FACTORY_DAY.at(local.hour) + 20 * (f - 1)))
        t += 60
    return rows


@dataclass
class Recorder:
    """Every meter reading the agent took (the same values it stores), and when control started."""

    history: list[tuple[str, float, float]] = field(default_factory=list)
    readings: list[tuple[float, float]] = field(default_factory=list)
    control_start: float | None = None
    keep_db: Path | None = None
    seeded: bool = False

    def __call__(self, now: float, agent: Agent, plant: SimulatedPlant) -> None:
        if not self.seeded:
            self.seeded = True
            if self.history:
                # Nothing else touches the store between control cycles of the simulation.
                agent.store.sync.add_readings(self.history)
        kw = agent.meter.power_kw()
        if kw is not None:
            self.readings.append((now, kw))
        for rec in agent.lifecycle.events.values():
            if rec.control is not None and self.control_start is None:
                self.control_start = rec.control.control_start
            if rec.settled and self.keep_db is not None and not self.keep_db.exists():
                agent.store.sync.db.execute("VACUUM INTO ?", (str(self.keep_db),))


def held_mean_kw(readings: list[tuple[float, float]], t0: float, t1: float) -> float:
    """Mean kW over [t0, t1) with each reading held until the next (the one in force at t0 counts)."""
    pts = sorted(readings)
    acc = 0.0
    for i, (ts, kw) in enumerate(pts):
        nxt = pts[i + 1][0] if i + 1 < len(pts) else t1
        a, b = max(ts, t0), min(nxt, t1)
        if b > a:
            acc += kw * (b - a)
    return acc / (t1 - t0)


async def test_settlement_matches_a_hand_calculation_within_0_1_pct() -> None:
    cfg, _ = load_site_config(DEMO)
    ev = demo_event()
    rec = Recorder()
    res = await simulate_event(cfg, ev, on_tick=rec, tail_s=1200)
    s = res.settlement
    assert s is not None and rec.control_start is not None

    # The hand calculation: realtime_15min = time-weighted mean of the readings in the 15 min before
    # control start, held flat; metered energy = the readings held until the next, over the window.
    cs = rec.control_start
    assert sum(1 for ts, _kw in rec.readings if cs - 900 <= ts < cs) >= 900 / 5
    baseline_kw = held_mean_kw(rec.readings, cs - 900, cs)
    hours = ev.duration_s / 3600
    in_window = [(ts, kw) for ts, kw in rec.readings if ev.start_ts <= ts < ev.end_ts]
    assert len(in_window) == ev.duration_s  # one reading a second while controlling, none missing
    e_metered = held_mean_kw(rec.readings, ev.start_ts, ev.end_ts) * hours
    e_baseline = baseline_kw * hours
    verified = (e_baseline - e_metered) / hours

    assert s["official_baseline"] == "realtime_15min" and s["baseline_method"] == "realtime_15min"
    assert s["baseline_kwh"] == pytest.approx(e_baseline, rel=1e-3)
    assert s["measured_kwh"] == pytest.approx(e_metered, rel=1e-3)
    assert s["verified_reduction_kw"] == pytest.approx(verified, rel=1e-3)
    assert s["verified_reduction_pct_of_peak"] == pytest.approx(
        verified / cfg.contract.peak_kw * 100, rel=1e-3
    )
    # Paid on verified kW x the contract's 100 CNY/kW (inside the band, so not capped).
    assert s["estimated_incentive_cny"] == pytest.approx(verified * 100, rel=1e-3)
    assert 50 <= verified <= 200
    assert s["data_quality"]["status"] == "ok" and s["data_quality"]["gap_count"] == 0
    # Every method is reported; with 16 min of history only the real-time one can compute.
    assert set(s["baselines"]) == {
        "jiangsu_5day",
        "realtime_15min",
        "beijing_5of10",
        "caiso_10in10",
        "pjm_high4of5",
        "linear_trend",
        "regression",
    }
    assert s["baselines"]["realtime_15min"]["official"] is True
    assert s["baselines"]["jiangsu_5day"]["available"] is False
    assert "normal working days" in s["baselines"]["jiangsu_5day"]["reason"]
    # The MQTT message leaves out the per-minute curves; the stored record keeps them.
    assert "curves" not in s
    ledger = [p for t, p in res.messages if t.endswith("/out/ledger")]
    assert ledger and ledger[-1]["money"]["total"]["events_settled"] == 1


async def test_official_jiangsu_baseline_from_stored_history(tmp_path: Path) -> None:
    cfg, _ = load_site_config(DEMO)
    cfg = cfg.model_copy(
        update={
            "contract": cfg.contract.model_copy(update={"official_baseline": "jiangsu_5day"}),
            # chiller-1's profile maps outdoor_temp_c: the regression gets a temperature term.
            "outdoor_temperature": OutdoorTemperature(device="chiller-1"),
        }
    )
    ev = demo_event("sim-jiangsu")
    lead_start = ev.start_ts - BASELINE_LEAD_S
    rec = Recorder(history=history_rows(cfg, 21, lead_start), keep_db=tmp_path / "kept.sqlite")
    res = await simulate_event(cfg, ev, on_tick=rec, tail_s=1200)
    s = res.settlement
    assert s is not None
    assert s["baseline_method"] == "jiangsu_5day" and s["baselines"]["jiangsu_5day"]["official"] is True
    # By hand: the 5 working days before the event, the same 10:30-10:45 local window, averaged.
    days = [date(2025, 7, d) for d in (14, 11, 10, 9, 8)]
    assert s["baselines"]["jiangsu_5day"]["days_used"] == [d.isoformat() for d in days]
    by_ts = {ts: kw for m, ts, kw in rec.history if m == cfg.site.meter}
    means = []
    for d in days:
        t0 = datetime(d.year, d.month, d.day, 10, 30, tzinfo=TZ).timestamp()
        means.append(sum(by_ts[t0 + 60 * i] for i in range(15)) / 15)
    baseline_kw = sum(means) / 5
    hours = ev.duration_s / 3600
    e_metered = held_mean_kw(rec.readings, ev.start_ts, ev.end_ts) * hours
    verified = (baseline_kw * hours - e_metered) / hours
    assert s["baseline_kw"] == pytest.approx(baseline_kw, rel=1e-3)
    assert s["verified_reduction_kw"] == pytest.approx(verified, rel=1e-3)
    # With three weeks of history every method computes, each with its own verdict.
    for name, b in s["baselines"].items():
        assert b["available"], (name, b["reason"])
        assert b["verified_reduction_kw"] == pytest.approx(
            (b["energy_kwh"] - s["measured_kwh"]) / hours, abs=0.01
        )
    # The stored record keeps the per-minute curve of every method for the chart.
    kept = sqlite3.connect(rec.keep_db)
    import json

    body = json.loads(kept.execute("SELECT body FROM settlements").fetchone()[0])
    assert len(body["curves"]["kw"]["jiangsu_5day"]) == 15
    assert body["curves"]["kw"]["jiangsu_5day"][0] == pytest.approx(
        sum(by_ts[datetime(d.year, d.month, d.day, 10, 30, tzinfo=TZ).timestamp()] for d in days) / 5,
        abs=0.01,
    )
    notes = s["baselines"]["regression"].get("notes", [])
    assert any(n.startswith("temperature terms: temp=") for n in notes), (notes, s.get("notes"))
    # The agent stored the outdoor temperature it polled during the event beside the history.
    assert (
        kept.execute(
            "SELECT count(*) FROM readings WHERE device=? AND ts>=?", (TEMPERATURE_KEY, ev.start_ts)
        ).fetchone()[0]
        >= 15 * 60
    )
    # 15-minute aggregates are kept beside the 1-minute ones.
    q = kept.execute("SELECT count(*) FROM readings_15m WHERE device=?", (cfg.site.meter,)).fetchone()[0]
    assert q >= 21 * 96
