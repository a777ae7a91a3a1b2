"""HVAC unit or thermostat: shed by moving the setpoint within comfort limits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from drivers.device import Device, DeviceConfigBase
from drivers.registry import register


class HvacConfig(DeviceConfigBase):
    kind: Literal["hvac"] = Field(description="An HVAC unit with a temperature setpoint.")
    mode: Literal["cooling", "heating"] = Field(
        default="cooling", description="Cooling sheds by raising the setpoint, heating by lowering it."
    )
    setpoint_min_c: float = Field(default=18.0, description="Lowest setpoint the agent may write, °C.")
    setpoint_max_c: float = Field(default=28.0, description="Highest setpoint the agent may write, °C.")

    @field_validator("setpoint_max_c")
    @classmethod
    def _limits(cls, v: float, info: ValidationInfo) -> float:
        # A field validator (not a model one), so the error points at the setpoint_max_c key.
        lo = info.data.get("setpoint_min_c")
        if lo is not None and lo >= v:
            raise ValueError(f"setpoint_max_c {v} must be above setpoint_min_c {lo}")
        return v


@register(HvacConfig)
class Hvac(Device):
    kind = "hvac"
    # Power is optional: many thermostats and AC gateways report none (a sub-meter or rated_kw stands in).
    required_roles = ("setpoint_c",)
    writable_roles = ("setpoint_c",)

    def setpoint_c(self) -> float | None:
        return self.reading("setpoint_c")

    def setpoint_limits_c(self) -> tuple[float, float]:
        c = self.config
        assert isinstance(c, HvacConfig)
        return c.setpoint_min_c, c.setpoint_max_c

    def zone_temp_c(self) -> float | None:
        return self.reading("zone_temp_c")
