"""The simulated plant's physics: delays, meter, process steps, EV sessions, HVAC rebound, failures, scenarios."""

from __future__ import annotations

import itertools
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.config.load import load_site_config
from drivers.profile import load_profile
from drivers.sim.bank import RegisterBank
from drivers.sim.models import EvChargerModel, EvSession, HvacModel, LightingModel, MeterModel, ProcessStep
from drivers.sim.scenario import Disturbances, load_scenario

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((REPO / "bench" / "scenarios").glob("*.yaml"))


def run(model: object, start: float, seconds: int) -> None:
    for t in range(seconds):
        model.advance(start + t, 1.0)  # type: ignore[attr-defined]


def test_a_write_takes_effect_after_the_actuation_delay() -> None:
    m = LightingModel(RegisterBank(load_profile("generic_lighting")), rated_kw=10.0, delay_s=3.0)
    run(m, 0.0, 5)
    m.bank.write("holding_register", m.bank._point("level_pct").address, [50])
    run(m, 5.0, 2)
    assert m.power_kw > 9.5  # not yet
    run(m, 7.0, 10)
    assert m.power_kw == pytest.approx(5.0, abs=0.1)


def test_meter_holds_its_registers_between_updates_and_adds_noise() -> None:
    m = MeterModel(RegisterBank(load_profile("eastron_sdm630")), noise_kw=2.0, update_s=5.0, seed=3)
    shown = []
    for t in range(10):
        m.show_total(float(t), 500.0 + t, 1.0)
        shown.append(m.bank.get("power_kw"))
    assert shown[0] == shown[4] and shown[5] == shown[9] and shown[0] != shown[5]
    assert all(abs(float(v) - 500) < 20 for v in shown)


def test_process_step_ramps_holds_and_ends() -> None:
    p = ProcessStep(at=100.0, kw=80.0, duration_s=60.0, ramp_s=4.0)
    assert p.kw_at(99) == 0 and p.kw_at(102) == pytest.approx(40) and p.kw_at(130) == 80
    assert p.kw_at(162) == pytest.approx(40) and p.kw_at(170) == 0


def test_ev_charger_draws_only_while_a_vehicle_is_plugged_in() -> None:
    m = EvChargerModel(
        RegisterBank(load_profile("generic_ev_charger")), sessions=[EvSession(100.0, 200.0, 16.0)]
    )
    run(m, 0.0, 50)
    assert m.power_kw == pytest.approx(0.0, abs=0.01)
    run(m, 100.0, 30)
    assert m.power_kw == pytest.approx(16 * 0.69, rel=0.02)
    run(m, 200.0, 30)
    assert m.power_kw < 0.1


def test_hvac_shed_idles_the_compressor_then_release_rebounds_above_the_old_power() -> None:
    m = HvacModel(RegisterBank(load_profile("generic_hvac")), rated_kw=100.0)
    before = m.power_kw
    m.apply("setpoint_c", 26.0)
    run(m, 0.0, 300)
    assert m.power_kw < before * 0.3 and m.zone_c > 24.3
    run(m, 300.0, 1500)
    m.apply("setpoint_c", 24.0)
    run(m, 1800.0, 240)
    assert m.power_kw > before * 1.2  # the zone is warm: the rebound a restore must manage


def test_a_failed_device_falls_back_and_stops_answering() -> None:
    m = LightingModel(RegisterBank(load_profile("generic_lighting")), rated_kw=10.0)
    m.apply("level_pct", 40.0)
    m.bank.fail_with = 4
    m.fail()
    run(m, 0.0, 10)
    assert m.power_kw > 9.5


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_bench_scenario_loads_and_builds_its_plant(path: Path) -> None:
    sc = load_scenario(path)
    cfg, _w = load_site_config(sc.site_path())
    tz = ZoneInfo(cfg.site.timezone)
    plant = sc.build_plant(list(cfg.devices), peak_kw=cfg.contract.peak_kw, meter_name=cfg.site.meter, tz=tz)
    start = sc.ts(sc.event.start, tz)
    plant.step(start - 60)
    plant.step(start)
    assert 0.3 * cfg.contract.peak_kw < plant.site_kw() < 1.1 * cfg.contract.peak_kw
    end = start + sc.event.duration_s
    for p in plant.base.process:
        assert start <= p.at and p.at + p.duration_s <= end  # disturbances stay inside the event
    Disturbances(sc, plant, cfg.site.meter, tz)(end)
    for f in sc.failures:
        assert plant.banks[f.device].fail_with is not None


def test_random_process_steps_are_seeded_and_never_overlap() -> None:
    path = next(p for p in SCENARIOS if "noisy-steps" in p.stem)
    sc = load_scenario(path)
    tz = ZoneInfo("Asia/Shanghai")
    a, b = sc.process_steps(tz, 1000.0), sc.process_steps(tz, 1000.0)
    assert [(p.at, p.kw) for p in a] == [(p.at, p.kw) for p in b] and len(a) == 3
    for x, y in itertools.pairwise(a):
        assert x.at + x.duration_s + x.ramp_s <= y.at
        assert 50 <= abs(x.kw) <= 150
