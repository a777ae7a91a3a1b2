"""Device physics for the simulated plant: simple, seedable, time-compressible.

Each model owns a `RegisterBank` laid out by the device's profile, advances
with `step(now, dt)` in simulated seconds, and reacts to writes through the
bank's `on_write`. Power is always in kW, positive = consumption, except
storage, whose `output_kw` is positive when discharging.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from drivers.codec import Value
from drivers.sim.bank import RegisterBank


def _lag(current: float, target: float, dt: float, tau_s: float) -> float:
    """First-order lag: how a physical quantity follows its command."""
    if tau_s <= 0:
        return target
    return target + (current - target) * math.exp(-dt / tau_s)


class DeviceModel:
    def __init__(self, bank: RegisterBank) -> None:
        self.bank = bank
        bank.on_write = self.on_write

    def on_write(self, key: str, value: Value) -> None:
        """A client wrote `key`; models pick up the new command on their next step."""

    def step(self, now: float, dt: float) -> None:
        raise NotImplementedError

    def load_kw(self) -> float:
        """Contribution to the site meter, kW (negative = generation / discharge)."""
        raise NotImplementedError


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


@dataclass
class BaseLoad:
    """The site's uncontrolled load: a daily shape plus smooth (AR(1)) noise, kW."""

    peak_kw: float
    profile: DailyProfile = field(default_factory=lambda: FACTORY_DAY)
    share: float = 0.75  # the uncontrollable share of the site's peak
    noise_pct: float = 0.5  # std of the noise, % of peak
    tz_offset_s: float = 8 * 3600
    seed: int = 1
    _noise: float = 0.0
    _rng: random.Random = field(init=False)
    step_kw: float = 0.0  # process steps added by scenarios (a machine starting)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def step(self, now: float, dt: float) -> None:
        # AR(1) with a ~60 s correlation time: realistic meter wander, not white noise.
        a = math.exp(-dt / 60.0)
        sigma = self.noise_pct / 100 * self.peak_kw
        self._noise = a * self._noise + math.sqrt(max(0.0, 1 - a * a)) * self._rng.gauss(0, sigma)

    def kw(self, now: float) -> float:
        hour = ((now + self.tz_offset_s) % 86400) / 3600
        return self.peak_kw * self.share * self.profile.at(hour) + self._noise + self.step_kw


class MeterModel(DeviceModel):
    """A three-phase meter that shows whatever the plant adds up."""

    def __init__(self, bank: RegisterBank) -> None:
        super().__init__(bank)
        self.energy_kwh = 0.0
        self.total_kw = 0.0

    def show(self, total_kw: float, dt: float) -> None:
        self.total_kw = total_kw
        self.energy_kwh += max(0.0, total_kw) * dt / 3600
        b = self.bank
        b.set("power_kw", total_kw)
        for key, val in (("energy_kwh", self.energy_kwh), ("frequency_hz", 50.0)):
            if b.has(key):
                b.set(key, val)
        for ph in (1, 2, 3):
            if b.has(f"l{ph}_voltage"):
                b.set(f"l{ph}_voltage", 230.0)
                b.set(f"l{ph}_power", total_kw / 3)
                b.set(f"l{ph}_current", total_kw * 1000 / 3 / 230.0)

    def step(self, now: float, dt: float) -> None:
        pass

    def load_kw(self) -> float:
        return 0.0


class HvacModel(DeviceModel):
    """A zone cooled by a compressor under proportional control of its setpoint.

    Heat gain = UA * (T_out - T) + internal gains; raising the setpoint idles
    the compressor until the zone warms up, then it settles at a lower
    steady-state power. Releasing the setpoint causes the familiar rebound.
    """

    def __init__(
        self,
        bank: RegisterBank,
        rated_kw: float,
        setpoint_c: float = 24.0,
        outdoor_c: float = 32.0,
        cop: float = 3.0,
        warmup_s: float = 900.0,
        power_tau_s: float = 20.0,
    ) -> None:
        super().__init__(bank)
        self.rated_kw = rated_kw
        self.cop = cop
        self.outdoor_c = outdoor_c
        self.setpoint_c = setpoint_c
        self.zone_c = setpoint_c
        # Sized so that at 8 K indoor/outdoor difference the unit runs at 60 % of rating.
        q_nom = 0.6 * rated_kw * cop
        self.internal_kw = 0.25 * q_nom
        self.ua = 0.75 * q_nom / max(1.0, outdoor_c - setpoint_c)
        # Thermal mass: with the compressor off the zone warms 2 K in `warmup_s`.
        self.capacity = q_nom * warmup_s / 2.0
        self.power_tau_s = power_tau_s
        self.power_kw = self._steady_kw(setpoint_c)
        bank.set("setpoint_c", setpoint_c)
        if bank.has("switch"):
            bank.set("switch", 1)
        self._publish()

    def _steady_kw(self, t: float) -> float:
        return max(0.0, min(self.rated_kw, (self.ua * (self.outdoor_c - t) + self.internal_kw) / self.cop))

    def on_write(self, key: str, value: Value) -> None:
        if key == "setpoint_c" and isinstance(value, (int, float)):
            self.setpoint_c = float(value)

    def step(self, now: float, dt: float) -> None:
        # Proportional controller around the steady-state power: full power at +1 K.
        demand = self._steady_kw(self.zone_c) + self.rated_kw * (self.zone_c - self.setpoint_c)
        demand = max(0.0, min(self.rated_kw, demand))
        self.power_kw = _lag(self.power_kw, demand, dt, self.power_tau_s)
        heat = self.ua * (self.outdoor_c - self.zone_c) + self.internal_kw - self.power_kw * self.cop
        self.zone_c += heat * dt / self.capacity
        self._publish()

    def _publish(self) -> None:
        b = self.bank
        if b.has("power_kw"):  # thermostats and AC gateways often report no power
            b.set("power_kw", round(self.power_kw, 2))
        for key, val in (("zone_temp_c", self.zone_c), ("outdoor_temp_c", self.outdoor_c)):
            if b.has(key):
                b.set(key, round(val, 1))

    def load_kw(self) -> float:
        return self.power_kw


class LightingModel(DeviceModel):
    """LED lighting: power proportional to the dim level."""

    def __init__(self, bank: RegisterBank, rated_kw: float, level_pct: float = 100.0) -> None:
        super().__init__(bank)
        self.rated_kw = rated_kw
        self.level = level_pct
        self.power_kw = rated_kw * level_pct / 100
        bank.set("level_pct", level_pct)
        self._publish()

    def on_write(self, key: str, value: Value) -> None:
        if key == "level_pct" and isinstance(value, (int, float)):
            self.level = max(0.0, min(100.0, float(value)))

    def step(self, now: float, dt: float) -> None:
        self.power_kw = _lag(self.power_kw, self.rated_kw * self.level / 100, dt, 1.0)
        self._publish()

    def _publish(self) -> None:
        if self.bank.has("power_kw"):
            self.bank.set("power_kw", round(self.power_kw, 3))

    def load_kw(self) -> float:
        return self.power_kw


class EvChargerModel(DeviceModel):
    """A charger with a vehicle attached: power follows the current limit (IEC 61851: < 6 A pauses)."""

    def __init__(
        self,
        bank: RegisterBank,
        max_current_a: float = 32.0,
        phases: int = 3,
        voltage_v: float = 230.0,
        vehicle_max_a: float = 32.0,
        connected: bool = True,
    ) -> None:
        super().__init__(bank)
        self.limit_a = max_current_a
        self.kw_per_a = phases * voltage_v / 1000
        self.vehicle_max_a = vehicle_max_a
        self.connected = connected
        # Heartbeat failsafe (0 s = off): without a heartbeat for that long, charge at most the failsafe current.
        self.failsafe_timeout_s = 0.0
        self.failsafe_current_a = 0.0
        self.failsafe_active = False
        self.last_heartbeat: float | None = None
        self._heard = False
        self.power_kw = self._target()
        bank.set("current_limit_a", max_current_a)
        if bank.has("vehicle_connected"):
            bank.set("vehicle_connected", connected)
        self._publish()

    def _target(self) -> float:
        limit = min(self.limit_a, self.failsafe_current_a) if self.failsafe_active else self.limit_a
        if not self.connected or limit < 6.0:
            return 0.0
        return min(limit, self.vehicle_max_a) * self.kw_per_a

    def on_write(self, key: str, value: Value) -> None:
        if key == "current_limit_a" and isinstance(value, (int, float)):
            self.limit_a = float(value)
        elif key == "failsafe_current_a" and isinstance(value, (int, float)):
            self.failsafe_current_a = float(value)
        elif key == "failsafe_timeout_s" and isinstance(value, (int, float)):
            self.failsafe_timeout_s = float(value)
            self._heard = True
        elif key == "heartbeat":
            self._heard = True

    def _watchdog(self, now: float) -> None:
        if self._heard:
            self._heard = False
            self.last_heartbeat = now
            self.failsafe_active = False
        elif self.failsafe_timeout_s > 0 and self.last_heartbeat is not None:
            self.failsafe_active = now - self.last_heartbeat > self.failsafe_timeout_s

    def step(self, now: float, dt: float) -> None:
        self._watchdog(now)
        self.power_kw = _lag(self.power_kw, self._target(), dt, 3.0)
        self._publish()

    def _publish(self) -> None:
        self.bank.set("power_kw", round(self.power_kw, 3))

    def load_kw(self) -> float:
        return self.power_kw


class StorageModel(DeviceModel):
    """A battery that follows a power setpoint (positive = discharge) within its own limits."""

    def __init__(
        self,
        bank: RegisterBank,
        capacity_kwh: float,
        max_kw: float,
        soc_pct: float = 80.0,
        min_soc_pct: float = 5.0,
    ) -> None:
        super().__init__(bank)
        self.capacity_kwh = capacity_kwh
        self.max_kw = max_kw
        self.soc = soc_pct
        self.min_soc = min_soc_pct
        self.setpoint_kw = 0.0
        self.output_kw = 0.0
        # Setpoint reversion (SunSpec 704 WSetRvrtTms; 0 = off): a setpoint not renewed in time reverts to 0.
        self.revert_s = 0.0
        self.last_set: float | None = None
        self._renewed = False
        bank.set("power_setpoint_kw", 0.0)
        self._publish()

    def on_write(self, key: str, value: Value) -> None:
        if key == "power_setpoint_kw" and isinstance(value, (int, float)):
            self.setpoint_kw = float(value)
            self._renewed = True
        elif key == "setpoint_revert_s" and isinstance(value, (int, float)):
            self.revert_s = float(value)

    def step(self, now: float, dt: float) -> None:
        if self._renewed:
            self._renewed, self.last_set = False, now
        elif self.revert_s > 0 and self.last_set is not None and now - self.last_set > self.revert_s:
            self.setpoint_kw, self.last_set = 0.0, None
            self.bank.set("power_setpoint_kw", 0.0)  # clients write this register too
        target = max(-self.max_kw, min(self.max_kw, self.setpoint_kw))
        if target > 0 and self.soc <= self.min_soc:
            target = 0.0  # the BMS's own cut-off
        if target < 0 and self.soc >= 100.0:
            target = 0.0
        self.output_kw = _lag(self.output_kw, target, dt, 1.0)
        self.soc -= self.output_kw * dt / 3600 / self.capacity_kwh * 100
        self.soc = max(0.0, min(100.0, self.soc))
        self._publish()

    def _publish(self) -> None:
        self.bank.set("power_kw", round(self.output_kw, 1))
        self.bank.set("soc_pct", round(self.soc, 1))

    def load_kw(self) -> float:
        return -self.output_kw


class RelayModel(DeviceModel):
    def __init__(self, bank: RegisterBank, rated_kw: float, on: bool = True) -> None:
        super().__init__(bank)
        self.rated_kw = rated_kw
        self.on = on
        self.power_kw = rated_kw if on else 0.0
        bank.set("switch", on)
        self._publish()

    def on_write(self, key: str, value: Value) -> None:
        if key == "switch":
            self.on = bool(value)

    def step(self, now: float, dt: float) -> None:
        self.power_kw = _lag(self.power_kw, self.rated_kw if self.on else 0.0, dt, 2.0)
        self._publish()

    def _publish(self) -> None:
        if self.bank.has("power_kw"):
            self.bank.set("power_kw", round(self.power_kw, 1))

    def load_kw(self) -> float:
        return self.power_kw
