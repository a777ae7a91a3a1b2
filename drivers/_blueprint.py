"""Blueprint: how to add a device kind. Copy this file to `drivers/kinds/<kind>.py` and edit.

A kind is one module; nothing in `strategies/`, `agent/` or `drivers/sim/`
changes when you add one. It holds:

1. A pydantic config with `kind: Literal["<kind>"]` (the discriminator the
   site config is parsed by) and the settings a site operator gives: limits
   the agent must respect, nameplate data. Every field has a description;
   cross-field rules are validators with messages that say what to change.
2. A strategy action (`ActionBase` subclass, `kind: Literal["<kind>"]`): the
   YAML a facility manager writes under a stage, with bounded, described
   parameters; `shed_role` (the role a shed writes) and `shed_value()`, the
   one place the written value is computed and clamped into the device's
   limits (raise `NotApplicable` when shedding would do nothing or the state
   is unknown). Optional: `expected_kw_on()`/`config_estimate_kw()` (what a
   shed saves before it is measured), `live_kw()` (what it would save now,
   from readings), `for_device()` (fold device settings into the action),
   `lead_s()`/`lead_value()` (prepare the device before control starts).
3. `ControlTraits`: `continuous` (the controller may set any depth between
   nothing and the full shed, e.g. a power limit), `lag_s` (how long its
   effect takes to show on the site meter) and `restore` (`release` at once,
   `walk_back` in steps, `ramp`).
4. A `Device` subclass naming the `required_roles` its profiles must map
   (and which of them must be writable), capability methods that read roles
   in canonical units (`self.reading("power_kw")` is None when unknown and
   callers must treat None as "unknown", never as zero), and
   `limit_violation()`, which the actuator checks before every write.
5. Simulator physics: a `DeviceModel` (drivers/physics.py) that turns the
   written registers into power, and `simulate(config, bank, env)` building
   it; the simulated plant serves any profile of the kind through it.
6. `@register(Config, action=..., traits=..., simulator=...)` on the Device
   class, and an import in `drivers/kinds/__init__.py`.

Register maps stay data: a new vendor of an existing kind is only a YAML
profile under `drivers/profiles/` mapping the kind's roles (see
docs/profiles.md). Start-up writes (a failsafe value, a revert timer) go in
`setup_writes()`; a heartbeat the device watches is the profile's `watchdog:`
section, fed by `Device.maintain()`; override `watchdog_interval_s()` when a
config setting should change its pace.

This module is documentation that runs: `tests/unit/test_device.py` checks
it, and `Heater` below is not registered, so it cannot clash.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from drivers.actions import ActionBase, ControlTraits, NotApplicable, round_within
from drivers.codec import Value
from drivers.device import Device, DeviceConfigBase
from drivers.physics import Bank, DeviceModel, lag
from drivers.registry import SimEnv


class HeaterConfig(DeviceConfigBase):
    kind: Literal["heater"] = Field(description="An electric process heater with a power limit.")
    min_power_pct: float = Field(
        default=20.0, ge=0, le=100, description="Never limit below this, % of rated."
    )
    revert_s: float | None = Field(
        default=None, gt=0, description="Heater drops the limit on its own after this silence, s (if mapped)."
    )

    @model_validator(mode="after")
    def _needs_rating(self) -> HeaterConfig:
        if self.rated_kw is None:
            raise ValueError("a heater needs rated_kw: the limit is a percentage of it")
        return self


class HeaterAction(ActionBase):
    """Limit a heater's power to a percentage of its rating, never below its configured minimum."""

    shed_role = "power_limit_pct"

    kind: Literal["heater"] = Field(title="Kind", description="Heater power limit action.")
    limit_pct: float = Field(
        ge=0,
        le=100,
        title="Power limit (%)",
        description="Limit the heater to this % of its rated power (raised to the heater's min_power_pct).",
    )

    def shed_value(self, device: Any, original: float | None) -> float | bool:
        if not isinstance(device, Heater) or original is None:
            raise NotApplicable("power limit unknown")
        lo, hi = device.limit_range_pct()
        value = round_within(max(lo, self.limit_pct), lo, hi, 0)
        if value >= original:
            raise NotApplicable("already limited")
        return value

    def expected_kw_on(self, device: Any) -> float:
        return self.config_estimate_kw(device.config)

    def config_estimate_kw(self, device_config: Any) -> float:
        rated = float(getattr(device_config, "rated_kw", None) or 0.0)
        floor = float(getattr(device_config, "min_power_pct", 0.0))
        return rated * (100 - max(self.limit_pct, floor)) / 100


# @register(HeaterConfig, action=HeaterAction, traits=TRAITS, simulator=simulate)   <- in a real kind module
class Heater(Device):
    kind = "heater"
    required_roles = ("power_kw", "power_limit_pct")
    writable_roles = ("power_limit_pct",)

    def _cfg(self) -> HeaterConfig:
        assert isinstance(self.config, HeaterConfig)
        return self.config

    def setup_writes(self) -> list[tuple[str, float]]:
        c = self._cfg()
        return [] if c.revert_s is None else [("limit_revert_s", c.revert_s)]

    # Capability methods: what strategies may ask, in canonical units, None = unknown.
    def power_limit_pct(self) -> float | None:
        return self.reading("power_limit_pct")

    def limit_range_pct(self) -> tuple[float, float]:
        return self._cfg().min_power_pct, 100.0

    def limit_violation(self, role: str, value: float) -> str | None:
        lo, hi = self.limit_range_pct()
        if role == "power_limit_pct" and not lo - 1e-6 <= value <= hi + 1e-6:
            return f"power limit {value} % outside [{lo}, {hi}]"
        return None


#: A heater's element answers within seconds; a limit is a step, restored at once.
TRAITS = ControlTraits(lag_s=3.0)


class HeaterModel(DeviceModel):
    """The heater draws its rating times the limit (an element under a thyristor controller)."""

    def __init__(self, bank: Bank, rated_kw: float, delay_s: float = 0.0) -> None:
        super().__init__(bank, delay_s)
        self.rated_kw = rated_kw
        self.limit_pct = 100.0
        self.power_kw = rated_kw
        bank.set("power_limit_pct", 100.0)
        self.show("power_kw", round(self.power_kw, 1))

    def apply(self, key: str, value: Value) -> None:
        if key == "power_limit_pct" and isinstance(value, (int, float)):
            self.limit_pct = max(0.0, min(100.0, float(value)))

    def failsafe(self) -> None:
        self.limit_pct = 100.0  # a controller that loses its supervisor heats as commanded locally

    def step(self, now: float, dt: float) -> None:
        self.power_kw = lag(self.power_kw, self.rated_kw * self.limit_pct / 100, dt, 2.0)
        self.show("power_kw", round(self.power_kw, 1))

    def load_kw(self) -> float:
        return self.power_kw


def simulate(config: Any, bank: Bank, env: SimEnv) -> DeviceModel:
    return HeaterModel(bank, rated_kw=env.rated_kw, delay_s=env.delay_s)
