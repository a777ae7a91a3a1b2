"""Device physics for the simulated plant: realistic enough to tune a controller on, seedable, fast.

Each model owns a `RegisterBank` laid out by the device's profile and
advances with `advance(now, dt)` in simulated seconds. Writes from a client
land in the bank and take effect after the model's actuation delay (a BMS
or a charger does not obey the instant a register changes). Power is always
in kW, positive = consumption, except storage, whose `output_kw` is positive
when discharging. Models publish to their bank only when a value changes, so
an hour of plant time costs milliseconds.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

from drivers.codec import Value
from drivers.sim.bank import RegisterBank


def _lag(current: float, target: float, dt: float, tau_s: float) -> float:
    """First-order lag: how a physical quantity follows its command."""
    if tau_s <= 0:
        return target
    return target + (current - target) * math.exp(-dt / tau_s)


class DeviceModel:
    """Base of every device model: delayed actuation, change-only publishing."""

    def __init__(self, bank: RegisterBank, delay_s: float = 0.0) -> None:
        self.bank = bank
        self.delay_s = delay_s
        self.now = 0.0
        self.failed = False
        self._queue: deque[tuple[float, str, Value]] = deque()
        self._shown: dict[str, Value] = {}
        bank.on_write = self.on_write

    def on_write(self, key: str, value: Value) -> None:
        """A client wrote `key`: the device obeys after its actuation delay."""
        if self.delay_s <= 0:
            self.apply(key, value)
        else:
            self._queue.append((self.now + self.delay_s, key, value))

    def apply(self, key: str, value: Value) -> None:
        """Take a command (after the delay). Models override this."""

    def advance(self, now: float, dt: float) -> None:
        """Apply commands that are due, then advance physics by `dt` seconds."""
        self.now = now
        q = self._queue
        while q and q[0][0] <= now:
            _t, key, value = q.popleft()
            self.apply(key, value)
        self.step(now, dt)

    def step(self, now: float, dt: float) -> None:
        raise NotImplementedError

    def load_kw(self) -> float:
        """Contribution to the site meter, kW (negative = generation / discharge)."""
        raise NotImplementedError

    def show(self, key: str, value: Value) -> None:
        """Set a register only if its value changed (encoding is the simulator's hot path)."""
        if self._shown.get(key) != value:
            self._shown[key] = value
            self.bank.set(key, value)

    def fail(self) -> None:
        """The device's controller fails: it stops answering and falls back to its own defaults."""
        self.failed = True
        self._queue.clear()
        self.failsafe()

    def failsafe(self) -> None:
        """What the device does on its own when it fails (default: keep the last command)."""


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


class MeterModel(DeviceModel):
    """A three-phase meter: shows the plant's sum with its own noise, refreshed every `update_s`."""

    def __init__(
        self, bank: RegisterBank, noise_kw: float = 0.0, update_s: float = 1.0, seed: int = 1
    ) -> None:
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


class HvacModel(DeviceModel):
    """A zone cooled by a compressor under proportional control of its setpoint.

    Heat gain = UA * (T_out - T) + internal gains; raising the setpoint idles
    the compressor until the zone warms up, then it settles at a lower
    steady-state power. Releasing the setpoint causes the familiar rebound:
    the compressor runs flat out until the zone is back. The compressor loads
    and unloads at a limited rate (soft loading), as real chillers do.
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
        prop_band_k: float = 1.5,
        ramp_s: float = 120.0,
        delay_s: float = 0.0,
        outdoor_swing_c: float = 0.0,
        tz_offset_s: float = 8 * 3600,
    ) -> None:
        super().__init__(bank, delay_s)
        self.rated_kw = rated_kw
        self.cop = cop
        self.outdoor_mean_c = outdoor_c
        self.outdoor_swing_c = outdoor_swing_c
        self.tz_offset_s = tz_offset_s
        self.outdoor_c = outdoor_c
        self.setpoint_c = setpoint_c
        self.initial_setpoint_c = setpoint_c
        self.zone_c = setpoint_c
        self.prop_band_k = prop_band_k
        # Soft loading: the compressor's power changes at most rated/ramp_s per second.
        self.max_rate = rated_kw / ramp_s if ramp_s > 0 else math.inf
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

    def apply(self, key: str, value: Value) -> None:
        if key == "setpoint_c" and isinstance(value, (int, float)):
            self.setpoint_c = float(value)

    def failsafe(self) -> None:
        # A BMS that loses its supervisor goes back to its local schedule's setpoint.
        self.setpoint_c = self.initial_setpoint_c

    def _outdoor(self, now: float) -> float:
        if not self.outdoor_swing_c:
            return self.outdoor_mean_c
        hour = ((now + self.tz_offset_s) % 86400) / 3600
        # Warmest at 15:00, coolest at 03:00.
        return self.outdoor_mean_c + self.outdoor_swing_c * math.cos((hour - 15) / 24 * 2 * math.pi)

    def step(self, now: float, dt: float) -> None:
        self.outdoor_c = self._outdoor(now)
        # Proportional controller around the steady-state power: full power `prop_band_k` above setpoint.
        demand = (
            self._steady_kw(self.zone_c) + self.rated_kw * (self.zone_c - self.setpoint_c) / self.prop_band_k
        )
        demand = max(0.0, min(self.rated_kw, demand))
        nxt = _lag(self.power_kw, demand, dt, self.power_tau_s)
        limit = self.max_rate * dt
        self.power_kw = min(self.power_kw + limit, max(self.power_kw - limit, nxt))
        heat = self.ua * (self.outdoor_c - self.zone_c) + self.internal_kw - self.power_kw * self.cop
        self.zone_c += heat * dt / self.capacity
        self._publish()

    def _publish(self) -> None:
        b = self.bank
        if b.has("power_kw"):  # thermostats and AC gateways often report no power
            self.show("power_kw", round(self.power_kw, 1))
        if b.has("zone_temp_c"):
            self.show("zone_temp_c", round(self.zone_c, 1))
        if b.has("outdoor_temp_c"):
            self.show("outdoor_temp_c", round(self.outdoor_c, 1))

    def load_kw(self) -> float:
        return self.power_kw


class LightingModel(DeviceModel):
    """LED lighting: power proportional to the dim level (drivers fade over about a second)."""

    def __init__(
        self, bank: RegisterBank, rated_kw: float, level_pct: float = 100.0, delay_s: float = 0.0
    ) -> None:
        super().__init__(bank, delay_s)
        self.rated_kw = rated_kw
        self.level = level_pct
        self.power_kw = rated_kw * level_pct / 100
        bank.set("level_pct", level_pct)
        self._publish()

    def apply(self, key: str, value: Value) -> None:
        if key == "level_pct" and isinstance(value, (int, float)):
            self.level = max(0.0, min(100.0, float(value)))

    def failsafe(self) -> None:
        self.level = 100.0  # DALI system failure level: full light

    def step(self, now: float, dt: float) -> None:
        self.power_kw = _lag(self.power_kw, self.rated_kw * self.level / 100, dt, 1.0)
        self._publish()

    def _publish(self) -> None:
        if self.bank.has("power_kw"):
            self.show("power_kw", round(self.power_kw, 2))

    def load_kw(self) -> float:
        return self.power_kw


@dataclass
class EvSession:
    """A vehicle plugged in from `arrive` to `leave` (epoch s), drawing at most `max_a` per phase."""

    arrive: float
    leave: float
    max_a: float = 32.0


class EvChargerModel(DeviceModel):
    """A charger: power follows the current limit while a vehicle is connected (IEC 61851: < 6 A pauses).

    Without `sessions` a vehicle is connected all the time (the demo). On
    failure the charger falls back to its failsafe current, as real ones do
    when their heartbeat stops.
    """

    def __init__(
        self,
        bank: RegisterBank,
        max_current_a: float = 32.0,
        phases: int = 3,
        voltage_v: float = 230.0,
        vehicle_max_a: float = 32.0,
        connected: bool = True,
        sessions: list[EvSession] | None = None,
        delay_s: float = 0.0,
    ) -> None:
        super().__init__(bank, delay_s)
        self.limit_a = max_current_a
        self.max_current_a = max_current_a
        self.kw_per_a = phases * voltage_v / 1000
        self.vehicle_max_a = vehicle_max_a
        self.sessions = sorted(sessions or [], key=lambda s: s.arrive)
        self.connected = connected if sessions is None else False
        # Heartbeat failsafe (0 s = off): without a heartbeat for that long, charge at most the failsafe current.
        self.failsafe_timeout_s = 0.0
        self.failsafe_current_a = 0.0
        self.failsafe_active = False
        self.last_heartbeat: float | None = None
        self._heard = False
        self.power_kw = self._target()
        bank.set("current_limit_a", max_current_a)
        self._publish()

    def _target(self) -> float:
        limit = min(self.limit_a, self.failsafe_current_a) if self.failsafe_active else self.limit_a
        if not self.connected or limit < 6.0:
            return 0.0
        return min(limit, self.vehicle_max_a) * self.kw_per_a

    def apply(self, key: str, value: Value) -> None:
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

    def failsafe(self) -> None:
        self.limit_a = self.max_current_a

    def step(self, now: float, dt: float) -> None:
        if self.sessions:
            s = next((s for s in self.sessions if s.arrive <= now < s.leave), None)
            self.connected = s is not None
            if s is not None:
                self.vehicle_max_a = s.max_a
        self._watchdog(now)
        self.power_kw = _lag(self.power_kw, self._target(), dt, 3.0)
        self._publish()

    def _publish(self) -> None:
        self.show("power_kw", round(self.power_kw, 3))
        if self.bank.has("vehicle_connected"):
            # An enumerated cable state (Vestel: 2 = cable at vehicle) or a plain bit.
            yes = self.bank.point("vehicle_connected").true_from
            self.show("vehicle_connected", self.connected if yes is None else (yes if self.connected else 0))

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
        delay_s: float = 0.0,
    ) -> None:
        super().__init__(bank, delay_s)
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

    def apply(self, key: str, value: Value) -> None:
        if key == "power_setpoint_kw" and isinstance(value, (int, float)):
            self.setpoint_kw = float(value)
            self._renewed = True
        elif key == "setpoint_revert_s" and isinstance(value, (int, float)):
            self.revert_s = float(value)

    def failsafe(self) -> None:
        self.setpoint_kw = 0.0  # an inverter that loses its EMS goes idle

    def step(self, now: float, dt: float) -> None:
        if self._renewed:
            self._renewed, self.last_set = False, now
        elif self.revert_s > 0 and self.last_set is not None and now - self.last_set > self.revert_s:
            self.setpoint_kw, self.last_set = 0.0, None
            self.bank.set("power_setpoint_kw", 0.0)  # not show(): clients write this register too
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
        self.show("power_kw", round(self.output_kw, 1))
        self.show("soc_pct", round(self.soc, 1))

    def load_kw(self) -> float:
        return -self.output_kw


class RelayModel(DeviceModel):
    def __init__(self, bank: RegisterBank, rated_kw: float, on: bool = True, delay_s: float = 0.0) -> None:
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
        self.power_kw = _lag(self.power_kw, self.rated_kw if self.on else 0.0, dt, 2.0)
        self._publish()

    def _publish(self) -> None:
        if self.bank.has("power_kw"):
            self.show("power_kw", round(self.power_kw, 1))

    def load_kw(self) -> float:
        return self.power_kw
