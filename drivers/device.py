"""A Modbus device: coalesced polling, health, range-checked writes with read-back, watchdog feeding.

A device knows its profile (the register map) and its transport; device kinds
(`drivers/kinds/`) add capability methods on top. Readings of a device that
failed its last poll are invalidated, never silently reused: `reading()`
returns None and callers must treat that as "unknown". Values that are
NaN/Inf, 'no data' markers or outside the point's plausible range are
rejected point by point the same way.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field

from drivers.backoff import Backoff
from drivers.codec import Value
from drivers.errors import ModbusIOError
from drivers.profile import (
    Engineering,
    Function,
    Point,
    Profile,
    ReadBlock,
    Watchdog,
    check_write,
    decode_raw,
    encode_write,
    load_profile,
    plan_reads,
)
from drivers.sunspec import MissingModel, SunSpecError, check_chain, discover, model_starts

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
    unit_id: int = Field(default=1, ge=0, le=255, description="Modbus unit (slave) id.")
    profile: str = Field(description="Register map: a name under drivers/profiles/ or a YAML path.")
    register_offset: int = Field(
        default=0,
        ge=-65535,
        le=65535,
        description="Added to every address of the profile (gateways repeating one map per group/channel).",
    )
    zone: str | None = Field(default=None, description="Group name strategies may address.")
    rated_kw: float | None = Field(default=None, gt=0, description="Nameplate power, kW.")
    description: str = Field(default="", description="Free text for people.")


class WriteError(Exception):
    """A write was refused before sending, failed on the bus, or did not read back."""


#: A point's exact registers (or coil state), as read before a shed and written back on restore.
RawRegisters = dict[str, list[int] | bool]


@dataclass(frozen=True)
class Snapshot:
    """What a shed would replace: the role's value and the raw registers of it and its `then_write` points."""

    value: float
    raw: RawRegisters


@dataclass
class Health:
    """What an operator asks of a device: when was it last read, how often did it fail, how slow is it."""

    last_ok_ts: float | None = None
    consecutive_failures: int = 0
    available: bool = True
    latency_ms: float | None = None
    last_error: str | None = None
    exception_code: int | None = None
    next_poll_at: float = 0.0
    polls: int = 0
    failures: int = 0
    #: Points whose last value was rejected (no data, NaN/Inf, implausible), with the reason.
    rejected: dict[str, str] = field(default_factory=dict)
    watchdog_feeds: int = 0
    watchdog_failures: int = 0
    last_feed_ts: float | None = None


def _as_regs(raw: list[int] | bool) -> list[int] | list[bool]:
    return [raw] if isinstance(raw, bool) else raw


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
        self.base_profile = profile
        self.values: dict[str, Value] = {}
        self.values_ts: float | None = None
        self.health = Health()
        #: The clock the retry backoff runs on: monotonic seconds by default; the agent
        #: injects its own, so a simulated plant's dead device is retried in plant time.
        self.clock: Callable[[], float] = time.monotonic
        #: Poll without the start-up writes (a charger's failsafe current): for tools that only look.
        self.read_only = False
        #: Retry backoff of an unavailable device (full jitter, capped).
        self.retry_cap_s = MAX_RETRY_INTERVAL_S
        self._retry = Backoff(base_s=1.0, cap_s=self.retry_cap_s)
        self._raw: dict[str, Value] = {}
        self._commanded: dict[str, float | bool] = {}
        #: Writes so far, and the count at each point's last write: a poll that was reading while a
        #: point was written must not put back the value it read before the write.
        self._writes = 0
        self._written_at: dict[str, int] = {}
        self._counter = 0
        self._next_feed: float = 0.0
        #: One write at a time on the device (a shed with its read-back, a restore, a watchdog
        #: feed): a feed that took the commanded value before a restore must not land after it.
        self._write_lock = asyncio.Lock()
        self._set_up = False
        problems = self.check_profile(profile)
        if problems:
            raise ValueError(f"device {self.name}: " + "; ".join(problems))
        if config.register_offset and profile.needs_resolution:
            raise ValueError(f"device {self.name}: register_offset does not apply to SunSpec profiles")
        self.profile = profile
        self._engineering = Engineering(profile)
        self._blocks: list[ReadBlock] = []
        self._role_point: dict[str, Point] = {}
        if not profile.needs_resolution:
            self._use(profile.shifted(config.register_offset))

    def _use(self, profile: Profile) -> None:
        """Adopt a profile with absolute addresses: plan the reads, index the roles."""
        self.profile = profile
        self._engineering = Engineering(profile)
        self._blocks = plan_reads(
            [p for p in profile.points if p.access != "w"],
            max_block=profile.max_block,
            max_gap=profile.read_gap,
        )
        self._role_point = {p.role: p for p in profile.points if p.role}

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
    def ready(self) -> bool:
        """Addresses known (SunSpec discovered) and start-up writes done."""
        return self._set_up

    @property
    def write_count(self) -> int:
        """Writes this device took so far (sheds, restores, start-up): a value read before the last
        one is no longer the device's."""
        return self._writes

    @property
    def requests_per_poll(self) -> int:
        return len(self._blocks)

    @property
    def points_per_poll(self) -> int:
        return sum(len(b.points) for b in self._blocks)

    # -- start-up -------------------------------------------------------------------

    def setup_writes(self) -> list[tuple[str, float]]:
        """(role, value) written once when the device is first reached (e.g. a charger's failsafe current)."""
        return []

    async def setup(self) -> None:
        """Discover SunSpec addresses and do the start-up writes. Raises ModbusIOError/SunSpecError/WriteError."""
        if self.profile.needs_resolution:
            assert self.base_profile.sunspec is not None
            chain = await discover(self.transport, self.unit_id, self.base_profile.sunspec.bases)
            self._use(self._sunspec_profile(chain).resolved(model_starts(chain)))
        for role, value in [] if self.read_only else self.setup_writes():
            if self._role_point.get(role) is not None:
                await self.write_role(role, value)
                log.info("device=%s event=configured role=%s value=%g", self.name, role, value)
        self._set_up = True

    def _sunspec_profile(self, chain: list[Any]) -> Profile:
        """The base profile if the chain has its models as published, else its fallback (if it fits)."""
        prof = self.base_profile
        try:
            check_chain(prof, chain)
            return prof
        except SunSpecError as exc:
            # Only a missing model falls back: a model laid out otherwise than published is refused.
            fallback = prof.sunspec.fallback if prof.sunspec and isinstance(exc, MissingModel) else None
            if fallback is None:
                raise SunSpecError(f"device {self.name}: {exc}") from exc
            try:
                alt = load_profile(fallback)
            except (OSError, ValueError) as exc2:
                raise SunSpecError(f"device {self.name}: {exc}; fallback {fallback}: {exc2}") from exc
            problems = self.check_profile(alt)
            try:
                check_chain(alt, chain)
            except SunSpecError as exc2:
                problems.append(str(exc2))
            if problems:
                raise SunSpecError(
                    f"device {self.name}: {exc}; fallback {fallback}: {'; '.join(problems)}"
                ) from exc
            log.info("device=%s event=sunspec_fallback profile=%s because=%r", self.name, fallback, str(exc))
            return alt

    # -- polling -----------------------------------------------------------------------

    def due(self, now: float | None = None) -> bool:
        """Whether to poll now: always while healthy; an unavailable device when its backoff expired.

        A retry further ahead than any backoff (its cap) means the clock was stepped back: due now,
        or a silent meter would go unpolled for as long as the step.
        """
        wait = self.health.next_poll_at - (self.clock() if now is None else now)
        return wait <= 0 or wait > self.retry_cap_s + 1.0

    async def poll(self) -> bool:
        """Read every readable point; returns True on success. Never raises for bus errors.

        A failure costs at most one timeout: the first failed block ends the poll.
        """
        h = self.health
        t0 = time.monotonic()
        h.polls += 1
        writes_before = self._writes
        raw: dict[str, Value] = {}
        try:
            if not self._set_up:
                await self.setup()
            for block in list(self._blocks):
                try:
                    regs = await self.transport.read(self.unit_id, block.function, block.address, block.count)
                except ModbusIOError as exc:
                    if exc.exception_code != 2 or len(block.points) == 1:
                        raise
                    # A strict device refuses a read across registers it lacks: split it, for good.
                    for single in self._split(block):
                        regs = await self.transport.read(
                            self.unit_id, single.function, single.address, single.count
                        )
                        raw.update(single.decoder(regs))
                    continue
                raw.update(block.decoder(regs))
        except ModbusIOError as exc:
            self._failed(str(exc), exc.exception_code, t0, exc.retry_in_s)
            return False
        except (SunSpecError, WriteError, ValueError) as exc:
            self._failed(str(exc), None, t0)
            return False
        values, rejected = self._engineering(raw)
        if rejected:
            for name, why in rejected.items():
                if h.rejected.get(name) is None:
                    log.warning("device=%s event=value_rejected point=%s reason=%r", self.name, name, why)
        h.rejected = rejected
        if self._writes != writes_before:
            # Written (and read back) while this poll was under way: the read-back is the newer value.
            for name, n in self._written_at.items():
                if n > writes_before and name in self.values:
                    values[name] = self.values[name]
        self._raw = raw
        self.values = values
        self.values_ts = time.time()
        was_down = not h.available or h.consecutive_failures > 0
        h.latency_ms = (time.monotonic() - t0) * 1000
        h.last_ok_ts = self.values_ts
        h.last_error = None
        h.exception_code = None
        h.next_poll_at = 0.0
        self._retry.succeeded()
        if not h.available:
            log.warning("device=%s event=recovered after=%d_failures", self.name, h.consecutive_failures)
        elif was_down:
            log.info("device=%s event=poll_ok_again", self.name)
        h.consecutive_failures = 0
        h.available = True
        return True

    def _split(self, block: ReadBlock) -> list[ReadBlock]:
        """Replace a coalesced read the device refused (exception 02) by one read per point; remembered."""
        singles = [ReadBlock(block.function, p.addr, p.count, (p,)) for p in block.points]
        i = self._blocks.index(block)
        self._blocks[i : i + 1] = singles
        log.warning(
            "device=%s event=read_split function=%s address=%d count=%d into=%d reason=%r",
            self.name,
            block.function,
            block.address,
            block.count,
            len(singles),
            "exception 2: the device refuses reads across registers it does not have",
        )
        return singles

    def _failed(self, error: str, code: int | None, t0: float, endpoint_retry_s: float | None = None) -> None:
        h = self.health
        h.failures += 1
        h.consecutive_failures += 1
        h.last_error = error
        h.exception_code = code
        h.latency_ms = (time.monotonic() - t0) * 1000
        # Invalidate: a value we could not read now is unknown, not "the last one".
        self.values = {}
        self._raw = {}
        self.values_ts = None
        if h.consecutive_failures == 1:
            log.warning("device=%s event=poll_failed error=%r", self.name, error)
        else:
            log.debug("device=%s event=poll_failed n=%d error=%r", self.name, h.consecutive_failures, error)
        if h.consecutive_failures >= UNAVAILABLE_AFTER_FAILURES:
            if h.available:
                log.error("device=%s event=unavailable error=%r", self.name, error)
            h.available = False
            if endpoint_retry_s is not None:
                # The endpoint is backing off its connection already: retry with it, not after a
                # second backoff of our own on top (they stacked: 38 s to recover instead of 30).
                h.next_poll_at = self.clock() + min(endpoint_retry_s, self.retry_cap_s)
                return
            # Back off (full jitter) so a dead device does not eat the bus's time.
            self._retry.cap_s = self.retry_cap_s
            self._retry.failed(self.clock())
            h.next_poll_at = self._retry.not_before

    # -- readings ----------------------------------------------------------------------

    def point_for(self, role: str) -> Point | None:
        return self._role_point.get(role) or self.base_profile.by_role(role)

    def reading(self, role: str) -> float | None:
        """Latest value of a role, or None when unknown (not mapped, not read, rejected, device down)."""
        p = self._role_point.get(role)
        if p is None:
            return None
        v = self.values.get(p.name)
        if v is None or isinstance(v, str):
            return None
        return float(v)

    def power_kw(self) -> float | None:
        return self.reading("power_kw")

    # -- writes ------------------------------------------------------------------------

    async def _scale_factor(self, p: Point) -> int:
        if p.scale_factor is None:
            return 0
        sf = self._raw.get(p.scale_factor)
        if not isinstance(sf, int) or isinstance(sf, bool):
            q = self.profile.point(p.scale_factor)
            sf = decode_raw(q, await self.transport.read(self.unit_id, q.function, q.addr, q.count))
            assert isinstance(sf, int)
        if sf == -0x8000 or not -10 <= sf <= 10:
            raise WriteError(f"device {self.name}: scale factor {p.scale_factor} is unusable ({sf})")
        return sf

    def _ref(self, p: Point) -> float | None:
        """The value of the point `p` is a percentage of (its 100 %), or None if `p` is no percentage."""
        if p.percent_of is None:
            return None
        v = self.values.get(p.percent_of)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise WriteError(f"device {self.name}: {p.percent_of} (100 % of {p.name}) is unknown")
        return float(v)

    async def _send(self, p: Point, value: float | bool, sf: int) -> None:
        encoded = encode_write(p, value, sf, self._ref(p))
        if isinstance(encoded, bool):
            await self.transport.write_coil(self.unit_id, p.addr, encoded)
        else:
            await self.transport.write_registers(self.unit_id, p.addr, encoded)

    async def write_role(self, role: str, value: float | bool) -> float:
        """Write a role's point (and its `then_write` points), read it back; returns the read-back value.

        The range check happens before anything is sent; a value that does not
        read back (within the point's resolution) raises WriteError.
        """
        p = self._role_point.get(role)
        if p is None:
            if self.base_profile.by_role(role) is not None:
                raise WriteError(f"device {self.name}: not set up yet (SunSpec discovery pending)")
            raise WriteError(f"device {self.name}: no point for role {role!r}")
        return await self.write_point(p, value)

    async def write_point(self, p: Point, value: float | bool) -> float:
        try:
            check_write(p, value)  # the range check, before anything goes on the bus
        except ValueError as exc:
            raise WriteError(f"device {self.name}: {exc}") from exc
        async with self._write_lock:
            return await self._write_point(p, value)

    async def _write_point(self, p: Point, value: float | bool) -> float:
        ref = self._ref(p)
        self._writes += 1  # before it goes out: a write that fails half way may still have landed
        try:
            sf = await self._scale_factor(p)
            await self._send(p, value, sf)
            for name, v in p.then_write.items():
                q = self.profile.point(name)
                await self._send(q, v, await self._scale_factor(q))
            regs = await self.transport.read(self.unit_id, p.function, p.addr, p.count)
        except ModbusIOError as exc:
            raise WriteError(f"device {self.name}: write {p.name}={value}: {exc}") from exc
        except ValueError as exc:
            raise WriteError(f"device {self.name}: {exc}") from exc
        back = p.to_engineering(decode_raw(p, regs), sf, ref)
        if isinstance(back, str):
            raise WriteError(f"device {self.name}: point {p.name!r} is a string")
        tolerance = p.resolution(sf, ref) * 0.51 + 1e-6 * max(1.0, abs(float(value)))
        if not math.isfinite(float(back)) or abs(float(back) - float(value)) > tolerance:
            raise WriteError(f"device {self.name}: wrote {p.name}={value} but read back {back}")
        self.values[p.name] = back
        self._written_at[p.name] = self._writes
        self._commanded[p.name] = value
        return float(back)

    # -- exact undo ---------------------------------------------------------------------

    async def snapshot(self, role: str) -> Snapshot:
        """Read, fresh from the device, what a shed of `role` would replace; refuse what could not be put back.

        Raises WriteError with the reason when the current value is not
        readable, not plausible (outside its range, or other readings of the
        device are rejected: a wrong scale shows there first), or outside the
        range a write may set, so it could not be written back.
        """
        p = self._role_point.get(role)
        if p is None:
            raise WriteError(f"device {self.name}: no point for role {role!r} (not set up?)")
        if not self._set_up or not self.health.available:
            raise WriteError(f"device {self.name}: unavailable ({self.health.last_error or 'not set up'})")
        others = {n: why for n, why in self.health.rejected.items() if n != p.name}
        if others:
            n, why = next(iter(others.items()))
            raise WriteError(f"device {self.name}: reading of {n} rejected ({why}){self._hint(n)}")
        raw: RawRegisters = {}
        names = [p.name, *p.then_write]
        try:
            for name in names:
                q = self.profile.point(name)
                regs = await self.transport.read(self.unit_id, q.function, q.addr, q.count)
                raw[name] = bool(regs[0]) if q.function == "coil" else [int(r) for r in regs]
            sf = await self._scale_factor(p)
        except ModbusIOError as exc:
            raise WriteError(f"device {self.name}: current {p.name} unreadable: {exc}") from exc
        decoded = {p.name: decode_raw(p, _as_regs(raw[p.name]))}
        if p.scale_factor is not None:
            decoded[p.scale_factor] = sf
        if p.percent_of is not None:
            # Its 100 % as last polled (with that point's own scale factor).
            q = self.profile.point(p.percent_of)
            for ref_name in (q.name, q.scale_factor):
                if ref_name is not None and ref_name in self._raw:
                    decoded[ref_name] = self._raw[ref_name]
        values, rejected = self.profile.engineering(decoded)
        if p.name in rejected:
            raise WriteError(f"device {self.name}: current {p.name} {rejected[p.name]}{self._hint(p.name)}")
        v = values.get(p.name)
        if not isinstance(v, (int, float)):
            raise WriteError(f"device {self.name}: current {p.name} is not a number ({v!r})")
        try:
            encode_write(p, v, sf, self._ref(p))
        except ValueError as exc:
            raise WriteError(
                f"device {self.name}: current {p.name} could not be written back ({exc}){self._hint(p.name)}"
            ) from exc
        return Snapshot(float(v), raw)

    def _hint(self, name: str) -> str:
        try:
            h = self.profile.point(name).hint
        except KeyError:
            return ""
        return f": {h}" if h else ""

    async def write_raw(self, raw: RawRegisters) -> None:
        """Write registers back verbatim (a restore), each read back and compared. Raises WriteError."""
        async with self._write_lock:
            await self._write_raw(raw)

    async def _write_raw(self, raw: RawRegisters) -> None:
        for name, regs in raw.items():
            q = self.profile.point(name)
            self._writes += 1
            try:
                if isinstance(regs, bool):
                    await self.transport.write_coil(self.unit_id, q.addr, regs)
                else:
                    await self.transport.write_registers(self.unit_id, q.addr, list(regs))
                back = await self.transport.read(self.unit_id, q.function, q.addr, q.count)
            except ModbusIOError as exc:
                raise WriteError(f"device {self.name}: restore {name}: {exc}") from exc
            got: list[int] | bool = bool(back[0]) if isinstance(regs, bool) else [int(r) for r in back]
            if got != regs:
                raise WriteError(f"device {self.name}: restored {name}={regs} but read back {got}")
            value = decode_raw(q, _as_regs(regs))
            if not isinstance(value, str):
                sf = 0 if q.scale_factor is None else await self._scale_factor(q)
                try:
                    eng = q.to_engineering(value, sf, None if q.percent_of is None else self._ref(q))
                except (ValueError, WriteError):
                    continue  # its 100 % is unknown: the next poll reads it
                if not isinstance(eng, str):
                    self.values[name] = eng
                    self._written_at[name] = self._writes
                    if name in self._commanded:
                        # The watchdog renews what we command; after a restore that is the original.
                        self._commanded[name] = eng

    # -- watchdog ----------------------------------------------------------------------

    def watchdog_interval_s(self) -> float | None:
        w = self.profile.watchdog
        return None if w is None else w.interval_s

    async def maintain(self, now: float) -> None:
        """Feed the device's heartbeat/failsafe register when due, so it falls back on its own if we die.

        Called by the poller every cycle with the agent's clock. Never raises;
        a device that is unavailable or not set up is skipped.
        """
        w = self.profile.watchdog
        interval = self.watchdog_interval_s()
        if w is None or interval is None or now < self._next_feed:
            return
        if not self._set_up or not self.health.available:
            return
        async with self._write_lock:  # the commanded value as it is once no write is under way
            await self._feed(w, now, interval)

    async def _feed(self, w: Watchdog, now: float, interval: float) -> None:
        p = self.profile.point(w.point)
        value: float | bool
        if w.mode == "rewrite":
            last = self._commanded.get(p.name)
            if last is None or (w.idle_value is not None and float(last) == w.idle_value):
                return
            value = last
        elif w.mode == "counter":
            self._counter = self._counter % 0xFFFF + 1
            value = self._counter
        else:
            value = w.value
        self._next_feed = now + interval
        self._writes += 1
        try:
            await self._send(p, value, await self._scale_factor(p))
        except (ModbusIOError, WriteError, ValueError) as exc:
            self.health.watchdog_failures += 1
            if self.health.watchdog_failures == 1 or self.health.watchdog_feeds > 0:
                log.warning("device=%s event=watchdog_feed_failed error=%r", self.name, str(exc))
            return
        self.health.watchdog_feeds += 1
        self.health.last_feed_ts = now

    # -- diagnostics -------------------------------------------------------------------

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
            "ready": self._set_up,
            "last_ok_ts": h.last_ok_ts,
            "consecutive_failures": h.consecutive_failures,
            "latency_ms": None if h.latency_ms is None else round(h.latency_ms, 2),
            "last_error": h.last_error,
            "exception_code": h.exception_code,
            "rejected": dict(h.rejected),
            "requests_per_poll": self.requests_per_poll,
            "watchdog": None
            if self.profile.watchdog is None
            else {
                "point": self.profile.watchdog.point,
                "feeds": h.watchdog_feeds,
                "failures": h.watchdog_failures,
                "last_feed_ts": h.last_feed_ts,
            },
            "values": {
                p.name: {"value": self.values.get(p.name), "unit": p.unit}
                for p in self.profile.points
                if p.name in self.values
            },
        }
