"""Blueprint: how to add a device kind. Copy this file to `drivers/kinds/<kind>.py` and edit.

A kind is three things:

1. A pydantic config with `kind: Literal["<kind>"]` (the discriminator the
   site config is parsed by) and the settings a site operator gives: limits
   the agent must respect, nameplate data. Every field has a description;
   cross-field rules are validators with messages that say what to change.
2. A `Device` subclass naming the `required_roles` its profiles must map
   (and which of them must be writable), plus capability methods that read
   roles in canonical units: `self.reading("power_kw")` is None when unknown
   and callers must treat None as "unknown", never as zero.
3. `@register(Config)`, and an import in `drivers/kinds/__init__.py`.

Register maps stay data: a new vendor of an existing kind is only a YAML
profile under `drivers/profiles/` mapping the kind's roles (see
docs/profiles.md). Start-up writes (a failsafe current, a revert timer) go in
`setup_writes()`; a heartbeat the device watches is the profile's `watchdog:`
section, fed by `Device.maintain()`; override `watchdog_interval_s()` when a
config setting should change its pace. The simulator serves any profile of a
kind through the kind's physics model in `drivers/sim/models.py`, by role.

This module is documentation that runs: `tests/unit/test_device*.py` never
import it, and `Heater` below is not registered, so it cannot clash.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from drivers.device import Device, DeviceConfigBase


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


# @register(HeaterConfig)   <- in a real kind module
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
