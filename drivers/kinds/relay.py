"""A switched load behind a relay (pumps, heaters, compressors): shed by switching off."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, model_validator

from drivers.actions import ActionBase, ControlTraits, NotApplicable
from drivers.codec import Value
from drivers.device import Device, DeviceConfigBase
from drivers.physics import Bank, DeviceModel, lag
from drivers.registry import SimEnv, register


class RelayConfig(DeviceConfigBase):
    kind: Literal["relay"] = Field(description="A load switched by a relay or contactor.")
    min_off_s: float = Field(default=0.0, ge=0, description="Once off, stay off at least this long, s.")
    min_on_s: float = Field(default=0.0, ge=0, description="Once on, stay on at least this long, s.")


class RelayAction(ActionBase):
    """Switch a load off (a relay or any on/off load), honouring its minimum off and on times."""

    shed_role = "switch"

    kind: Literal["relay"] = Field(title="Kind", description="Switch-off action (relay / generic load).")
    min_off_s: float | None = Field(
        default=None,
        ge=0,
        le=86400,
        title="Minimum off time (s)",
        description="Once switched off, keep it off at least this long, s (default: the device's "
        "min_off_s; the larger of the two applies).",
    )
    min_on_s: float | None = Field(
        default=None,
        ge=0,
        le=86400,
        title="Minimum on time (s)",
        description="Once back on, keep it on at least this long before switching it off again, s "
        "(default: the device's min_on_s; the larger applies).",
    )

    @model_validator(mode="after")
    def _times(self) -> RelayAction:
        if self.min_off_s is not None and self.max_shed_s is not None and self.min_off_s > self.max_shed_s:
            raise ValueError(
                f"min_off_s {self.min_off_s:g} exceeds max_shed_s {self.max_shed_s:g}; "
                "the load could never be switched back in time"
            )
        return self

    def shed_value(self, device: Any, original: float | None) -> float | bool:
        if original is not None and not original:
            raise NotApplicable("already off")
        return False

    def for_device(self, device_config: Any) -> Self:
        """The minimum off time becomes the step's minimum hold and the minimum on time its cooldown
        (the larger of the action's and the device's), so compressors are never short-cycled."""
        min_off = max(self.min_off_s or 0.0, float(getattr(device_config, "min_off_s", 0.0) or 0.0))
        min_on = max(self.min_on_s or 0.0, float(getattr(device_config, "min_on_s", 0.0) or 0.0))
        if min_off <= self.min_hold_s and min_on <= self.cooldown_s:
            return self
        return self.model_copy(
            update={
                "min_off_s": min_off,
                "min_on_s": min_on,
                "min_hold_s": max(self.min_hold_s, min_off),
                "cooldown_s": max(self.cooldown_s, min_on),
            }
        )


class RelayModel(DeviceModel):
    def __init__(self, bank: Bank, rated_kw: float, on: bool = True, delay_s: float = 0.0) -> None:
        super().__init__(bank, delay_s)
        self.rated_kw = rated_kw
        self.on = on
        self.power_kw = rated_kw if on else 0.0
        bank.set("switch", on)
        self._publish()

    def apply(self, key: str, value: Value) -> None:
        if key == "switch":
            self.on = bool(value)

    def step(self, now: float, dt: float) -> None:
        self.power_kw = lag(self.power_kw, self.rated_kw if self.on else 0.0, dt, 2.0)
        self._publish()

    def _publish(self) -> None:
        if self.bank.has("power_kw"):
            self.show("power_kw", round(self.power_kw, 1))

    def load_kw(self) -> float:
        return self.power_kw


def simulate(config: Any, bank: Bank, env: SimEnv) -> DeviceModel:
    return RelayModel(bank, rated_kw=env.rated_kw, delay_s=env.delay_s)


@register(RelayConfig, action=RelayAction, traits=ControlTraits(lag_s=3.0), simulator=simulate)
class Relay(Device):
    kind = "relay"
    required_roles = ("switch",)
    writable_roles = ("switch",)

    def is_on(self) -> bool | None:
        v = self.reading("switch")
        return None if v is None else bool(v)
