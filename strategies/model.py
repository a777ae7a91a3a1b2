"""The strategy language facility managers write: stages of actions on devices or groups.

A strategy is an ordered list of stages; a stage holds actions; an action is
one of the built-in kinds with typed, bounded parameters. The controller adds
the resulting steps in order while the site needs more curtailment and takes
them back last-in-first-out when it needs less. docs/strategies.md is the
user's guide; every field here carries the description editors show.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Program = Literal["contracted", "realtime", "price"]

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def _check_hours(v: tuple[str, str] | None) -> tuple[str, str] | None:
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


class ActionBase(BaseModel):
    """Fields every action has: whom it addresses and the constraints on shedding."""

    model_config = ConfigDict(extra="forbid")

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

    _hours = field_validator("allowed_hours")(classmethod(lambda cls, v: _check_hours(v)))

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


class LightingAction(ActionBase):
    """Dim to a level, or switch the zone off, never below the zone's floor."""

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


class EvChargerAction(ActionBase):
    """Cap charging current or power; never below the charger's minimum unless pause: true."""

    kind: Literal["ev_charger"] = Field(title="Kind", description="EV charger limit action.")
    current_a: float | None = Field(
        default=None,
        ge=0,
        le=500,
        title="Current cap (A)",
        description="Cap each charger at this current per phase, A (raised to the charger's min_current_a "
        "unless pause: true).",
    )
    power_kw: float | None = Field(
        default=None,
        ge=0,
        le=350,
        title="Power cap (kW)",
        description="Or cap each charger at this power, kW (converted to A with the charger's phases and "
        "voltage).",
    )
    pause: bool = Field(
        default=False,
        title="Allow pause",
        description="Allow pausing charging (0 A) when the cap is below the charger's minimum current.",
    )

    @model_validator(mode="after")
    def _one(self) -> EvChargerAction:
        if self.current_a is not None and self.power_kw is not None:
            raise ValueError("give current_a or power_kw, not both")
        if self.current_a is None and self.power_kw is None and not self.pause:
            raise ValueError("give current_a, power_kw or pause: true")
        return self


class StorageAction(ActionBase):
    """Discharge a battery at a power, keeping a reserve state of charge, within the inverter's limit."""

    kind: Literal["storage"] = Field(title="Kind", description="Battery discharge action.")
    discharge_kw: float = Field(
        gt=0,
        le=100000,
        title="Discharge power (kW)",
        description="Discharge at this power, kW (limited to the device's max_discharge_kw).",
    )
    reserve_soc_pct: float | None = Field(
        default=None,
        ge=0,
        le=100,
        title="Reserve SOC (%)",
        description="Stop at this state of charge, %; never lower than the device's reserve_soc_pct.",
    )


class RelayAction(ActionBase):
    """Switch a load off (a relay or any on/off load), honouring its minimum off and on times."""

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


Action = Annotated[
    HvacAction | LightingAction | EvChargerAction | StorageAction | RelayAction,
    Field(discriminator="kind"),
]

ACTION_KINDS = ("hvac", "lighting", "ev_charger", "storage", "relay")


class Stage(BaseModel):
    """A named group of actions; stages are applied in order, their actions in order."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=_NAME, title="Stage name", description="Stage name, shown in plans and reports."
    )
    description: str = Field(default="", title="Description", description="What this stage is for.")
    actions: list[Action] = Field(
        min_length=1, title="Actions", description="Actions of this stage, applied in order."
    )


class RestorePolicy(BaseModel):
    """How shed devices come back after the event: staggered, ramped, without a rebound peak."""

    model_config = ConfigDict(extra="forbid")

    step_interval_s: float = Field(
        default=5.0,
        ge=0,
        le=600,
        title="Step interval (s)",
        description="Seconds between restoring one step and the next (last shed, first restored).",
    )
    ramp_s: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        title="Ramp (s)",
        description="Spread the whole restore over at least this long, s: the interval between steps "
        "becomes max(step_interval_s, ramp_s / number of shed steps).",
    )
    rebound_cap_factor: float | None = Field(
        default=1.05,
        ge=1.0,
        le=2.0,
        title="Rebound cap",
        description="During the recovery window, hold back the next restore while site load would exceed "
        "baseline x this factor. null = no cap.",
    )
    rebound_window_s: float = Field(
        default=900.0,
        ge=0,
        le=7200,
        title="Recovery window (s)",
        description="Length of the post-event recovery window in which the rebound cap applies, s.",
    )

    hvac_release_step_c: float = Field(
        default=0.5,
        ge=0,
        le=10,
        title="HVAC release step (°C)",
        description="Walk HVAC setpoints back in steps of this many °C (0 = all at once), so compressors "
        "do not all restart flat out.",
    )
    hvac_release_interval_s: float = Field(
        default=60.0,
        ge=0,
        le=1800,
        title="HVAC release interval (s)",
        description="Seconds between two HVAC release steps (the unit's response shows before the next).",
    )
    continuous_ramp_s: float = Field(
        default=120.0,
        ge=0,
        le=3600,
        title="Continuous ramp (s)",
        description="Ramp battery discharge and charger current back over about this long (0 = at once); "
        "they are restored last and absorb the HVAC rebound meanwhile.",
    )

    def interval_s(self, shed_steps: int) -> float:
        """Seconds between restores when `shed_steps` steps were shed at the end of the event."""
        return max(self.step_interval_s, self.ramp_s / shed_steps if shed_steps > 0 else 0.0)


class Strategy(BaseModel):
    """A load-shedding strategy: ordered stages of actions, and how devices come back."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = Field(default=1, title="Version", description="Strategy format version (1).")
    name: str = Field(pattern=_NAME, title="Name", description="Strategy name, unique in the site.")
    description: str = Field(default="", title="Description", description="What this strategy is for.")
    programs: list[Program] = Field(
        default_factory=lambda: list[Program](["contracted", "realtime"]),
        title="Programs",
        description="Programs this strategy serves: contracted, realtime, price.",
    )
    default: bool = Field(
        default=False,
        title="Default",
        description="Use this strategy when no other names the event's program.",
    )
    stages: list[Stage] = Field(
        min_length=1, title="Stages", description="Stages, in the order they are applied."
    )
    restore: RestorePolicy = Field(
        default_factory=RestorePolicy, title="Restore policy", description="How devices come back."
    )

    @model_validator(mode="after")
    def _unique_stages(self) -> Strategy:
        names = [s.name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stage name {dup[0]!r} is used twice; stage names must be unique")
        return self


class StrategySelection(BaseModel):
    """Which strategy (by name) runs for each program; unnamed programs fall back to `default`."""

    model_config = ConfigDict(extra="forbid")

    contracted: str | None = Field(
        default=None, title="Contracted", description="Strategy for contracted (day-ahead) events."
    )
    realtime: str | None = Field(
        default=None, title="Real-time", description="Strategy for real-time events."
    )
    price: str | None = Field(default=None, title="Price", description="Strategy for price-based events.")
    default: str | None = Field(
        default=None, title="Default", description="Strategy for any program not named above."
    )

    def named(self) -> dict[str, str]:
        """{program or 'default': strategy name} for the entries that are set."""
        return {k: v for k, v in self.model_dump().items() if v is not None}
