"""Battery storage inverter: shed site load by discharging, within SOC and power limits."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from drivers.actions import ActionBase, ControlTraits, NotApplicable, round_within
from drivers.capabilities import Dispatchable
from drivers.codec import Value
from drivers.device import Device, DeviceConfigBase
from drivers.physics import Bank, DeviceModel, lag
from drivers.registry import SimEnv, register


class StorageConfig(DeviceConfigBase):
    kind: Literal["storage"] = Field(description="A battery storage system.")
    capacity_kwh: float = Field(gt=0, description="Usable energy capacity, kWh.")
    max_discharge_kw: float = Field(gt=0, description="Inverter discharge limit, kW.")
    reserve_soc_pct: float = Field(
        default=20.0, ge=0, le=100, description="Never discharge below this state of charge, %."
    )
    setpoint_revert_s: float | None = Field(
        default=None,
        gt=0,
        description="Inverter reverts to 0 kW if the setpoint is not renewed for this long, s (written at "
        "start-up if the profile maps setpoint_revert_s, e.g. SunSpec 704 WSetRvrtTms).",
    )


class StorageAction(ActionBase):
    """Discharge a battery at a power, keeping a reserve state of charge, within the inverter's limit."""

    shed_role = "power_setpoint_kw"

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

    def shed_value(self, device: Any, original: float | None) -> float | bool:
        if not isinstance(device, Dispatchable):
            raise NotApplicable("not a storage device")
        soc = device.soc_pct()
        # The action may keep more in reserve than the device, never less.
        reserve = max(self.reserve_soc_pct or 0.0, device.reserve_soc_pct())
        if soc is None or soc <= reserve:
            raise NotApplicable(f"state of charge {soc} at or below reserve {reserve} %")
        value = round_within(
            min(self.discharge_kw, device.max_discharge_kw()), 0.0, device.max_discharge_kw(), 1
        )
        if value <= 0:
            raise NotApplicable("nothing to discharge")
        if original is not None and original >= value:
            raise NotApplicable("already discharging at or above this power")
        return value

    def expected_kw_on(self, device: Any) -> float:
        if not isinstance(device, Dispatchable):
            return device.config.rated_kw or 0.0
        return min(self.discharge_kw, device.max_discharge_kw())

    def config_estimate_kw(self, device_config: Any) -> float:
        return min(self.discharge_kw, float(getattr(device_config, "max_discharge_kw", self.discharge_kw)))

    def live_kw(self, device: Any, estimate_kw: float) -> float:
        if not isinstance(device, Storage):
            return estimate_kw
        soc = device.soc_pct()
        return 0.0 if soc is None or soc <= device.reserve_soc_pct() + 1.0 else estimate_kw


class StorageModel(DeviceModel):
    """A battery that follows a power setpoint (positive = discharge) within its own limits."""

    def __init__(
        self,
        bank: Bank,
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
        self.output_kw = lag(self.output_kw, target, dt, 1.0)
        self.soc -= self.output_kw * dt / 3600 / self.capacity_kwh * 100
        self.soc = max(0.0, min(100.0, self.soc))
        self._publish()

    def _publish(self) -> None:
        self.show("power_kw", round(self.output_kw, 1))
        self.show("soc_pct", round(self.soc, 1))

    def load_kw(self) -> float:
        return -self.output_kw


def simulate(config: Any, bank: Bank, env: SimEnv) -> DeviceModel:
    return StorageModel(
        bank,
        capacity_kwh=config.capacity_kwh,
        max_kw=config.max_discharge_kw,
        soc_pct=env.options.storage_soc_pct,
        delay_s=env.delay_s,
    )


@register(
    StorageConfig,
    action=StorageAction,
    traits=ControlTraits(continuous=True, lag_s=2.0, restore="ramp"),
    simulator=simulate,
    site_load=False,  # it supplies the site; its rating is no consumption
)
class Storage(Device):
    kind = "storage"
    required_roles = ("power_kw", "power_setpoint_kw", "soc_pct")
    writable_roles = ("power_setpoint_kw",)

    def _cfg(self) -> StorageConfig:
        assert isinstance(self.config, StorageConfig)
        return self.config

    def setup_writes(self) -> list[tuple[str, float]]:
        c = self._cfg()
        return [] if c.setpoint_revert_s is None else [("setpoint_revert_s", c.setpoint_revert_s)]

    def watchdog_interval_s(self) -> float | None:
        interval = super().watchdog_interval_s()
        revert = self._cfg().setpoint_revert_s
        if interval is not None and revert is not None:
            interval = min(interval, revert / 3)  # renew well before the inverter gives up on us
        return interval

    def soc_pct(self) -> float | None:
        return self.reading("soc_pct")

    def max_discharge_kw(self) -> float:
        return self._cfg().max_discharge_kw

    def reserve_soc_pct(self) -> float:
        return self._cfg().reserve_soc_pct

    def power_kw(self) -> float | None:
        # Storage reports discharge as positive output; as a site load it is negative.
        v = self.reading("power_kw")
        return None if v is None else -v

    def limit_violation(self, role: str, value: float) -> str | None:
        if role == "power_setpoint_kw" and value > self.max_discharge_kw() + 1e-6:
            return f"discharge {value} kW above inverter limit {self.max_discharge_kw()}"
        return None
