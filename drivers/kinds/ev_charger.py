"""EV charger with a Modbus current limit; shed by capping current, never below its minimum."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from drivers.actions import ActionBase, ControlTraits, NotApplicable, round_within
from drivers.capabilities import CurrentLimited
from drivers.codec import Value
from drivers.device import Device, DeviceConfigBase
from drivers.physics import Bank, DeviceModel, lag
from drivers.registry import SimEnv, register


class EvChargerConfig(DeviceConfigBase):
    kind: Literal["ev_charger"] = Field(description="An EV charging point.")
    min_current_a: float = Field(
        default=6.0, ge=0, description="Lowest current the charger accepts (IEC 61851: 6 A), A."
    )
    max_current_a: float = Field(default=32.0, gt=0, description="Highest current limit, A.")
    phases: Literal[1, 3] = Field(default=3, description="Phases the charger uses.")
    voltage_v: float = Field(default=230.0, gt=0, description="Phase voltage, V.")
    priority: int = Field(
        default=0, description="Higher = shed later (e.g. fleet vehicles that must leave charged)."
    )
    heartbeat_s: float | None = Field(
        default=None,
        gt=0,
        description="Feed the charger's heartbeat register this often, s (default: the profile's interval).",
    )
    failsafe_current_a: float | None = Field(
        default=None,
        ge=0,
        description="Current the charger falls back to when the agent goes silent, A (written at start-up "
        "if the profile maps failsafe_current_a).",
    )
    failsafe_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="Silence after which the charger falls back, s (written at start-up if mapped).",
    )

    @model_validator(mode="after")
    def _limits(self) -> EvChargerConfig:
        if self.failsafe_current_a is not None and self.failsafe_current_a > self.max_current_a:
            raise ValueError(
                f"failsafe_current_a {self.failsafe_current_a} must not exceed max_current_a {self.max_current_a}"
            )
        if self.heartbeat_s and self.failsafe_timeout_s and self.heartbeat_s * 2 > self.failsafe_timeout_s:
            raise ValueError(
                f"heartbeat_s {self.heartbeat_s} must be at most half of failsafe_timeout_s "
                f"{self.failsafe_timeout_s}, or one late feed trips the failsafe"
            )
        if self.min_current_a > self.max_current_a:
            raise ValueError(
                f"min_current_a {self.min_current_a} must not exceed max_current_a {self.max_current_a}"
            )
        return self


class EvChargerAction(ActionBase):
    """Cap charging current or power; never below the charger's minimum unless pause: true."""

    shed_role = "current_limit_a"

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

    def _cap_a(self, kw_per_amp: float, min_a: float) -> float:
        if self.current_a is not None:
            cap = self.current_a
        elif self.power_kw is not None:
            cap = self.power_kw / kw_per_amp
        else:
            cap = 0.0
        if cap < min_a:
            cap = 0.0 if self.pause else min_a
        return cap

    def shed_value(self, device: Any, original: float | None) -> float | bool:
        if not isinstance(device, CurrentLimited) or original is None:
            raise NotApplicable("current limit unknown")
        lo, hi = device.current_range_a()
        cap = min(hi, self._cap_a(device.kw_per_amp(), lo))
        cap = 0.0 if cap == 0 else round_within(cap, lo, hi, 1)
        if cap >= original:
            raise NotApplicable("already capped")
        return cap

    def expected_kw_on(self, device: Any) -> float:
        rated = device.config.rated_kw or 0.0
        power_kw = device.power_kw
        if not isinstance(device, CurrentLimited):
            return rated
        lo, _hi = device.current_range_a()
        cap = self._cap_a(device.kw_per_amp(), lo)
        now_kw = power_kw() or rated
        return max(0.0, now_kw - cap * device.kw_per_amp())

    def config_estimate_kw(self, device_config: Any) -> float:
        rated = float(getattr(device_config, "rated_kw", None) or 0.0)
        kw_per_a = getattr(device_config, "phases", 3) * getattr(device_config, "voltage_v", 230.0) / 1000
        lo = float(getattr(device_config, "min_current_a", 6.0))
        hi = float(getattr(device_config, "max_current_a", 32.0))
        full = min(rated, hi * kw_per_a) if rated else hi * kw_per_a
        if self.current_a is not None:
            cap = self.current_a
        elif self.power_kw is not None:
            cap = self.power_kw / kw_per_a
        else:
            cap = 0.0
        if cap < lo:
            cap = 0.0 if self.pause else lo
        return max(0.0, full - min(cap, hi) * kw_per_a)

    def live_kw(self, device: Any, estimate_kw: float) -> float:
        # What the car draws now above the cap, not the charger's rating.
        if not isinstance(device, EvCharger):
            return estimate_kw
        p = device.power_kw()
        if p is None:
            return estimate_kw
        try:
            cap = self.shed_value(device, device.current_limit_a())
        except NotApplicable:
            return 0.0
        return min(estimate_kw, max(0.0, p - float(cap) * device.kw_per_amp()))


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
        bank: Bank,
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
        self.power_kw = lag(self.power_kw, self._target(), dt, 3.0)
        self._publish()

    def _publish(self) -> None:
        self.show("power_kw", round(self.power_kw, 3))
        if self.bank.has("vehicle_connected"):
            # An enumerated cable state (Vestel: 2 = cable at vehicle) or a plain bit.
            yes = self.bank.point("vehicle_connected").true_from
            self.show("vehicle_connected", self.connected if yes is None else (yes if self.connected else 0))

    def load_kw(self) -> float:
        return self.power_kw


def simulate(config: Any, bank: Bank, env: SimEnv) -> DeviceModel:
    c = config
    return EvChargerModel(
        bank,
        max_current_a=c.max_current_a,
        phases=c.phases,
        voltage_v=c.voltage_v,
        vehicle_max_a=min(c.max_current_a, env.rated_kw * 1000 / (c.phases * c.voltage_v)),
        sessions=env.options.ev_sessions.get(c.name),
        delay_s=env.delay_s,
    )


@register(
    EvChargerConfig,
    action=EvChargerAction,
    traits=ControlTraits(continuous=True, lag_s=4.0, restore="ramp"),
    simulator=simulate,
)
class EvCharger(Device):
    kind = "ev_charger"
    required_roles = ("power_kw", "current_limit_a")
    writable_roles = ("current_limit_a",)

    def _cfg(self) -> EvChargerConfig:
        assert isinstance(self.config, EvChargerConfig)
        return self.config

    def setup_writes(self) -> list[tuple[str, float]]:
        c = self._cfg()
        out: list[tuple[str, float]] = []
        if c.failsafe_current_a is not None:
            out.append(("failsafe_current_a", c.failsafe_current_a))
        if c.failsafe_timeout_s is not None:
            out.append(("failsafe_timeout_s", c.failsafe_timeout_s))
        return out

    def watchdog_interval_s(self) -> float | None:
        if self.profile.watchdog is None:
            return None
        return self._cfg().heartbeat_s or self.profile.watchdog.interval_s

    def current_limit_a(self) -> float | None:
        return self.reading("current_limit_a")

    def vehicle_connected(self) -> bool | None:
        """Whether a vehicle is plugged in (None when the profile does not say or it is unknown)."""
        v = self.reading("vehicle_connected")
        if v is None:
            return None
        p = self.point_for("vehicle_connected")
        threshold = p.true_from if p is not None and p.true_from is not None else 1
        return v >= threshold

    def current_range_a(self) -> tuple[float, float]:
        c = self._cfg()
        return c.min_current_a, c.max_current_a

    def kw_per_amp(self) -> float:
        c = self._cfg()
        return c.phases * c.voltage_v / 1000.0

    def limit_violation(self, role: str, value: float) -> str | None:
        if role != "current_limit_a":
            return None
        lo, hi = self.current_range_a()
        if value > hi + 1e-6 or (0 < value < lo - 1e-6):
            return f"current {value} A outside [{lo}, {hi}] (0 = paused)"
        return None
