"""HVAC unit or thermostat: shed by moving the setpoint within comfort limits; pre-cool before an event."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from drivers.actions import ActionBase, ControlTraits, NotApplicable, round_within
from drivers.capabilities import SetpointControl
from drivers.codec import Value
from drivers.device import Device, DeviceConfigBase
from drivers.physics import Bank, DeviceModel, lag
from drivers.registry import SimEnv, register


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


class Precool(BaseModel):
    """Pre-cooling: lower the cooling setpoint before the event so the building stores cold."""

    model_config = ConfigDict(extra="forbid")

    offset_c: float = Field(
        gt=0,
        le=5,
        title="Pre-cool offset (°C)",
        description="Lower the cooling setpoint by this many °C before the event (never below the device's "
        "setpoint_min_c or the action's comfort_min_c).",
    )
    lead_s: float = Field(
        gt=0,
        le=14400,
        title="Pre-cool lead time (s)",
        description="Start pre-cooling this long before control starts, s; it ends when control starts.",
    )


class HvacAction(ActionBase):
    """Raise the cooling setpoint (lower the heating one) by an offset or to a value, within comfort limits."""

    shed_role = "setpoint_c"

    kind: Literal["hvac"] = Field(title="Kind", description="HVAC setpoint action.")
    setpoint_offset_c: float | None = Field(
        default=None,
        gt=0,
        le=10,
        title="Setpoint offset (°C)",
        description="Move the setpoint this many °C in the shedding direction (up when cooling, down when "
        "heating). Over 4 °C is warned about.",
    )
    setpoint_c: float | None = Field(
        default=None,
        ge=-40,
        le=40,
        title="Setpoint (°C)",
        description="Or write this setpoint, °C; it must lie inside the device's setpoint limits.",
    )
    comfort_min_c: float | None = Field(
        default=None,
        ge=-40,
        le=40,
        title="Comfort minimum (°C)",
        description="Never write a setpoint below this, °C (narrows the device's setpoint_min_c).",
    )
    comfort_max_c: float | None = Field(
        default=None,
        ge=-40,
        le=40,
        title="Comfort maximum (°C)",
        description="Never write a setpoint above this, °C (narrows the device's setpoint_max_c).",
    )
    precool: Precool | None = Field(
        default=None,
        title="Pre-cooling",
        description="Optional pre-cooling before the event (cooling devices only).",
    )

    @model_validator(mode="after")
    def _one(self) -> HvacAction:
        if (self.setpoint_offset_c is None) == (self.setpoint_c is None):
            raise ValueError("give exactly one of setpoint_offset_c or setpoint_c")
        lo, hi = self.comfort_min_c, self.comfort_max_c
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(f"comfort_min_c {lo:g} must be below comfort_max_c {hi:g}")
        if self.setpoint_c is not None:
            if (lo is not None and self.setpoint_c < lo) or (hi is not None and self.setpoint_c > hi):
                raise ValueError(
                    f"setpoint_c {self.setpoint_c:g} is outside the action's comfort limits "
                    f"[{lo if lo is not None else '-'}, {hi if hi is not None else '-'}]"
                )
        return self

    def comfort_limits(self, device_lo: float, device_hi: float) -> tuple[float, float]:
        """The device's setpoint limits narrowed by this action's comfort limits."""
        lo = device_lo if self.comfort_min_c is None else max(device_lo, self.comfort_min_c)
        hi = device_hi if self.comfort_max_c is None else min(device_hi, self.comfort_max_c)
        return lo, hi

    def shed_value(self, device: Any, original: float | None) -> float | bool:
        mode = getattr(getattr(device, "config", None), "mode", "cooling")
        if not isinstance(device, SetpointControl) or original is None:
            raise NotApplicable("setpoint unknown")
        dlo, dhi = device.setpoint_limits_c()
        lo, hi = self.comfort_limits(dlo, dhi)
        heating = mode == "heating"
        if self.setpoint_c is not None:
            target = self.setpoint_c
        else:
            offset = self.setpoint_offset_c or 0.0
            target = original - offset if heating else original + offset
        # The action's comfort limits first, then the device's, which no action can widen.
        target = min(dhi, max(dlo, min(hi, max(lo, target))))
        target = round_within(target, dlo, dhi, 1)
        if (not heating and target <= original) or (heating and target >= original):
            raise NotApplicable("setpoint already at or beyond the shed value")
        return target

    def expected_kw_on(self, device: Any) -> float:
        return (device.config.rated_kw or 0.0) * 0.25

    def config_estimate_kw(self, device_config: Any) -> float:
        return float(getattr(device_config, "rated_kw", None) or 0.0) * 0.25

    def live_kw(self, device: Any, estimate_kw: float) -> float:
        # Raising a cooling setpoint idles the compressor until the zone warms: at first the
        # step sheds about what the unit draws now, later much less (feedback covers that).
        p = device.power_kw()
        return estimate_kw if p is None else max(estimate_kw, p)

    def lead_s(self) -> float:
        return self.precool.lead_s if self.precool is not None else 0.0

    def lead_value(self, device: Any, original: float | None) -> float | None:
        """The pre-cooling setpoint, within limits; None if none applies."""
        if self.precool is None or original is None:
            return None
        mode = getattr(getattr(device, "config", None), "mode", "cooling")
        if not isinstance(device, SetpointControl) or mode != "cooling":
            return None
        dlo, dhi = device.setpoint_limits_c()
        lo, _hi = self.comfort_limits(dlo, dhi)
        target = round_within(min(dhi, max(dlo, lo, original - self.precool.offset_c)), dlo, dhi, 1)
        return target if target < original else None


class HvacModel(DeviceModel):
    """A zone cooled by a compressor under proportional control of its setpoint.

    Heat gain = UA * (T_out - T) + internal gains; raising the setpoint idles
    the compressor until the zone warms up, then it settles at a lower
    steady-state power. Releasing the setpoint causes the familiar rebound:
    the compressor runs flat out until the zone is back. The compressor loads
    and unloads at a limited rate (soft loading), as real chillers do.
    """

    def __init__(
        self,
        bank: Bank,
        rated_kw: float,
        setpoint_c: float = 24.0,
        outdoor_c: float = 32.0,
        cop: float = 3.0,
        warmup_s: float = 900.0,
        power_tau_s: float = 20.0,
        prop_band_k: float = 1.5,
        ramp_s: float = 120.0,
        delay_s: float = 0.0,
        outdoor_swing_c: float = 0.0,
        tz_offset_s: float = 8 * 3600,
    ) -> None:
        super().__init__(bank, delay_s)
        self.rated_kw = rated_kw
        self.cop = cop
        self.outdoor_mean_c = outdoor_c
        self.outdoor_swing_c = outdoor_swing_c
        self.tz_offset_s = tz_offset_s
        self.outdoor_c = outdoor_c
        self.setpoint_c = setpoint_c
        self.initial_setpoint_c = setpoint_c
        self.zone_c = setpoint_c
        self.prop_band_k = prop_band_k
        # Soft loading: the compressor's power changes at most rated/ramp_s per second.
        self.max_rate = rated_kw / ramp_s if ramp_s > 0 else math.inf
        # Sized so that at 8 K indoor/outdoor difference the unit runs at 60 % of rating.
        q_nom = 0.6 * rated_kw * cop
        self.internal_kw = 0.25 * q_nom
        self.ua = 0.75 * q_nom / max(1.0, outdoor_c - setpoint_c)
        # Thermal mass: with the compressor off the zone warms 2 K in `warmup_s`.
        self.capacity = q_nom * warmup_s / 2.0
        self.power_tau_s = power_tau_s
        self.power_kw = self._steady_kw(setpoint_c)
        bank.set("setpoint_c", setpoint_c)
        if bank.has("switch"):
            bank.set("switch", 1)
        self._publish()

    def _steady_kw(self, t: float) -> float:
        return max(0.0, min(self.rated_kw, (self.ua * (self.outdoor_c - t) + self.internal_kw) / self.cop))

    def apply(self, key: str, value: Value) -> None:
        if key == "setpoint_c" and isinstance(value, (int, float)):
            self.setpoint_c = float(value)

    def failsafe(self) -> None:
        # A BMS that loses its supervisor goes back to its local schedule's setpoint.
        self.setpoint_c = self.initial_setpoint_c

    def _outdoor(self, now: float) -> float:
        if not self.outdoor_swing_c:
            return self.outdoor_mean_c
        hour = ((now + self.tz_offset_s) % 86400) / 3600
        # Warmest at 15:00, coolest at 03:00.
        return self.outdoor_mean_c + self.outdoor_swing_c * math.cos((hour - 15) / 24 * 2 * math.pi)

    def step(self, now: float, dt: float) -> None:
        self.outdoor_c = self._outdoor(now)
        # Proportional controller around the steady-state power: full power `prop_band_k` above setpoint.
        demand = (
            self._steady_kw(self.zone_c) + self.rated_kw * (self.zone_c - self.setpoint_c) / self.prop_band_k
        )
        demand = max(0.0, min(self.rated_kw, demand))
        nxt = lag(self.power_kw, demand, dt, self.power_tau_s)
        limit = self.max_rate * dt
        self.power_kw = min(self.power_kw + limit, max(self.power_kw - limit, nxt))
        heat = self.ua * (self.outdoor_c - self.zone_c) + self.internal_kw - self.power_kw * self.cop
        self.zone_c += heat * dt / self.capacity
        self._publish()

    def _publish(self) -> None:
        b = self.bank
        if b.has("power_kw"):  # thermostats and AC gateways often report no power
            self.show("power_kw", round(self.power_kw, 1))
        if b.has("zone_temp_c"):
            self.show("zone_temp_c", round(self.zone_c, 1))
        if b.has("outdoor_temp_c"):
            self.show("outdoor_temp_c", round(self.outdoor_c, 1))

    def load_kw(self) -> float:
        return self.power_kw


def simulate(config: Any, bank: Bank, env: SimEnv) -> DeviceModel:
    return HvacModel(
        bank,
        rated_kw=env.rated_kw,
        outdoor_c=env.options.outdoor_c,
        outdoor_swing_c=env.options.outdoor_swing_c,
        tz_offset_s=env.tz_offset_s,
        delay_s=env.delay_s,
    )


# Compressors soft-load over minutes; setpoints walk back in steps so they do not all restart flat out.
@register(
    HvacConfig,
    action=HvacAction,
    traits=ControlTraits(lag_s=40.0, restore="walk_back"),
    simulator=simulate,
)
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

    def limit_violation(self, role: str, value: float) -> str | None:
        if role != "setpoint_c":
            return None
        lo, hi = self.setpoint_limits_c()
        if not lo - 1e-6 <= value <= hi + 1e-6:
            return f"setpoint {value} outside comfort limits [{lo}, {hi}]"
        return None

    def zone_temp_c(self) -> float | None:
        return self.reading("zone_temp_c")
