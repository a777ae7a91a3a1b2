"""What a device kind offers strategies and the controller: its action, shed rule and control traits.

Each kind module (`drivers/kinds/<kind>.py`) that can shed subclasses
`ActionBase` with `kind: Literal["<kind>"]` (the strategy YAML's action for
that kind, with its parameters and limits), names the role a shed writes
(`shed_role`) and implements `shed_value()`, the one place a shed's value is
computed and clamped into the device's limits. `ControlTraits` tell the
controller how the kind behaves on the meter and how it comes back. The
strategy language builds its action union from the registry
(`drivers/registry.py`), so a new kind needs no edit in `strategies/` or
`agent/`. Nothing here imports Modbus, `agent/` or `strategies/`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")


class NotApplicable(Exception):
    """The step cannot shed now (device state unknown, reserve reached, nothing to shed)."""


@dataclass(frozen=True)
class ControlTraits:
    """How a kind's shed behaves for the controller."""

    #: Depth can be set anywhere between nothing and the full shed (battery kW, charger A): the
    #: controller trims it, and it is restored last, ramped, absorbing the others' rebound.
    continuous: bool = False
    #: Time constant of the effect on the site meter, s (on top of the load filter). At most 5 s
    #: is a fast step, preferred when the target moves.
    lag_s: float = 5.0
    #: How it comes back: `release` at once (last shed, first restored), `walk_back` in steps of
    #: the restore policy's release step (HVAC setpoints), `ramp` over the continuous ramp.
    restore: Literal["release", "walk_back", "ramp"] = "release"

    @property
    def fast(self) -> bool:
        return self.lag_s <= 5.0


def check_hours(v: tuple[str, str] | None) -> tuple[str, str] | None:
    if v is None:
        return v
    for t in v:
        if not _HHMM.match(t):
            raise ValueError(f"{t!r} is not a time of day; write HH:MM from 00:00 to 24:00, e.g. '10:00'")
    if v[0] >= v[1]:
        raise ValueError(
            f"allowed_hours start {v[0]} must be before end {v[1]}; windows across midnight are not supported"
        )
    return v


def round_within(value: float, lo: float, hi: float, ndigits: int) -> float:
    """`value` rounded to the write resolution without leaving [lo, hi] (limits need not be round)."""
    q = 10.0**ndigits
    out = round(value, ndigits)
    if out > hi:
        out = math.floor(hi * q + 1e-9) / q
    if out < lo:
        out = math.ceil(lo * q - 1e-9) / q
    return out


class ActionBase(BaseModel):
    """Fields every action has: whom it addresses and the constraints on shedding."""

    model_config = ConfigDict(extra="forbid")

    #: The role a shed writes (restore writes the journalled value back).
    shed_role: ClassVar[str] = ""

    if TYPE_CHECKING:
        # Each kind's action declares `kind: Literal["<kind>"]`, the strategy's discriminator.
        kind: str

    devices: list[str] = Field(
        default_factory=list,
        title="Devices",
        description="Device names (from `devices:`) this action applies to, in order.",
    )
    group: str | None = Field(
        default=None,
        title="Group",
        description="Apply to every device whose `zone:` is this name, in config order (after `devices`).",
    )
    expected_kw: float | None = Field(
        default=None,
        gt=0,
        le=100000,
        title="Expected reduction per device (kW)",
        description="Expected reduction per device, kW: used until the step has been measured, then the "
        "measured value is learned. Default: estimated from the device's rated_kw.",
    )
    max_shed_s: float | None = Field(
        default=None,
        gt=0,
        le=86400,
        title="Longest shed (s)",
        description="Longest the device may stay shed, s; then it is restored whatever the band says.",
    )
    min_hold_s: float = Field(
        default=60.0,
        ge=0,
        le=86400,
        title="Minimum hold (s)",
        description="Once shed, keep it shed at least this long before the controller may release it, s.",
    )
    cooldown_s: float = Field(
        default=0.0,
        ge=0,
        le=86400,
        title="Cooldown (s)",
        description="After a restore, wait this long before shedding the same device again, s.",
    )
    allowed_hours: tuple[str, str] | None = Field(
        default=None,
        title="Allowed hours",
        description="Local time window in which this action may be applied, [HH:MM, HH:MM], e.g. "
        "['10:00', '15:00']. Default: any time.",
    )

    _hours = field_validator("allowed_hours")(classmethod(lambda cls, v: check_hours(v)))

    @model_validator(mode="after")
    def _targets(self) -> ActionBase:
        if not self.devices and not self.group:
            raise ValueError("an action needs devices: [NAME, ...] or group: ZONE")
        if len(set(self.devices)) != len(self.devices):
            raise ValueError("a device is listed twice in devices")
        if self.max_shed_s is not None and self.min_hold_s > self.max_shed_s:
            raise ValueError(
                f"min_hold_s {self.min_hold_s:g} exceeds max_shed_s {self.max_shed_s:g}; "
                "the hold must fit in the longest shed"
            )
        return self

    # -- the kind's rules; `device` is the kind's device (its capability protocols) --------------

    def shed_value(self, device: Any, original: float | None) -> float | bool:
        """The value a shed writes, clamped into the device's limits.

        `original` is the value before the event (from the revert journal or the
        latest reading). Raises NotApplicable when the shed would do nothing or the
        device state is unknown.
        """
        raise NotApplicable(f"unsupported action {self!r}")

    def expected_kw_on(self, device: Any) -> float:
        """A first estimate of what shedding saves, from the device's config and readings."""
        return device.config.rated_kw or 0.0

    def config_estimate_kw(self, device_config: Any) -> float:
        """What shedding one device saves, from its config alone (validation, plans without readings)."""
        return float(getattr(device_config, "rated_kw", None) or 0.0)

    def live_kw(self, device: Any, estimate_kw: float) -> float:
        """What adding the shed would save now, given the learned or configured estimate.

        Runs for every candidate every control cycle: keep it cheap.
        """
        return estimate_kw

    def for_device(self, device_config: Any) -> Self:
        """The action as the controller runs it on one device (device settings folded in)."""
        return self

    def lead_s(self) -> float:
        """How long before control starts the action prepares the device (pre-cooling), s; 0 = never."""
        return 0.0

    def lead_value(self, device: Any, original: float | None) -> float | None:
        """The value written `lead_s()` before control starts, within limits; None if none applies."""
        return None
