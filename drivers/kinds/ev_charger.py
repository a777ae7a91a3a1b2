"""EV charger with a Modbus current limit; shed by capping current, never below its minimum."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from drivers.device import Device, DeviceConfigBase
from drivers.registry import register


class EvChargerConfig(DeviceConfigBase):
    kind: Literal["ev_charger"] = Field(description="An EV charging point.")
    min_current_a: float = Field(
        default=6.0, ge=0, description="Lowest current the charger accepts (IEC 61851: 6 A), A."
    )
    max_current_a: float = Field(default=32.0, gt=0, description="Highest current limit, A.")
    phases: Literal[1, 3] = Field(default=3, description="Phases the charger uses.")
    voltage_v: float = Field(default=230.0, gt=0, description="Phase voltage, V.")
    priority: int = Field(
        default=0, description="Higher = shed later (e.g. fleet vehicles that must leave charged)."
    )
    heartbeat_s: float | None = Field(
        default=None,
        gt=0,
        description="Feed the charger's heartbeat/failsafe register this often (if it has one), s.",
    )

    @model_validator(mode="after")
    def _limits(self) -> EvChargerConfig:
        if self.min_current_a > self.max_current_a:
            raise ValueError(
                f"min_current_a {self.min_current_a} must not exceed max_current_a {self.max_current_a}"
            )
        return self


@register(EvChargerConfig)
class EvCharger(Device):
    kind = "ev_charger"
    required_roles = ("power_kw", "current_limit_a")
    writable_roles = ("current_limit_a",)

    def _cfg(self) -> EvChargerConfig:
        assert isinstance(self.config, EvChargerConfig)
        return self.config

    def current_limit_a(self) -> float | None:
        return self.reading("current_limit_a")

    def current_range_a(self) -> tuple[float, float]:
        c = self._cfg()
        return c.min_current_a, c.max_current_a

    def kw_per_amp(self) -> float:
        c = self._cfg()
        return c.phases * c.voltage_v / 1000.0
