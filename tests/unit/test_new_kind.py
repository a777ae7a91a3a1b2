"""A device kind added in one file: a variable-speed pump defined here, following drivers/_blueprint.py.

Nothing outside this module knows the pump: its config, strategy action
(shed role and shed rule), control traits, device class, register map and
simulator physics are all below, registered for the test and removed after.
With it, a site config and a strategy using it validate through the real
loader and the committed-schema generator sees it; the engine builds its
steps; the controller's traits come from it; and the actuator sheds and
restores it against the simulated plant served over Modbus TCP on
loopback, each value read back from the device over Modbus.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import Field

from agent.config.load import ConfigError, load_site_config
from agent.config.model import SiteConfig
from agent.control.actuator import Actuator, LimitViolation
from agent.platform.store import AsyncStore, Store
from drivers.actions import ActionBase, ControlTraits, NotApplicable
from drivers.codec import Value
from drivers.device import Device, DeviceConfigBase
from drivers.modbus import ModbusTransport
from drivers.physics import Bank, DeviceModel, lag
from drivers.profile import load_profile
from drivers.registry import Kind, SimEnv, deregister, kinds, register
from drivers.sim.plant import SimEndpoint, SimulatedPlant
from drivers.sim.server import free_port
from strategies.engine import build_steps, config_estimate_kw, shed_value, within_limits
from strategies.model import Strategy

# -- the kind: everything a pump is, in one place ------------------------------------------


class PumpConfig(DeviceConfigBase):
    kind: Literal["pump"] = Field(description="A pump on a variable-speed drive.")
    min_speed_pct: float = Field(default=30.0, ge=0, le=100, description="Never slow it below this, %.")


class PumpAction(ActionBase):
    """Slow a pump down; by the affinity laws its power falls with the cube of its speed."""

    shed_role = "speed_pct"

    kind: Literal["pump"] = Field(title="Kind", description="Pump slow-down action.")
    speed_pct: float = Field(ge=0, le=100, title="Speed (%)", description="Run at this speed, %.")

    def shed_value(self, device: Any, original: float | None) -> float | bool:
        if not isinstance(device, Pump) or original is None:
            raise NotApplicable("speed unknown")
        value = float(round(max(self.speed_pct, device.min_speed_pct())))
        if value >= original:
            raise NotApplicable("already slower")
        return value

    def config_estimate_kw(self, device_config: Any) -> float:
        rated = float(getattr(device_config, "rated_kw", None) or 0.0)
        speed = max(self.speed_pct, float(getattr(device_config, "min_speed_pct", 0.0)))
        return rated * (1 - (speed / 100) ** 3)

    def expected_kw_on(self, device: Any) -> float:
        return self.config_estimate_kw(device.config)


class Pump(Device):
    kind = "pump"
    required_roles = ("speed_pct",)
    writable_roles = ("speed_pct",)

    def min_speed_pct(self) -> float:
        assert isinstance(self.config, PumpConfig)
        return self.config.min_speed_pct

    def limit_violation(self, role: str, value: float) -> str | None:
        if role == "speed_pct" and value < self.min_speed_pct() - 1e-6:
            return f"speed {value} % below the pump's minimum {self.min_speed_pct()} %"
        return None


class PumpModel(DeviceModel):
    def __init__(self, bank: Bank, rated_kw: float, delay_s: float = 0.0) -> None:
        super().__init__(bank, delay_s)
        self.rated_kw = rated_kw
        self.speed = 100.0
        self.power_kw = rated_kw
        bank.set("speed_pct", 100.0)
        self.show("power_kw", round(self.power_kw, 1))

    def apply(self, key: str, value: Value) -> None:
        if key == "speed_pct" and isinstance(value, (int, float)):
            self.speed = max(0.0, min(100.0, float(value)))

    def step(self, now: float, dt: float) -> None:
        self.power_kw = lag(self.power_kw, self.rated_kw * (self.speed / 100) ** 3, dt, 2.0)
        self.show("power_kw", round(self.power_kw, 1))

    def load_kw(self) -> float:
        return self.power_kw


def simulate(config: Any, bank: Bank, env: SimEnv) -> DeviceModel:
    return PumpModel(bank, rated_kw=env.rated_kw, delay_s=env.delay_s)


TRAITS = ControlTraits(lag_s=8.0)  # a drive ramps down over seconds: slower than a relay

PROFILE = {
    "version": 1,
    "name": "test_vsd_pump",
    "kind": "pump",
    "points": [
        {"name": "speed", "role": "speed_pct", "address": 10, "type": "uint16", "scale": 0.1, "access": "rw"},
        {"name": "power", "role": "power_kw", "function": "input_register", "address": 20, "scale": 0.1},
    ],
}


@pytest.fixture
def pump_kind() -> Iterator[Kind]:
    register(PumpConfig, action=PumpAction, traits=TRAITS, simulator=simulate)(Pump)
    try:
        yield kinds()["pump"]
    finally:
        deregister("pump")  # other tests see the built-in kinds only


# -- the site that uses it ---------------------------------------------------------------


def site(tmp_path: Path, port: int, speed_pct: float = 50) -> Path:
    profile = tmp_path / "pump.yaml"
    profile.write_text(yaml.safe_dump(PROFILE))
    data = {
        "version": 1,
        "site": {"id": "pumps", "name": "Pump house", "timezone": "Asia/Shanghai", "meter": "meter"},
        "modbus": {"endpoints": [{"name": "plant", "host": "127.0.0.1", "port": port, "timeout_s": 1.0}]},
        "devices": [
            {
                "name": "meter",
                "kind": "meter",
                "endpoint": "plant",
                "unit_id": 1,
                "profile": "eastron_sdm630",
            },
            {
                "name": "pump-1",
                "kind": "pump",
                "endpoint": "plant",
                "unit_id": 2,
                "profile": str(profile),
                "rated_kw": 80,
                "zone": "pumps",
                "min_speed_pct": 40,
            },
        ],
        "contract": {"peak_kw": 400, "band_pct": [5, 20]},
        "strategies": [
            {
                "name": "slow-pumps",
                "default": True,
                "stages": [
                    {"name": "pumps", "actions": [{"kind": "pump", "group": "pumps", "speed_pct": speed_pct}]}
                ],
            }
        ],
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_config_and_strategy_validate(pump_kind: Kind, tmp_path: Path) -> None:
    cfg, _warnings = load_site_config(site(tmp_path, 1502))
    pump = cfg.device("pump-1")
    assert isinstance(pump, PumpConfig) and pump.min_speed_pct == 40
    action = cfg.strategies[0].stages[0].actions[0]
    assert isinstance(action, PumpAction)
    # Below the pump's minimum: the kind's rule stops at it, 80 kW x (1 - 0.4^3).
    assert config_estimate_kw(
        PumpAction(kind="pump", devices=["pump-1"], speed_pct=20), pump
    ) == pytest.approx(74.88)
    # The schemas editors use carry it, and a bad action parameter is a located error.
    site_schema = json.dumps(SiteConfig.model_json_schema())
    assert "PumpConfig" in site_schema and "PumpAction" in site_schema
    assert "PumpAction" in json.dumps(Strategy.model_json_schema())
    with pytest.raises(ConfigError, match=r"site\.yaml:\d+:\d+: .*speed_pct"):
        load_site_config(site(tmp_path, 1502, speed_pct=150))


def test_the_kind_leaves_with_its_registration(tmp_path: Path) -> None:
    # Without the fixture the pump is unknown again: the unions were rebuilt without it.
    assert "pump" not in kinds()
    with pytest.raises(ConfigError, match="pump"):
        load_site_config(site(tmp_path, 1502))


async def test_steps_shed_and_restore_over_modbus(pump_kind: Kind, tmp_path: Path) -> None:
    port = free_port()
    cfg, _ = load_site_config(site(tmp_path, port))
    plant = SimulatedPlant.build(cfg.devices, peak_kw=cfg.contract.peak_kw, meter_name="meter")
    await plant.serve([SimEndpoint("plant", "127.0.0.1", port)])
    transport = ModbusTransport("plant", host="127.0.0.1", port=port, timeout_s=1.0)
    devices = {d.name: kinds()[d.kind].device(d, transport, load_profile(d.profile)) for d in cfg.devices}
    pump = devices["pump-1"]
    store = AsyncStore(Store(tmp_path / "agent.sqlite"))
    act = Actuator(devices, store)
    try:
        plant.step(0.0)
        assert await pump.poll(), pump.health.last_error
        assert pump.reading("speed_pct") == pytest.approx(100.0)
        assert pump.power_kw() == pytest.approx(80.0)

        steps = build_steps(cfg.strategy_for("contracted"), devices)
        assert [(s.id, s.device, s.role) for s in steps] == [("pumps/1:pump-1", "pump-1", "speed_pct")]
        step = steps[0]
        assert step.traits == TRAITS and not step.traits.fast
        assert step.expected_kw == pytest.approx(70.0)  # 80 x (1 - 0.5^3)

        value = shed_value(step, pump, pump.reading("speed_pct"))
        assert value == 50.0
        assert within_limits(pump, "speed_pct", 35.0) is not None  # under the pump's minimum
        with pytest.raises(LimitViolation):
            await act.shed("pump-1", "speed_pct", 35.0, "ev-1", step.id)

        assert await act.shed("pump-1", "speed_pct", value, "ev-1", step.id) == pytest.approx(50.0)
        # Read back over Modbus: the drive's register and, once the plant moves, its power.
        regs = await transport.read(2, "holding_register", 10, 1)
        assert regs == [500]
        for t in range(1, 30):
            plant.step(float(t))
        assert await pump.poll()
        assert pump.reading("speed_pct") == pytest.approx(50.0)
        assert pump.power_kw() == pytest.approx(10.0, abs=0.5)
        with pytest.raises(NotApplicable):
            shed_value(step, pump, pump.reading("speed_pct"))  # already slowed: nothing more to do
        assert [(e.device, e.role) for e in await store.journal_open()] == [("pump-1", "speed_pct")]

        assert await act.restore("pump-1", "speed_pct", "event ended", "ev-1")
        assert await transport.read(2, "holding_register", 10, 1) == [1000]
        for t in range(30, 60):
            plant.step(float(t))
        assert await pump.poll()
        assert pump.reading("speed_pct") == pytest.approx(100.0)
        assert pump.power_kw() == pytest.approx(80.0, abs=0.5)
        assert await store.journal_open() == []
    finally:
        await transport.close()
        await plant.stop()
