"""Dimmable lighting (a zone on a lighting gateway): shed by dimming, never below a floor."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from drivers.device import Device, DeviceConfigBase
from drivers.registry import register


class LightingConfig(DeviceConfigBase):
    kind: Literal["lighting"] = Field(description="A dimmable lighting zone.")
    min_level_pct: float = Field(
        default=0.0, ge=0, le=100, description="Floor: the agent never dims below this level, %."
    )


@register(LightingConfig)
class Lighting(Device):
    kind = "lighting"
    required_roles = ("level_pct",)
    writable_roles = ("level_pct",)

    def level_pct(self) -> float | None:
        return self.reading("level_pct")

    def min_level_pct(self) -> float:
        c = self.config
        assert isinstance(c, LightingConfig)
        return c.min_level_pct
