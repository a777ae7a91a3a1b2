"""Power meter: the site meter (or a sub-meter). Reads active power in kW."""

from __future__ import annotations

import math
import random
from typing import Any, Literal

from pydantic import Field

from drivers.device import Device, DeviceConfigBase
from drivers.physics import Bank, DeviceModel
from drivers.registry import SimEnv, register


class MeterConfig(DeviceConfigBase):
    kind: Literal["meter"] = Field(description="A power meter.")
    invert: bool = Field(default=False, description="Flip the sign (meters wired for export-positive).")


class MeterModel(DeviceModel):
    """A three-phase meter: shows the plant's sum with its own noise, refreshed every `update_s`."""

    def __init__(self, bank: Bank, noise_kw: float = 0.0, update_s: float = 1.0, seed: int = 1) -> None:
        super().__init__(bank)
        self.energy_kwh = 0.0
        self.total_kw = 0.0
        self.noise_kw = noise_kw
        self.update_s = update_s
        self._next_update = -math.inf
        self._rng = random.Random(seed * 7919 + 1)

    def show_total(self, now: float, total_kw: float, dt: float) -> None:
        self.total_kw = total_kw
        self.energy_kwh += max(0.0, total_kw) * dt / 3600
        if now < self._next_update:
            return  # the meter's own measurement interval: registers hold the last value
        self._next_update = now + self.update_s - 1e-6
        shown = total_kw + (self._rng.gauss(0, self.noise_kw) if self.noise_kw > 0 else 0.0)
        b = self.bank
        self.show("power_kw", round(shown, 1))
        if b.has("energy_kwh"):
            self.show("energy_kwh", round(self.energy_kwh, 1))
        if b.has("frequency_hz"):
            self.show("frequency_hz", 50.0)
        for ph in (1, 2, 3):
            if b.has(f"l{ph}_voltage"):
                self.show(f"l{ph}_voltage", 230.0)
                self.show(f"l{ph}_power", round(shown / 3, 1))
                self.show(f"l{ph}_current", round(shown * 1000 / 3 / 230.0, 1))

    def step(self, now: float, dt: float) -> None:
        pass

    def load_kw(self) -> float:
        return 0.0


def simulate(config: Any, bank: Bank, env: SimEnv) -> DeviceModel:
    o = env.options
    return MeterModel(bank, noise_kw=o.meter_noise_kw, update_s=o.meter_update_s, seed=env.seed)


# Nothing sheds a meter: no action. It measures the site, so its rating is no consumption.
@register(MeterConfig, simulator=simulate, site_load=False)
class Meter(Device):
    kind = "meter"
    required_roles = ("power_kw",)

    def power_kw(self) -> float | None:
        v = self.reading("power_kw")
        if v is None:
            return None
        return -v if getattr(self.config, "invert", False) else v
