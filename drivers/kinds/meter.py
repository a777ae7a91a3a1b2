"""Power meter: the site meter (or a sub-meter). Reads active power in kW."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from drivers.device import Device, DeviceConfigBase
from drivers.registry import register


class MeterConfig(DeviceConfigBase):
    kind: Literal["meter"] = Field(description="A power meter.")
    invert: bool = Field(default=False, description="Flip the sign (meters wired for export-positive).")


@register(MeterConfig)
class Meter(Device):
    kind = "meter"
    required_roles = ("power_kw",)

    def power_kw(self) -> float | None:
        v = self.reading("power_kw")
        if v is None:
            return None
        return -v if getattr(self.config, "invert", False) else v
