"""The simulated site's own load: a daily shape, noise and process steps; and every kind's physics.

Each device kind's physics lives with the kind (`drivers/kinds/<kind>.py`, on
the base in `drivers/physics.py`), so the plant builds any registered kind
by looking it up; they are re-exported here for the simulator's users.
Realistic enough to tune a controller on, seedable, fast.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from drivers.kinds.ev_charger import EvChargerModel, EvSession
from drivers.kinds.hvac import HvacModel
from drivers.kinds.lighting import LightingModel
from drivers.kinds.meter import MeterModel
from drivers.kinds.relay import RelayModel
from drivers.kinds.storage import StorageModel
from drivers.physics import DeviceModel, lag

__all__ = [
    "FACTORY_DAY",
    "OFFICE_DAY",
    "PROFILES",
    "WAREHOUSE_DAY",
    "BaseLoad",
    "DailyProfile",
    "DeviceModel",
    "EvChargerModel",
    "EvSession",
    "HvacModel",
    "LightingModel",
    "MeterModel",
    "ProcessStep",
    "RelayModel",
    "StorageModel",
    "lag",
]


@dataclass
class DailyProfile:
    """Fraction of peak by local hour (24 values, linearly interpolated)."""

    hourly: list[float]

    def at(self, local_hour: float) -> float:
        h = local_hour % 24
        i = int(h)
        frac = h - i
        return self.hourly[i] * (1 - frac) + self.hourly[(i + 1) % 24] * frac


FACTORY_DAY = DailyProfile(
    [
        0.55,
        0.54,
        0.54,
        0.53,
        0.54,
        0.56,
        0.62,
        0.72,
        0.82,
        0.86,
        0.88,
        0.88,
        0.84,
        0.86,
        0.88,
        0.87,
        0.85,
        0.80,
        0.72,
        0.66,
        0.62,
        0.60,
        0.58,
        0.56,
    ]
)
OFFICE_DAY = DailyProfile(
    [
        0.30,
        0.29,
        0.29,
        0.29,
        0.30,
        0.32,
        0.40,
        0.60,
        0.82,
        0.92,
        0.95,
        0.96,
        0.90,
        0.93,
        0.96,
        0.95,
        0.92,
        0.85,
        0.65,
        0.48,
        0.40,
        0.36,
        0.33,
        0.31,
    ]
)
WAREHOUSE_DAY = DailyProfile(
    [
        0.45,
        0.45,
        0.44,
        0.44,
        0.46,
        0.52,
        0.70,
        0.82,
        0.86,
        0.88,
        0.88,
        0.87,
        0.84,
        0.86,
        0.87,
        0.86,
        0.84,
        0.78,
        0.66,
        0.58,
        0.52,
        0.49,
        0.47,
        0.46,
    ]
)
PROFILES = {"factory": FACTORY_DAY, "office": OFFICE_DAY, "warehouse": WAREHOUSE_DAY}


@dataclass
class ProcessStep:
    """A machine starting (kw > 0) or stopping (kw < 0) at `at` for `duration_s`, ramping in `ramp_s`."""

    at: float
    kw: float
    duration_s: float = math.inf
    ramp_s: float = 3.0

    def kw_at(self, now: float) -> float:
        if now < self.at or now >= self.at + self.duration_s + self.ramp_s:
            return 0.0
        if now < self.at + self.ramp_s:
            return self.kw * (now - self.at) / self.ramp_s
        end = self.at + self.duration_s
        if now >= end:
            return self.kw * (1 - (now - end) / self.ramp_s)
        return self.kw


@dataclass
class BaseLoad:
    """The site's uncontrolled load: a daily shape, smooth (AR(1)) noise and process steps, kW."""

    peak_kw: float
    profile: DailyProfile = field(default_factory=lambda: FACTORY_DAY)
    share: float = 0.75  # the uncontrollable share of the site's peak
    noise_pct: float = 0.5  # std of the noise, % of peak
    tz_offset_s: float = 8 * 3600
    seed: int = 1
    noise_tau_s: float = 60.0
    process: list[ProcessStep] = field(default_factory=list)
    step_kw: float = 0.0  # a constant offset tests may set by hand
    _noise: float = 0.0
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def step(self, now: float, dt: float) -> None:
        # AR(1) with a ~60 s correlation time: realistic meter wander, not white noise.
        a = math.exp(-dt / self.noise_tau_s)
        sigma = self.noise_pct / 100 * self.peak_kw
        self._noise = a * self._noise + math.sqrt(max(0.0, 1 - a * a)) * self._rng.gauss(0, sigma)

    def process_kw(self, now: float) -> float:
        return sum(p.kw_at(now) for p in self.process)

    def kw(self, now: float) -> float:
        hour = ((now + self.tz_offset_s) % 86400) / 3600
        shape = self.peak_kw * self.share * self.profile.at(hour)
        return shape + self._noise + self.step_kw + self.process_kw(now)
