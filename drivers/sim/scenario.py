"""Scenario files: one simulated day at a site (load profile, disturbances, one DR event).

A scenario names a site config, the day, the plant's realism (noise, meter,
actuation delays, weather, EV sessions) and what happens: process steps
(machines starting and stopping), device failures, meter outages, and the
event with any mid-event target changes. Random parts are drawn from the
scenario's seed, so a scenario is the same plant every run. Times are local
"HH:MM[:SS]" on the scenario's day.

This module only describes and builds the plant; the event itself is handed
to the harness as plain data (drivers/ knows nothing of DR).
"""

from __future__ import annotations

import random
from datetime import date, datetime, time
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.device import DeviceConfigBase
from drivers.sim.models import PROFILES, DailyProfile, EvSession, ProcessStep
from drivers.sim.plant import PlantOptions, SimulatedPlant


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _hms(v: str) -> str:
    try:
        time.fromisoformat(v)
    except ValueError:
        raise ValueError(f"{v!r} is not a local time; write HH:MM or HH:MM:SS") from None
    return v


class Step(_M):
    at: str = Field(description="Local time the machine starts (kw_pct > 0) or stops (< 0).")
    kw_pct: float = Field(ge=-50, le=50, description="Size of the step, % of peak.")
    duration_s: float = Field(default=600, gt=0, description="How long it lasts, s.")
    ramp_s: float = Field(default=3, ge=0, le=120, description="Seconds to reach full size.")

    _t = field_validator("at")(classmethod(lambda cls, v: _hms(v)))


class RandomSteps(_M):
    count: int = Field(ge=0, le=50, description="How many process steps to draw.")
    pct: tuple[float, float] = Field(default=(5, 15), description="Size range, % of peak (sign drawn).")
    window: tuple[str, str] = Field(description="Local times they fall between (one at a time).")
    duration_s: tuple[float, float] = Field(default=(180, 600), description="Duration range, s.")
    up_share: float = Field(default=0.5, ge=0, le=1, description="Share of steps that start a machine.")


class Failure(_M):
    at: str = Field(description="Local time the device stops answering.")
    device: str = Field(description="Device name.")
    failsafe: bool = Field(default=True, description="The device falls back to its own defaults.")
    code: int = Field(default=4, description="Modbus exception code it answers with.")

    _t = field_validator("at")(classmethod(lambda cls, v: _hms(v)))


class MeterOutage(_M):
    at: str = Field(description="Local time the site meter stops answering.")
    duration_s: float = Field(gt=0, description="For how long, s.")

    _t = field_validator("at")(classmethod(lambda cls, v: _hms(v)))


class TargetChange(_M):
    at: str = Field(description="Local time the provider changes the target.")
    target_pct: float = Field(gt=0, le=100, description="New target, % of peak.")

    _t = field_validator("at")(classmethod(lambda cls, v: _hms(v)))


class EventSpec(_M):
    start: str = Field(description="Local start time.")
    duration_s: float = Field(gt=0, le=4 * 3600, description="Event length, s.")
    target_pct: float = Field(gt=0, le=100, description="Requested reduction, % of peak.")
    program: Literal["contracted", "realtime", "price"] = "contracted"
    ramp_up_s: float = Field(default=0, ge=0, le=3600, description="Control starts this long before.")

    _t = field_validator("start")(classmethod(lambda cls, v: _hms(v)))


class EvTraffic(_M):
    arrivals_per_hour: float = Field(default=1.0, ge=0, le=60, description="Mean arrivals per charger.")
    stay_min: tuple[float, float] = Field(default=(30, 180), description="Stay range, minutes.")
    occupied_at_start: float = Field(default=0.7, ge=0, le=1, description="Chance a vehicle is there.")


class Scenario(_M):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Scenario name.")
    description: str = ""
    site: str = Field(description="Site config YAML, relative to the scenario file.")
    day: date = Field(description="The simulated day.")
    seed: int = Field(default=1, description="Seed of every random draw.")
    profile: Literal["factory", "office", "warehouse"] | list[float] = Field(
        default="factory", description="Daily load shape: a name or 24 fractions of peak."
    )
    noise_pct: float = Field(default=0.5, ge=0, le=10, description="Load wander (AR(1) std), % of peak.")
    meter_noise_pct: float = Field(default=0.0, ge=0, le=5, description="Meter noise (std), % of peak.")
    meter_update_s: float = Field(default=1.0, gt=0, le=60, description="Meter refresh interval, s.")
    delay_s: dict[str, float] = Field(default_factory=dict, description="Actuation delay per kind, s.")
    outdoor_c: float = Field(default=32.0, description="Mean outdoor temperature, °C.")
    outdoor_swing_c: float = Field(default=0.0, ge=0, le=15, description="Daily outdoor swing, ±°C.")
    storage_soc_pct: float = Field(default=80.0, ge=0, le=100)
    ev: EvTraffic | None = Field(default=None, description="Random EV sessions; none = always plugged in.")
    steps: list[Step] = Field(default_factory=list, description="Process steps at given times.")
    random_steps: RandomSteps | None = None
    failures: list[Failure] = Field(default_factory=list)
    meter_outages: list[MeterOutage] = Field(default_factory=list)
    event: EventSpec
    target_changes: list[TargetChange] = Field(default_factory=list)

    # Where the file was loaded from (to resolve `site`).
    path: Path | None = Field(default=None, exclude=True)

    def site_path(self) -> Path:
        base = self.path.parent if self.path else Path.cwd()
        return (base / self.site).resolve()

    def ts(self, hhmm: str, tz: ZoneInfo) -> float:
        """Epoch seconds of a local time on the scenario's day."""
        return datetime.combine(self.day, time.fromisoformat(hhmm), tz).timestamp()

    def daily_profile(self) -> DailyProfile:
        return PROFILES[self.profile] if isinstance(self.profile, str) else DailyProfile(list(self.profile))

    def process_steps(self, tz: ZoneInfo, peak_kw: float) -> list[ProcessStep]:
        out = [
            ProcessStep(self.ts(s.at, tz), peak_kw * s.kw_pct / 100, s.duration_s, s.ramp_s)
            for s in self.steps
        ]
        r = self.random_steps
        if r is not None:
            rng = random.Random(self.seed * 1_000_003 + 17)
            a, b = self.ts(r.window[0], tz), self.ts(r.window[1], tz)
            # One machine at a time: spread over the window, never overlapping (two machines
            # stopping at once could leave no controller anything to release).
            slot = (b - a) / max(1, r.count)
            for i in range(r.count):
                sign = 1 if rng.random() < r.up_share else -1
                size = rng.uniform(*r.pct) * sign
                dur = min(rng.uniform(*r.duration_s), slot * 0.8)
                at = a + i * slot + rng.uniform(0, slot - dur)
                out.append(ProcessStep(at, peak_kw * size / 100, dur, rng.uniform(1, 5)))
        return sorted(out, key=lambda p: p.at)

    def ev_sessions(self, chargers: list[str], tz: ZoneInfo) -> dict[str, list[EvSession]]:
        if self.ev is None:
            return {}
        rng = random.Random(self.seed * 7_654_321 + 3)
        day0 = self.ts("06:00", tz)
        out: dict[str, list[EvSession]] = {}
        for name in chargers:
            sessions: list[EvSession] = []
            t = self.ts(self.event.start, tz) - 3 * 3600
            if rng.random() < self.ev.occupied_at_start:
                sessions.append(EvSession(day0, t + rng.uniform(3, 6) * 3600, rng.choice([16.0, 24.0, 32.0])))
                t = sessions[-1].leave
            rate = self.ev.arrivals_per_hour / 3600
            while rate > 0 and t < day0 + 16 * 3600:
                t += rng.expovariate(rate)
                stay = rng.uniform(*self.ev.stay_min) * 60
                if not sessions or t >= sessions[-1].leave:
                    sessions.append(EvSession(t, t + stay, rng.choice([16.0, 24.0, 32.0])))
                    t += stay
            out[name] = sessions
        return out

    def build_plant(
        self, devices: list[DeviceConfigBase], *, peak_kw: float, meter_name: str, tz: ZoneInfo
    ) -> SimulatedPlant:
        """The plant of this scenario, with its process steps scheduled."""
        start = self.ts(self.event.start, tz)
        offset = datetime.fromtimestamp(start, tz).utcoffset()
        chargers = [d.name for d in devices if getattr(d, "kind", "") == "ev_charger"]
        opts = PlantOptions(
            profile=self.daily_profile(),
            noise_pct=self.noise_pct,
            meter_noise_kw=peak_kw * self.meter_noise_pct / 100,
            meter_update_s=self.meter_update_s,
            delay_s=dict(self.delay_s),
            outdoor_c=self.outdoor_c,
            outdoor_swing_c=self.outdoor_swing_c,
            ev_sessions=self.ev_sessions(chargers, tz),
            storage_soc_pct=self.storage_soc_pct,
        )
        plant = SimulatedPlant.build(
            devices,
            peak_kw=peak_kw,
            meter_name=meter_name,
            seed=self.seed,
            tz_offset_s=offset.total_seconds() if offset else 0.0,
            options=opts,
        )
        plant.base.process = self.process_steps(tz, peak_kw)
        return plant


class Disturbances:
    """Applies a scenario's failures and meter outages to a plant as time passes."""

    def __init__(self, scenario: Scenario, plant: SimulatedPlant, meter_name: str, tz: ZoneInfo) -> None:
        self.plant = plant
        self.meter = meter_name
        self.pending = sorted(
            [(scenario.ts(f.at, tz), "fail", f) for f in scenario.failures]
            + [(scenario.ts(o.at, tz), "outage", o) for o in scenario.meter_outages],
            key=lambda x: x[0],
        )
        self.recover_at: list[tuple[float, str]] = []

    def __call__(self, now: float) -> None:
        while self.pending and self.pending[0][0] <= now:
            at, what, spec = self.pending.pop(0)
            if isinstance(spec, Failure):
                self.plant.fail(spec.device, spec.code, spec.failsafe)
            elif isinstance(spec, MeterOutage):
                self.plant.banks[self.meter].fail_with = 11  # gateway target failed to respond
                self.recover_at.append((at + spec.duration_s, self.meter))
            _ = what
        for item in list(self.recover_at):
            if item[0] <= now:
                self.plant.banks[item[1]].fail_with = None
                self.recover_at.remove(item)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate one scenario file."""
    p = Path(path)
    data = yaml.safe_load(p.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{p}: a scenario is a mapping")
    sc = Scenario.model_validate(data)
    sc.path = p.resolve()
    return sc
