"""Dimmable lighting (a zone on a lighting gateway): shed by dimming, never below a floor."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from drivers.actions import ActionBase, ControlTraits, NotApplicable, round_within
from drivers.capabilities import Dimmable
from drivers.codec import Value
from drivers.device import Device, DeviceConfigBase
from drivers.physics import Bank, DeviceModel, lag
from drivers.registry import SimEnv, register


class LightingConfig(DeviceConfigBase):
    kind: Literal["lighting"] = Field(description="A dimmable lighting zone.")
    min_level_pct: float = Field(
        default=0.0, ge=0, le=100, description="Floor: the agent never dims below this level, %."
    )


class LightingAction(ActionBase):
    """Dim to a level, or switch the zone off, never below the zone's floor."""

    shed_role = "level_pct"

    kind: Literal["lighting"] = Field(title="Kind", description="Lighting dim action.")
    level_pct: float | None = Field(
        default=None,
        ge=0,
        le=100,
        title="Level (%)",
        description="Dim to this level, % of full output (0-100; 50 means half, not 0.5).",
    )
    # Not `off:`: YAML 1.1 reads the bare key `off` as the boolean false.
    switch_off: bool = Field(
        default=False,
        title="Switch off",
        description="Switch the zone off (it still stops at the zone's min_level_pct floor).",
    )
    floor_pct: float | None = Field(
        default=None,
        ge=0,
        le=100,
        title="Floor (%)",
        description="Never dim below this level, % (raises the device's min_level_pct for this action).",
    )

    @model_validator(mode="after")
    def _one(self) -> LightingAction:
        if (self.level_pct is None) == (not self.switch_off):
            raise ValueError("give exactly one of level_pct: N or switch_off: true")
        if self.floor_pct is not None and self.level_pct is not None and self.level_pct < self.floor_pct:
            raise ValueError(
                f"level_pct {self.level_pct:g} is below this action's floor_pct {self.floor_pct:g}; "
                "raise the level or lower the floor"
            )
        return self

    def shed_value(self, device: Any, original: float | None) -> float | bool:
        if not isinstance(device, Dimmable) or original is None:
            raise NotApplicable("dim level unknown")
        level = 0.0 if self.switch_off else float(self.level_pct or 0.0)
        floor = max(device.min_level_pct(), self.floor_pct or 0.0)
        # Levels are written as whole percent: round, but never below a fractional floor.
        level = round_within(max(level, floor), math.ceil(floor - 1e-9), 100.0, 0)
        if level >= original:
            raise NotApplicable("already dimmed")
        return level

    def expected_kw_on(self, device: Any) -> float:
        level = 0.0 if self.switch_off else (self.level_pct or 0.0)
        floor = device.min_level_pct() if isinstance(device, Dimmable) else 0.0
        floor = max(floor, self.floor_pct or 0.0)
        return (device.config.rated_kw or 0.0) * (100 - max(level, floor)) / 100

    def config_estimate_kw(self, device_config: Any) -> float:
        rated = float(getattr(device_config, "rated_kw", None) or 0.0)
        level = 0.0 if self.switch_off else (self.level_pct or 0.0)
        floor = max(float(getattr(device_config, "min_level_pct", 0.0)), self.floor_pct or 0.0)
        return rated * (100 - max(level, floor)) / 100


class LightingModel(DeviceModel):
    """LED lighting: power proportional to the dim level (drivers fade over about a second)."""

    def __init__(self, bank: Bank, rated_kw: float, level_pct: float = 100.0, delay_s: float = 0.0) -> None:
        super().__init__(bank, delay_s)
        self.rated_kw = rated_kw
        self.level = level_pct
        self.power_kw = rated_kw * level_pct / 100
        bank.set("level_pct", level_pct)
        self._publish()

    def apply(self, key: str, value: Value) -> None:
        if key == "level_pct" and isinstance(value, (int, float)):
            self.level = max(0.0, min(100.0, float(value)))

    def failsafe(self) -> None:
        self.level = 100.0  # DALI system failure level: full light

    def step(self, now: float, dt: float) -> None:
        self.power_kw = lag(self.power_kw, self.rated_kw * self.level / 100, dt, 1.0)
        self._publish()

    def _publish(self) -> None:
        if self.bank.has("power_kw"):
            self.show("power_kw", round(self.power_kw, 2))

    def load_kw(self) -> float:
        return self.power_kw


def simulate(config: Any, bank: Bank, env: SimEnv) -> DeviceModel:
    return LightingModel(bank, rated_kw=env.rated_kw, delay_s=env.delay_s)


@register(LightingConfig, action=LightingAction, traits=ControlTraits(lag_s=2.0), simulator=simulate)
class Lighting(Device):
    kind = "lighting"
    required_roles = ("level_pct",)
    writable_roles = ("level_pct",)

    def level_pct(self) -> float | None:
        return self.reading("level_pct")

    def min_level_pct(self) -> float:
        c = self.config
        assert isinstance(c, LightingConfig)
        return c.min_level_pct

    def limit_violation(self, role: str, value: float) -> str | None:
        if role == "level_pct" and value < self.min_level_pct() - 1e-6:
            return f"level {value} below floor {self.min_level_pct()}"
        return None
