"""A Modbus device: coalesced polling, health, range-checked writes with read-back.

A device knows its profile (the register map) and its transport; device kinds
(`drivers/kinds/`) add capability methods on top. Readings of a device that
failed its last poll are invalidated, never silently reused: `reading()`
returns None and callers must treat that as "unknown".
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field

from drivers.codec import Value
from drivers.modbus import ModbusIOError
from drivers.profile import (
    Function,
    Point,
    Profile,
    decode_block,
    decode_point,
    encode_write,
    plan_reads,
)

log = logging.getLogger("dr_agent.device")

UNAVAILABLE_AFTER_FAILURES = 3
MAX_RETRY_INTERVAL_S = 30.0


class Transport(Protocol):
    """What a device needs of its endpoint (a Modbus transport or a simulator loopback)."""

    name: str

    async def read(
        self, unit: int, function: Function, address: int, count: int
    ) -> list[int] | list[bool]: ...

    async def write_registers(self, unit: int, address: int, values: list[int]) -> None: ...

    async def write_coil(self, unit: int, address: int, value: bool) -> None: ...


class DeviceConfigBase(BaseModel):
    """Fields every device has; each kind adds its own and a `kind` literal."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Unique device name, used in strategies."
    )
    endpoint: str = Field(description="Name of the Modbus endpoint the device is on.")
    unit_id: int = Field(default=1, ge=0, le=247, description="Modbus unit (slave) id.")
    profile: str = Field(description="Register map: a name under drivers/profiles/ or a YAML path.")
    zone: str | None = Field(default=None, description="Group name strategies may address.")
    rated_kw: float | None = Field(default=None, gt=0, description="Nameplate power, kW.")
    description: str = Field(default="", description="Free text for people.")


class WriteError(Exception):
    """A write was refused before sending, failed on the bus, or did not read back."""


@dataclass
class Health:
    last_ok_ts: float | None = None
    consecutive_failures: int = 0
    available: bool = True
    latency_ms: float | None = None
    last_error: str | None = None
    exception_code: int | None = None
    next_poll_at: float = 0.0
    polls: int = 0
    failures: int = 0


class Device:
    """Base class of every device kind."""

    kind: ClassVar[str] = "device"
    #: Roles the profile must map for this kind to work.
    required_roles: ClassVar[tuple[str, ...]] = ()
    #: Roles that must also be writable.
    writable_roles: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: DeviceConfigBase, transport: Transport, profile: Profile) -> None:
        self.config = config
        self.name = config.name
        self.unit_id = config.unit_id
        self.transport = transport
        self.profile = profile
        self.values: dict[str, Value] = {}
        self.values_ts: float | None = None
        self.health = Health()
        self._blocks = plan_reads(
            [p for p in profile.points if p.access != "w"],
            max_block=profile.max_block,
            max_gap=profile.max_gap,
        )
        self._role_point = {p.role: p for p in profile.points if p.role}
        problems = self.check_profile(profile)
        if problems:
            raise ValueError(f"device {self.name}: " + "; ".join(problems))

    @classmethod
    def check_profile(cls, profile: Profile) -> list[str]:
        """What this kind needs that the profile lacks."""
        problems = []
        for role in cls.required_roles:
            p = profile.by_role(role)
            if p is None:
                problems.append(f"profile {profile.name!r} maps no point to role {role!r}")
            elif role in cls.writable_roles and not p.writable:
                problems.append(f"profile {profile.name!r}: role {role!r} is not writable")
        return problems

    @property
    def requests_per_poll(self) -> int:
        return len(self._blocks)

    @property
    def points_per_poll(self) -> int:
        return sum(len(b.points) for b in self._blocks)

    # -- polling -----------------------------------------------------------------

    def due(self, mono_now: float) -> bool:
        return mono_now >= self.health.next_poll_at

    async def poll(self) -> bool:
        """Read every readable point; returns True on success. Never raises for bus errors."""
        h = self.health
        t0 = time.monotonic()
        h.polls += 1
        fresh: dict[str, Value] = {}
        try:
            for block in self._blocks:
                raw = await self.transport.read(self.unit_id, block.function, block.address, block.count)
                fresh.update(decode_block(block, raw))
        except ModbusIOError as exc:
            self._failed(str(exc), exc.exception_code, t0)
            return False
        bad = [k for k, v in fresh.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            self._failed(f"non-finite value in {', '.join(bad)}", None, t0)
            return False
        self.values = fresh
        self.values_ts = time.time()
        was_down = not h.available or h.consecutive_failures > 0
        h.latency_ms = (time.monotonic() - t0) * 1000
        h.last_ok_ts = self.values_ts
        h.last_error = None
        h.exception_code = None
        h.next_poll_at = 0.0
        if not h.available:
            log.warning("device=%s event=recovered after %d failures", self.name, h.consecutive_failures)
        elif was_down:
            log.info("device=%s event=poll_ok_again", self.name)
        h.consecutive_failures = 0
        h.available = True
        return True

    def _failed(self, error: str, code: int | None, t0: float) -> None:
        h = self.health
        h.failures += 1
        h.consecutive_failures += 1
        h.last_error = error
        h.exception_code = code
        h.latency_ms = (time.monotonic() - t0) * 1000
        # Invalidate: a value we could not read now is unknown, not "the last one".
        self.values = {}
        self.values_ts = None
        if h.consecutive_failures == 1:
            log.warning("device=%s event=poll_failed error=%r", self.name, error)
        else:
            log.debug("device=%s event=poll_failed n=%d error=%r", self.name, h.consecutive_failures, error)
        if h.consecutive_failures >= UNAVAILABLE_AFTER_FAILURES:
            if h.available:
                log.error("device=%s event=unavailable error=%r", self.name, error)
            h.available = False
            # Back off so a dead device does not eat the bus's time.
            extra = min(MAX_RETRY_INTERVAL_S, 2.0 ** (h.consecutive_failures - UNAVAILABLE_AFTER_FAILURES))
            h.next_poll_at = time.monotonic() + extra

    # -- readings ----------------------------------------------------------------

    def point_for(self, role: str) -> Point | None:
        return self._role_point.get(role)

    def reading(self, role: str) -> float | None:
        """Latest value of a role, or None when unknown (not mapped, not read, device down)."""
        p = self._role_point.get(role)
        if p is None:
            return None
        v = self.values.get(p.name)
        if v is None or isinstance(v, str):
            return None
        return float(v)

    def power_kw(self) -> float | None:
        return self.reading("power_kw")

    # -- writes ------------------------------------------------------------------

    async def write_role(self, role: str, value: float | bool) -> float:
        """Write a role's point, then read it back; returns the read-back value.

        The range check happens before anything is sent; a value that does not
        read back (within the point's resolution) raises WriteError.
        """
        p = self._role_point.get(role)
        if p is None:
            raise WriteError(f"device {self.name}: no point for role {role!r}")
        try:
            encoded = encode_write(p, value)
        except ValueError as exc:
            raise WriteError(f"device {self.name}: {exc}") from exc
        try:
            if isinstance(encoded, bool):
                await self.transport.write_coil(self.unit_id, p.address, encoded)
            else:
                await self.transport.write_registers(self.unit_id, p.address, encoded)
            raw = await self.transport.read(self.unit_id, p.function, p.address, p.count)
        except ModbusIOError as exc:
            raise WriteError(f"device {self.name}: write {role}={value}: {exc}") from exc
        back = decode_point(p, raw)
        if isinstance(back, str):
            raise WriteError(f"device {self.name}: role {role!r} is a string")
        tolerance = abs(p.scale) * 0.51 + 1e-6
        if abs(float(back) - float(value)) > tolerance:
            raise WriteError(f"device {self.name}: wrote {role}={value} but read back {back}")
        self.values[p.name] = back
        return float(back)

    def diagnostics(self) -> dict[str, Any]:
        """Values with units and health, for `dr-agent diagnose` and status."""
        h = self.health
        return {
            "device": self.name,
            "kind": self.kind,
            "profile": self.profile.name,
            "unit_id": self.unit_id,
            "endpoint": self.transport.name,
            "available": h.available,
            "consecutive_failures": h.consecutive_failures,
            "latency_ms": None if h.latency_ms is None else round(h.latency_ms, 2),
            "last_error": h.last_error,
            "exception_code": h.exception_code,
            "values": {
                p.name: {"value": self.values.get(p.name), "unit": p.unit}
                for p in self.profile.points
                if p.name in self.values
            },
        }
