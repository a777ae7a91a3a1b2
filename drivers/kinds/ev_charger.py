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
        description="Feed the charger's heartbeat register this often, s (default: the profile's interval).",
    )
    failsafe_current_a: float | None = Field(
        default=None,
        ge=0,
        description="Current the charger falls back to when the agent goes silent, A (written at start-up "
        "if the profile maps failsafe_current_a).",
    )
    failsafe_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="Silence after which the charger falls back, s (written at start-up if mapped).",
    )

    @model_validator(mode="after")
    def _limits(self) -> EvChargerConfig:
        if self.failsafe_current_a is not None and self.failsafe_current_a > self.max_current_a:
            raise ValueError(
                f"failsafe_current_a {self.failsafe_current_a} must not exceed max_current_a {self.max_current_a}"
            )
        if self.heartbeat_s and self.failsafe_timeout_s and self.heartbeat_s * 2 > self.failsafe_timeout_s:
            raise ValueError(
                f"heartbeat_s {self.heartbeat_s} must be at most half of failsafe_timeout_s "
                f"{self.failsafe_timeout_s}, or one late feed trips the failsafe"
            )
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

    def setup_writes(self) -> list[tuple[str, float]]:
        c = self._cfg()
        out: list[tuple[str, float]] = []
        if c.failsafe_current_a is not None:
            out.append(("failsafe_current_a", c.failsafe_current_a))
        if c.failsafe_timeout_s is not None:
            out.append(("failsafe_timeout_s", c.failsafe_timeout_s))
        return out

    def watchdog_interval_s(self) -> float | None:
        if self.profile.watchdog is None:
            return None
        return self._cfg().heartbeat_s or self.profile.watchdog.interval_s

    def current_limit_a(self) -> float | None:
        return self.reading("current_limit_a")

    def vehicle_connected(self) -> bool | None:
        """Whether a vehicle is plugged in (None when the profile does not say or it is unknown)."""
        v = self.reading("vehicle_connected")
        if v is None:
            return None
        p = self.point_for("vehicle_connected")
        threshold = p.true_from if p is not None and p.true_from is not None else 1
        return v >= threshold

    def current_range_a(self) -> tuple[float, float]:
        c = self._cfg()
        return c.min_current_a, c.max_current_a

    def kw_per_amp(self) -> float:
        c = self._cfg()
        return c.phases * c.voltage_v / 1000.0
