"""Battery storage inverter: shed site load by discharging, within SOC and power limits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from drivers.device import Device, DeviceConfigBase
from drivers.registry import register


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


@register(StorageConfig)
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
