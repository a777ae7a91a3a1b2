"""A switched load behind a relay (pumps, heaters, compressors): shed by switching off."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from drivers.device import Device, DeviceConfigBase
from drivers.registry import register


class RelayConfig(DeviceConfigBase):
    kind: Literal["relay"] = Field(description="A load switched by a relay or contactor.")
    min_off_s: float = Field(default=0.0, ge=0, description="Once off, stay off at least this long, s.")
    min_on_s: float = Field(default=0.0, ge=0, description="Once on, stay on at least this long, s.")


@register(RelayConfig)
class Relay(Device):
    kind = "relay"
    required_roles = ("switch",)
    writable_roles = ("switch",)

    def is_on(self) -> bool | None:
        v = self.reading("switch")
        return None if v is None else bool(v)
