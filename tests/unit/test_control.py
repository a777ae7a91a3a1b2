"""Control quality metrics, and the production controller on the simulated plant (manual clock, loopback)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.cli.simulate import simulate_event
from agent.config.load import load_site_config
from agent.config.model import SiteConfig
from agent.control.actuator import Actuator
from agent.control.controller import LEARNED_META_KEY, Controller, QualityTracker, rebound_peak_pct
from agent.events.model import DrEvent
from agent.platform.store import AsyncStore, Store
from agent.runtime.daemon import Agent
from drivers.sim.plant import SimulatedPlant

REPO = Path(__file__).resolve().parents[2]
TZ = ZoneInfo("Asia/Shanghai")


def tracker() -> QualityTracker:
    return QualityTracker(start=0.0, end=600.0, baseline_kw=900.0, band=(50.0, 200.0), peak_kw=1000.0)


def test_time_to_band_needs_the_band_held_not_swept_through() -> None:
    q = tracker()
    for t in range(600):
        realized = 300.0 if 10 <= t < 20 else (120.0 if t >= 40 else 0.0)  # sweeps up past the band first
        q.add(float(t), 900.0 - realized, 100.0)
    s = q.summary()
    assert s["time_to_band_s"] == pytest.approx(42.0, abs=3)
    assert s["in_band_fraction"] == 1.0
    assert s["tracking_error_pct"] == pytest.approx(2.0, abs=0.01)
    assert s["overshoot_pct"] == pytest.approx(10.0, abs=0.01)  # 300 - 200 kW, % of 1000


def test_in_band_fraction_counts_10s_windows_after_entry() -> None:
    q = tracker()
    for t in range(600):
        realized = 20.0 if 300 <= t < 330 else 100.0  # three windows below the band
        q.add(float(t), 900.0 - realized, 100.0)
    s = q.summary()
    assert s["time_to_band_s"] is not None and s["time_to_band_s"] <= 6
    assert s["in_band_fraction"] == pytest.approx(1 - 3 / 60, abs=0.02)


def test_never_in_band() -> None:
    q = tracker()
    for t in range(600):
        q.add(float(t), 900.0 - 10.0, 100.0)
    assert q.summary()["time_to_band_s"] is None and q.summary()["in_band_fraction"] == 0.0


def test_rebound_peak_is_the_highest_minute_mean_above_baseline() -> None:
    samples = [(1000.0 + t, 900.0 + (60.0 if 120 <= t < 180 else 0.0)) for t in range(600)]
    assert rebound_peak_pct(samples, 1000.0, 600.0, 900.0, 1000.0) == pytest.approx(6.0)
    assert rebound_peak_pct([], 1000.0, 600.0, 900.0, 1000.0) is None


# -- the controller on the simulated plant --------------------------------------------------


def quick_cfg() -> SiteConfig:
    """The demo site with a short recovery window, to keep the test fast."""
    cfg, _w = load_site_config(REPO / "config" / "demo-site.yaml")
    strategies = [
        s.model_copy(update={"restore": s.restore.model_copy(update={"rebound_window_s": 180.0})})
        for s in cfg.strategies
    ]
    return cfg.model_copy(update={"strategies": strategies})


def event(minutes: float = 10, pct: float = 10.0) -> DrEvent:
    start = datetime(2026, 7, 15, 11, 0, tzinfo=TZ)
    return DrEvent.model_validate(
        {
            "event_id": "ctl-1",
            "modification_number": 0,
            "status": "far",
            "program": "contracted",
            "priority": 1,
            "start": start.isoformat(),
            "duration_s": minutes * 60,
            "target": {"reduce_pct_of_peak": pct},
        }
    )


def test_holds_the_band_follows_a_new_target_and_reports_control_metrics(tmp_path: Path) -> None:
    cfg = quick_cfg()
    ev = event(12)
    seen: dict[str, float] = {}

    def on_tick(now: float, agent: Agent, plant: SimulatedPlant) -> None:
        rec = agent.running()
        if rec is None or rec.control is None:
            return
        if now >= ev.start_ts + 360 and "changed" not in seen:
            rec.control.committed_kw = 160.0
            seen["changed"] = now
        if rec.control.realized_kw is not None and now >= ev.start_ts + 600:
            seen.setdefault("late_realized", rec.control.realized_kw)

    res = asyncio.run(simulate_event(cfg, ev, on_tick=on_tick, db_dir=tmp_path))
    s = res.settlement
    assert s is not None and res.limit_violations == 0
    c = s["control"]
    assert c["time_to_band_s"] is not None and c["time_to_band_s"] <= 60
    assert c["in_band_fraction"] >= 0.95
    assert c["rebound_peak_pct"] is not None and c["rebound_peak_pct"] <= 5.0
    assert c["actuations"] > 0 and c["recovery_window_s"] == 180.0
    assert seen["late_realized"] == pytest.approx(160.0, abs=35.0)  # followed the raised target


def test_stale_meter_holds_and_flags_degraded(tmp_path: Path) -> None:
    cfg = quick_cfg()
    ev = event(6)
    log: list[tuple[float, bool, int]] = []

    def on_tick(now: float, agent: Agent, plant: SimulatedPlant) -> None:
        bank = plant.banks[cfg.site.meter]
        bank.fail_with = 11 if ev.start_ts + 120 <= now < ev.start_ts + 180 else None
        rec = agent.running()
        if rec is not None and rec.control is not None and rec.control.phase == "shedding":
            log.append((now, rec.control.degraded, rec.control.actuations))

    res = asyncio.run(simulate_event(cfg, ev, on_tick=on_tick, db_dir=tmp_path))
    assert res.settlement is not None
    blind = [(d, n) for t, d, n in log if ev.start_ts + 140 <= t < ev.start_ts + 180]
    assert blind and all(d for d, _n in blind)
    assert len({n for _d, n in blind}) == 1  # no writes while blind
    assert res.settlement["control"]["degraded_s"] >= 30
    assert not log[-1][1]  # recovered


def test_learned_kw_are_learned_on_the_plant_and_survive_a_restart(tmp_path: Path) -> None:
    cfg = quick_cfg()
    captured: dict[str, float] = {}

    def on_tick(now: float, agent: Agent, plant: SimulatedPlant) -> None:
        captured.update(agent.controller.learned)

    asyncio.run(simulate_event(cfg, event(8), on_tick=on_tick, db_dir=tmp_path))
    assert captured and all(v > 0 for v in captured.values())

    async def roundtrip() -> dict[str, float]:
        store = AsyncStore(Store(tmp_path / "learned.sqlite"))
        first = Controller(cfg.control, {}, Actuator({}, store), TZ)
        first.learned = dict(captured)
        first._learned_dirty = True
        await first.save_learned()
        second = Controller(cfg.control, {}, Actuator({}, store), TZ)
        await second.load_learned()
        raw = await store.meta_get(LEARNED_META_KEY)
        await store.close()
        assert raw is not None and set(json.loads(raw)) == set(captured)
        return second.learned

    assert asyncio.run(roundtrip()) == pytest.approx({k: round(v, 3) for k, v in captured.items()})
