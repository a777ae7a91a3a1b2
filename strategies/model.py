"""The strategy language facility managers write: stages of actions on devices or groups.

A strategy is an ordered list of stages; a stage holds actions; an action is
one of the built-in kinds with typed, bounded parameters. The controller adds
the resulting steps in order while the site needs more curtailment and takes
them back last-in-first-out when it needs less.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Program = Literal["contracted", "realtime", "price"]

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")


def _check_hours(v: tuple[str, str] | None) -> tuple[str, str] | None:
    if v is None:
        return v
    for t in v:
        if not _HHMM.match(t):
            raise ValueError(f"{t!r} is not a time of day; write HH:MM, e.g. '10:00'")
    if v[0] >= v[1]:
        raise ValueError(f"allowed_hours start {v[0]} must be before end {v[1]}")
    return v


class ActionBase(BaseModel):
    """Fields every action has: whom it addresses and the constraints on shedding."""

    model_config = ConfigDict(extra="forbid")

    devices: list[str] = Field(default_factory=list, description="Device names this action applies to.")
    group: str | None = Field(default=None, description="Apply to every device of this zone/group.")
    expected_kw: float | None = Field(
        default=None,
        gt=0,
        le=100000,
        description="Expected reduction per device, kW (an estimate until measured; learned afterwards).",
    )
    max_shed_s: float | None = Field(
        default=None, gt=0, description="Longest the device may stay shed, s; then it is restored."
    )
    min_hold_s: float = Field(
        default=60.0, ge=0, description="Once shed, keep it shed at least this long before releasing, s."
    )
    cooldown_s: float = Field(
        default=0.0, ge=0, description="After a restore, wait this long before shedding it again, s."
    )
    allowed_hours: tuple[str, str] | None = Field(
        default=None, description="Local time window in which this action may be applied, [HH:MM, HH:MM]."
    )

    _hours = field_validator("allowed_hours")(classmethod(lambda cls, v: _check_hours(v)))

    @model_validator(mode="after")
    def _targets(self) -> ActionBase:
        if not self.devices and not self.group:
            raise ValueError("an action needs devices: [...] or group: NAME")
        return self


class HvacAction(ActionBase):
    """Raise the cooling setpoint (lower the heating one) by an offset or to a value."""

    kind: Literal["hvac"] = Field(description="HVAC setpoint action.")
    setpoint_offset_c: float | None = Field(
        default=None, gt=0, le=10, description="Move the setpoint this many °C in the shedding direction."
    )
    setpoint_c: float | None = Field(
        default=None, ge=5, le=40, description="Or set this setpoint, °C (clamped to the device's limits)."
    )

    @model_validator(mode="after")
    def _one(self) -> HvacAction:
        if (self.setpoint_offset_c is None) == (self.setpoint_c is None):
            raise ValueError("give exactly one of setpoint_offset_c or setpoint_c")
        return self


class LightingAction(ActionBase):
    """Dim to a level, or switch the zone off (never below the zone's floor)."""

    kind: Literal["lighting"] = Field(description="Lighting dim action.")
    level_pct: float | None = Field(default=None, ge=0, le=100, description="Dim to this level, %.")
    off: bool = Field(default=False, description="Switch the zone off (down to its floor).")

    @model_validator(mode="after")
    def _one(self) -> LightingAction:
        if self.level_pct is None and not self.off:
            raise ValueError("give level_pct or off: true")
        return self


class EvChargerAction(ActionBase):
    """Cap charging current or power; never below the charger's minimum unless pause: true."""

    kind: Literal["ev_charger"] = Field(description="EV charger limit action.")
    current_a: float | None = Field(default=None, ge=0, le=80, description="Cap at this current, A.")
    power_kw: float | None = Field(default=None, ge=0, le=350, description="Or cap at this power, kW.")
    pause: bool = Field(default=False, description="Allow pausing charging (0 A) entirely.")

    @model_validator(mode="after")
    def _one(self) -> EvChargerAction:
        if self.current_a is None and self.power_kw is None and not self.pause:
            raise ValueError("give current_a, power_kw or pause: true")
        return self


class StorageAction(ActionBase):
    """Discharge at a power, keeping a reserve state of charge."""

    kind: Literal["storage"] = Field(description="Battery discharge action.")
    discharge_kw: float = Field(gt=0, le=100000, description="Discharge at this power, kW.")
    reserve_soc_pct: float | None = Field(
        default=None, ge=0, le=100, description="Stop at this SOC, % (default: the device's reserve)."
    )


class RelayAction(ActionBase):
    """Switch a load off, honouring its minimum off and on times."""

    kind: Literal["relay"] = Field(description="Switch-off action.")


Action = Annotated[
    HvacAction | LightingAction | EvChargerAction | StorageAction | RelayAction,
    Field(discriminator="kind"),
]


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Stage name, shown in plans and reports.")
    actions: list[Action] = Field(min_length=1, description="Actions of this stage, in order.")


class RestorePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step_interval_s: float = Field(
        default=5.0, ge=0, le=600, description="Seconds between restoring one step and the next."
    )
    ramp_s: float = Field(
        default=0.0, ge=0, le=3600, description="Ramp continuous actuators back over this long, s."
    )
    rebound_cap_factor: float | None = Field(
        default=1.05,
        ge=1.0,
        le=2.0,
        description="During the recovery window keep site load <= baseline x this factor.",
    )
    rebound_window_s: float = Field(
        default=900.0, ge=0, le=7200, description="Length of the post-event recovery window, s."
    )


class Strategy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = Field(default=1, description="Strategy format version.")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Strategy name.")
    description: str = Field(default="", description="What this strategy is for.")
    programs: list[Program] = Field(
        default_factory=lambda: ["contracted", "realtime"],
        description="Programs this strategy serves (contracted, realtime, price).",
    )
    default: bool = Field(default=False, description="Use when no strategy names the event's program.")
    stages: list[Stage] = Field(min_length=1, description="Stages, in the order they are applied.")
    restore: RestorePolicy = Field(default_factory=RestorePolicy, description="How devices come back.")
