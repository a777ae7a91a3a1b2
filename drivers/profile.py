"""Register maps as data: device profiles loaded from YAML, read coalescing and value checks.

A profile lists a device's points (name, Modbus function, address, data type,
byte/word order, scale, unit, access, write range, plausible read range).
Device kinds find the points they need by `role` (e.g. `power_kw`), so one
kind serves every vendor whose profile maps those roles. Scaling turns raw
values into the canonical engineering unit of the role:
`engineering = raw * 10**sf * scale + offset`, where `sf` is a SunSpec-style
scale-factor point read from the device (0 when the point has none).

SunSpec profiles name points by `model` and SunSpec point name; offset, type,
size, scale factor and access come from the published model definitions
(`drivers/sunspec_models.py`), never from hand-written numbers. The driver
discovers where each model starts (`drivers/sunspec.py`) and calls
`Profile.resolved()` to get absolute addresses.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers import sunspec_models
from drivers.codec import NUMERIC_CODES, DataType, Order, Value, decode, encode, register_count

Function = Literal["coil", "discrete_input", "input_register", "holding_register"]
BIT_FUNCTIONS = ("coil", "discrete_input")

PROFILE_DIR = Path(__file__).parent / "profiles"

# Modbus spec limits per request.
MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000

# SunSpec "not implemented" values by type (SunSpec Information Model Specification, 'Unimplemented').
SUNSPEC_NODATA: dict[str, tuple[int, ...]] = {
    "int16": (-0x8000,),
    "uint16": (0xFFFF,),
    "int32": (-0x80000000,),
    "uint32": (0xFFFFFFFF,),
    "int64": (-0x8000000000000000,),
}


class Point(BaseModel):
    """One value on a device: where it lives and how to read it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Point name, unique within the profile.")
    role: str | None = Field(
        default=None,
        description="Canonical meaning the device kind looks for (e.g. power_kw, setpoint_c).",
    )
    function: Function = Field(default="holding_register", description="Modbus table the point lives in.")
    address: int | None = Field(
        default=None, ge=0, le=65535, description="0-based protocol (PDU) address (omit for SunSpec points)."
    )
    model: int | None = Field(default=None, ge=1, description="SunSpec model id the point belongs to.")
    model_offset: int | None = Field(
        default=None,
        ge=0,
        description="SunSpec: registers after the model's ID and L header words (filled in from the "
        "published definition; if given it must agree).",
    )
    sunspec_point: str | None = Field(
        default=None,
        description="SunSpec: the point's name in the published model when `name` differs "
        "(e.g. PFWInj.PF for a point of a group).",
    )
    type: DataType = Field(default="uint16", description="Data type of the raw value.")
    length: int | None = Field(default=None, ge=1, description="Registers, for strings only.")
    byte_order: Order = Field(default="big", description="Byte order inside each register.")
    word_order: Order = Field(
        default="big", description="Register order for multi-register values (little = swapped)."
    )
    scale: float = Field(default=1.0, description="engineering = raw * 10**sf * scale + offset.")
    offset: float = Field(default=0.0, description="engineering = raw * 10**sf * scale + offset.")
    scale_factor: str | None = Field(
        default=None, description="Name of the point holding a power-of-ten scale factor (SunSpec sunssf)."
    )
    unit: str = Field(default="", description="Engineering unit after scaling (kW, A, degC, %).")
    access: Literal["r", "rw", "w"] = Field(default="r", description="r, rw or w.")
    min: float | None = Field(default=None, description="Lowest value a write may set (engineering).")
    max: float | None = Field(default=None, description="Highest value a write may set (engineering).")
    valid: tuple[float, float] | None = Field(
        default=None,
        description="Plausible range of a read value (engineering); outside it the reading is rejected.",
    )
    valid_source: str | None = Field(
        default=None,
        description="Where the plausible range comes from (manual section, published model, site bound).",
    )
    hint: str | None = Field(
        default=None,
        description="What to check when a reading is rejected (e.g. the unit's scale: DIP switch / register 7).",
    )
    percent_of: str | None = Field(
        default=None,
        description="The register holds a percentage of this other point's value (SunSpec 124 OutWRte: % of "
        "WChaMax); engineering = percentage / 100 x that value.",
    )
    true_from: float | None = Field(
        default=None,
        description="For yes/no roles read from an enumeration: the reading means yes from this value up "
        "(e.g. a charger's cable state 2 = cable at vehicle).",
    )
    nodata: tuple[int, ...] = Field(
        default=(), description="Raw values meaning 'no data / not initialised' (e.g. -32768)."
    )
    then_write: dict[str, float] = Field(
        default_factory=dict,
        description="Points written right after this one, in order (enable flags, e.g. WSetEna: 1).",
    )
    description: str = Field(default="", description="What the point means, from the datasheet.")

    @model_validator(mode="after")
    def _check(self) -> Point:
        if self.function in BIT_FUNCTIONS and self.type != "bool":
            raise ValueError(f"{self.function} points must have type bool, not {self.type}")
        if self.type == "string" and not self.length:
            raise ValueError("string points need length (registers)")
        if self.function in ("discrete_input", "input_register") and self.access != "r":
            raise ValueError(f"{self.function} points are read-only")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if self.valid is not None and self.valid[0] > self.valid[1]:
            raise ValueError(f"valid range {list(self.valid)} is upside down")
        if self.valid_source is not None and self.valid is None:
            raise ValueError("valid_source without a valid range")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.model is not None or self.model_offset is not None:
            if self.model is None or self.model_offset is None:
                raise ValueError("a SunSpec point needs both model and model_offset")
        elif self.address is None:
            raise ValueError("a point needs address (or model and model_offset for SunSpec)")
        return self

    @property
    def addr(self) -> int:
        """The absolute address; SunSpec points have one only after `Profile.resolved()`."""
        if self.address is None:
            raise ValueError(f"point {self.name!r}: SunSpec address not resolved (run discovery first)")
        return self.address

    @property
    def count(self) -> int:
        """Registers (or bits) the point occupies."""
        return 1 if self.function in BIT_FUNCTIONS else register_count(self.type, self.length)

    @property
    def writable(self) -> bool:
        return self.access in ("rw", "w") and self.function in ("coil", "holding_register")

    def _factor(self, sf: int, ref: float | None) -> float:
        factor = self.scale * (10.0**sf) if sf else self.scale
        if self.percent_of is not None:
            if ref is None:
                raise ValueError(f"point {self.name!r}: {self.percent_of} (its 100 %) is unknown")
            factor *= ref / 100.0
        return factor

    def to_engineering(self, raw: Value, sf: int = 0, ref: float | None = None) -> Value:
        """`ref`: the value of the `percent_of` point, for percentages of it."""
        if isinstance(raw, (str, bool)):
            return raw
        if self.scale == 1.0 and self.offset == 0.0 and sf == 0 and self.percent_of is None:
            return raw
        return raw * self._factor(sf, ref) + self.offset

    def to_raw(self, value: float | bool | str, sf: int = 0, ref: float | None = None) -> float | bool | str:
        if isinstance(value, (str, bool)):
            return value
        if self.scale == 1.0 and self.offset == 0.0 and sf == 0 and self.percent_of is None:
            return value
        factor = self._factor(sf, ref)
        if factor == 0:
            raise ValueError(f"point {self.name!r}: {self.percent_of} is 0, no percentage of it sets {value}")
        return (value - self.offset) / factor

    def resolution(self, sf: int = 0, ref: float | None = None) -> float:
        """Smallest engineering step the register can express (for read-back comparison)."""
        if self.type.startswith("float"):
            return 0.0
        if self.percent_of is not None and ref is None:
            return 0.0
        return abs(self._factor(sf, ref))


class SunSpecSettings(BaseModel):
    """Where to look for the SunSpec header ('SunS') on this device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bases: tuple[int, ...] = Field(
        default=(40000, 0, 50000), description="Addresses probed for the 'SunS' marker, in order."
    )
    fallback: str | None = Field(
        default=None,
        description="Profile used instead when the device lacks a model this one needs (e.g. storage "
        "controlled through model 124 when there is no model 704).",
    )


class Watchdog(BaseModel):
    """A heartbeat/failsafe register the driver must keep writing, or the device falls back on its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    point: str = Field(description="Point written to feed the watchdog.")
    mode: Literal["constant", "counter", "rewrite"] = Field(
        default="constant",
        description="constant: write `value`; counter: write 1, 2, 3, ...; rewrite: write the last commanded "
        "value again (devices whose setpoint expires).",
    )
    value: float = Field(default=1, description="What `constant` mode writes.")
    interval_s: float = Field(default=5.0, gt=0, description="Feed this often, s (well inside the timeout).")
    idle_value: float | None = Field(
        default=None,
        description="rewrite mode: no feeding while the commanded value equals this (let the device revert).",
    )


class Profile(BaseModel):
    """A device's register map, with the published document it was taken from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = Field(description="Profile format version.")
    name: str = Field(description="Profile id (the file name without .yaml).")
    kind: str = Field(description="Device kind this profile serves (meter, hvac, ...).")
    manufacturer: str = Field(default="", description="Device manufacturer.")
    model: str = Field(default="", description="Device model(s).")
    source: str = Field(
        default="", description="Citation of the published register map the points come from."
    )
    default_unit_id: int | None = Field(
        default=None, ge=0, le=255, description="Unit id the device answers on out of the box."
    )
    max_block: int = Field(
        default=MAX_REGISTERS_PER_READ,
        ge=1,
        le=MAX_REGISTERS_PER_READ,
        description="Most registers the device answers in one read.",
    )
    max_gap: int = Field(
        default=8,
        ge=0,
        description="Unused registers a coalesced read may span between points, when `reads_unmapped` "
        "says the device allows it.",
    )
    reads_unmapped: bool = Field(
        default=False,
        description="The device answers reads that span registers this profile does not map. Without it "
        "(strict devices answer exception 02) only adjacent points share a read. SunSpec chains count as "
        "mapped throughout.",
    )
    sunspec: SunSpecSettings | None = Field(
        default=None, description="Set for SunSpec devices: points are model-relative, found by discovery."
    )
    watchdog: Watchdog | None = Field(default=None, description="Heartbeat the driver keeps feeding.")
    points: list[Point] = Field(description="The device's points.")

    @model_validator(mode="after")
    def _unique(self) -> Profile:
        seen: dict[str, Point] = {}
        roles: set[str] = set()
        for p in self.points:
            if p.name in seen:
                raise ValueError(f"duplicate point name {p.name!r}")
            seen[p.name] = p
            if p.role:
                if p.role in roles:
                    raise ValueError(f"duplicate role {p.role!r}")
                roles.add(p.role)
            if self.sunspec is not None and p.model is None:
                raise ValueError(f"point {p.name!r}: SunSpec profiles give model and model_offset")
            if self.sunspec is None and p.model is not None:
                raise ValueError(f"point {p.name!r}: model/model_offset need `sunspec:` in the profile")
        for p in self.points:
            if p.scale_factor is not None:
                sf = seen.get(p.scale_factor)
                if sf is None:
                    raise ValueError(f"point {p.name!r}: scale_factor {p.scale_factor!r} is not a point")
                if sf.type != "int16" or sf.function != p.function:
                    raise ValueError(f"scale factor {sf.name!r} must be an int16 in the same table")
            if p.percent_of is not None:
                ref = seen.get(p.percent_of)
                if ref is None or ref.percent_of is not None:
                    raise ValueError(f"point {p.name!r}: percent_of {p.percent_of!r} is not a plain point")
            for other in p.then_write:
                q = seen.get(other)
                if q is None or not q.writable:
                    raise ValueError(f"point {p.name!r}: then_write {other!r} is not a writable point")
        if self.watchdog is not None:
            w = seen.get(self.watchdog.point)
            if w is None or not w.writable:
                raise ValueError(f"watchdog point {self.watchdog.point!r} is not a writable point")
        return self

    @model_validator(mode="before")
    @classmethod
    def _from_published(cls, data: object) -> object:
        """SunSpec points take offset, type, size, scale factor and access from the published model."""
        if not isinstance(data, dict) or data.get("sunspec") is None:
            return data
        points = data.get("points")
        if not isinstance(points, list):
            return data
        out: list[object] = []
        names = {p.get("name") for p in points if isinstance(p, dict)}
        for raw in points:
            if not isinstance(raw, dict) or not isinstance(raw.get("model"), int):
                out.append(raw)
                continue
            pd = _published(raw)
            out.append(pd)
            sf = pd.get("scale_factor")
            if isinstance(sf, str) and sf not in names:
                # The scale factor lives in the same model; it need not be listed by hand.
                names.add(sf)
                out.append(
                    _published(
                        {
                            "name": sf,
                            "model": raw["model"],
                            "valid": [-10, 10],
                            "valid_source": "SunSpec sunssf: a power-of-ten exponent",
                        }
                    )
                )
        return {**data, "points": out}

    def point(self, name: str) -> Point:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(f"profile {self.name!r} has no point {name!r}")

    def by_role(self, role: str) -> Point | None:
        for p in self.points:
            if p.role == role:
                return p
        return None

    @property
    def read_gap(self) -> int:
        """Unmapped registers a coalesced read may cross on this device."""
        return self.max_gap if self.reads_unmapped or self.sunspec is not None else 0

    @property
    def needs_resolution(self) -> bool:
        return any(p.address is None for p in self.points)

    def resolved(self, model_starts: Mapping[int, int]) -> Profile:
        """Absolute addresses from `model_starts` (model id -> address of its first data register)."""
        pts = []
        for p in self.points:
            if p.model is None:
                pts.append(p)
                continue
            if p.model not in model_starts:
                raise ValueError(f"profile {self.name!r}: device has no SunSpec model {p.model}")
            pts.append(p.model_copy(update={"address": model_starts[p.model] + (p.model_offset or 0)}))
        return self.model_copy(update={"points": pts})

    def shifted(self, delta: int) -> Profile:
        """Every address moved by `delta` (gateways that repeat one map per channel or group)."""
        if not delta:
            return self
        pts = []
        for p in self.points:
            a = p.addr + delta
            if not 0 <= a <= 65535:
                raise ValueError(f"profile {self.name!r}: point {p.name!r} shifted to {a}, outside 0..65535")
            pts.append(p.model_copy(update={"address": a}))
        return self.model_copy(update={"points": pts})

    def scale_factor_names(self) -> set[str]:
        return {p.scale_factor for p in self.points if p.scale_factor}

    def engineering(self, raw: Mapping[str, Value]) -> tuple[dict[str, Value], dict[str, str]]:
        """Engineering values from raw decoded ones, and the points rejected with the reason.

        Rejected: a 'no data' raw value, a missing or unimplemented scale factor,
        NaN/Inf, or a value outside the point's `valid` range. A rejected point
        is absent from the values: unknown, never a stale or made-up number.
        A device polling this profile keeps one `Engineering(profile)` instead.
        """
        return Engineering(self)(raw)


class Engineering:
    """`Profile.engineering` with what each point needs worked out once, not on every poll.

    Plain numbers (no 'no data' marker, scale factor or percentage) take a short path: a
    multiply-add and one range comparison; NaN and infinities fail that comparison too.
    """

    __slots__ = ("_other", "_plain")

    def __init__(self, profile: Profile) -> None:
        nodata_default = SUNSPEC_NODATA if profile.sunspec is not None else {}
        #: (name, scaled, scale, offset, low, high, point): out of range is also rejected
        self._plain: list[tuple[str, bool, float, float, float, float, Point]] = []
        self._other: list[tuple[str, Point, tuple[int, ...]]] = []
        # Percentages of another point after that point (the plain points come first).
        for p in sorted(profile.points, key=lambda q: q.percent_of is not None):
            nodata = p.nodata or nodata_default.get(p.type, ())
            if p.type in NUMERIC_CODES and not nodata and p.scale_factor is None and p.percent_of is None:
                lo, hi = p.valid if p.valid is not None else (-_FLOAT_MAX, _FLOAT_MAX)
                scaled = p.scale != 1.0 or p.offset != 0.0
                self._plain.append((p.name, scaled, p.scale, p.offset, lo, hi, p))
            else:
                self._other.append((p.name, p, nodata))

    def __call__(self, raw: Mapping[str, Value]) -> tuple[dict[str, Value], dict[str, str]]:
        values: dict[str, Value] = {}
        rejected: dict[str, str] = {}
        for name, scaled, scale, offset, lo, hi, p in self._plain:
            r = raw.get(name)
            if r is None:
                continue
            v = r * scale + offset if scaled else r  # type: ignore[operator]
            if lo <= v <= hi:  # type: ignore[operator]
                values[name] = v
            elif isinstance(v, (int, float)):
                rejected[name] = _implausible(p, v)
            else:  # a str or bool where a number belongs: passed on, as for any other point
                values[name] = v
        for name, p, nodata in self._other:
            r = raw.get(name)
            if r is None:
                continue
            if isinstance(r, (str, bool)):
                values[name] = r
                continue
            if isinstance(r, int) and r in nodata:
                rejected[name] = f"no data ({r})"
                continue
            sf = 0
            if p.scale_factor is not None:
                s = raw.get(p.scale_factor)
                if not isinstance(s, int) or isinstance(s, bool) or s == -0x8000 or not -10 <= s <= 10:
                    rejected[name] = f"scale factor {p.scale_factor} unusable ({s})"
                    continue
                sf = s
            ref = None
            if p.percent_of is not None:
                ref_v = values.get(p.percent_of)
                if not isinstance(ref_v, (int, float)) or isinstance(ref_v, bool):
                    rejected[name] = f"{p.percent_of} (its 100 %) unknown"
                    continue
                ref = float(ref_v)
            v = p.to_engineering(r, sf, ref)
            assert isinstance(v, (int, float))
            if not math.isfinite(v) or (p.valid is not None and not p.valid[0] <= v <= p.valid[1]):
                rejected[name] = _implausible(p, v)
                continue
            values[name] = v
        return values, rejected


_FLOAT_MAX = 1.7976931348623157e308


def _implausible(p: Point, v: float) -> str:
    """Why a number is rejected: not finite, or outside the point's plausible range."""
    if not math.isfinite(v):
        return f"not a finite number ({v})"
    return f"{v:g} {p.unit} outside plausible range {list(p.valid or ())}"


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One Modbus read request that serves several points."""

    function: Function
    address: int
    count: int
    points: tuple[Point, ...]
    #: Raw values of every point from the block's registers/bits (`decode_block`), compiled once.
    decoder: Callable[[Sequence[int] | Sequence[bool]], dict[str, Value]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoder", _compile_block(self))


def _compile_block(block: ReadBlock) -> Callable[[Sequence[int] | Sequence[bool]], dict[str, Value]]:
    """A function decoding a whole reply at once: one precompiled struct format for the block's
    plain big-endian numbers (their holes as pad bytes), `decode_raw` for the rest (strings,
    swapped orders, overlapping points)."""
    base, count = block.address, block.count
    if block.function in BIT_FUNCTIONS:
        bits = [(p.name, p.addr - base) for p in block.points]

        def decode_bits(regs: Sequence[int] | Sequence[bool]) -> dict[str, Value]:
            if len(regs) < count:
                raise ValueError(f"short response: {len(regs)} of {count} at {base}")
            return {name: bool(regs[i]) for name, i in bits}

        return decode_bits

    fmt, names, rest = [">"], [], []
    at = 0  # bytes covered by fmt so far
    for p in sorted(block.points, key=lambda q: q.addr):
        code = NUMERIC_CODES.get(p.type)
        off = (p.addr - base) * 2
        if code is None or p.byte_order != "big" or p.word_order != "big" or off < at:
            rest.append((p, p.addr - base))
            continue
        if off > at:
            fmt.append(f"{off - at}x")
        fmt.append(code)
        names.append(p.name)
        at = off + 2 * p.count
    plain = struct.Struct("".join(fmt))
    regs_fmt = struct.Struct(f">{count}H")

    def decode_regs(regs: Sequence[int] | Sequence[bool]) -> dict[str, Value]:
        if len(regs) < count:
            raise ValueError(f"short response: {len(regs)} of {count} at {base}")
        try:
            buf = regs_fmt.pack(*regs[:count])
        except struct.error:  # not 16-bit registers: the point-by-point path masks them
            return {
                p.name: decode_raw(p, regs[p.addr - base : p.addr - base + p.count]) for p in block.points
            }
        out: dict[str, Value] = dict(zip(names, plain.unpack_from(buf), strict=True))
        for p, i in rest:
            out[p.name] = decode_raw(p, regs[i : i + p.count])
        return out

    return decode_regs


def plan_reads(points: Iterable[Point], *, max_block: int, max_gap: int) -> list[ReadBlock]:
    """Coalesce points into as few reads as the device allows.

    Points of the same table are merged while the merged block stays within
    `max_block` registers and the hole between neighbours is at most `max_gap`.
    """
    by_function: dict[str, list[Point]] = {}
    for p in points:
        by_function.setdefault(p.function, []).append(p)
    blocks: list[ReadBlock] = []
    for function, pts in by_function.items():
        limit = MAX_BITS_PER_READ if function in BIT_FUNCTIONS else max_block
        pts.sort(key=lambda p: (p.addr, p.count))
        if pts[0].count > limit:
            raise ValueError(f"point {pts[0].name!r} is larger than max_block {limit}")
        start = pts[0].addr
        end = start + pts[0].count
        group = [pts[0]]
        for p in pts[1:]:
            if p.count > limit:
                raise ValueError(f"point {p.name!r} is larger than max_block {limit}")
            new_end = max(end, p.addr + p.count)
            if p.addr - end <= max_gap and new_end - start <= limit:
                end = new_end
                group.append(p)
                continue
            blocks.append(ReadBlock(function, start, end - start, tuple(group)))  # type: ignore[arg-type]
            start, end, group = p.addr, p.addr + p.count, [p]
        blocks.append(ReadBlock(function, start, end - start, tuple(group)))  # type: ignore[arg-type]
    return blocks


def decode_raw(point: Point, regs: Sequence[int] | Sequence[bool]) -> Value:
    """Decode one point from its own registers/bits, unscaled."""
    if point.function in BIT_FUNCTIONS:
        return bool(regs[0])
    return decode(
        [int(r) for r in regs], point.type, byte_order=point.byte_order, word_order=point.word_order
    )


def decode_point(point: Point, regs: Sequence[int] | Sequence[bool], sf: int = 0) -> Value:
    """Decode one point from its own registers/bits and scale it."""
    return point.to_engineering(decode_raw(point, regs), sf)


def decode_block(block: ReadBlock, regs: Sequence[int] | Sequence[bool]) -> dict[str, Value]:
    """Raw (unscaled) values of every point a read returned; `Profile.engineering` scales and checks."""
    return block.decoder(regs)


def check_write(point: Point, value: float | bool | str) -> None:
    """Raise ValueError (naming the point, the value and what is allowed) if `value` may not be written."""
    if not point.writable:
        raise ValueError(f"point {point.name!r} is not writable")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"point {point.name!r}: {value} is not a finite number")
        lo, hi = point.min, point.max
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError(
                f"point {point.name!r}: {value:g} {point.unit} outside the allowed range "
                f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            )


def _published(raw: dict[str, object]) -> dict[str, object]:
    """A SunSpec point's fields completed from the published definition; disagreement is an error."""
    mid = raw["model"]
    assert isinstance(mid, int)
    name = str(raw.get("sunspec_point") or raw.get("name"))
    try:
        d = sunspec_models.model(mid).point(name)
    except KeyError as exc:
        raise ValueError(str(exc.args[0])) from None
    where = f"point {raw.get('name')!r} (SunSpec model {mid} {name})"
    given = {
        "model_offset": d.offset,
        "type": d.type,
        "scale_factor": d.sf,
    }
    if d.sunspec_type == "string":
        given["length"] = d.size
    out = dict(raw)
    for key, published in given.items():
        if key in raw and raw[key] != published:
            raise ValueError(
                f"{where}: {key} {raw[key]!r} disagrees with the published model ({published!r})"
            )
        out[key] = published
    access = "rw" if d.access == "RW" else "r"
    if access == "r" and raw.get("access", "r") != "r":
        raise ValueError(f"{where}: read-only in the published model, cannot be {raw['access']!r}")
    out.setdefault("access", access)
    unimplemented = sunspec_models.UNIMPLEMENTED.get(d.sunspec_type, ())
    if not d.sunspec_type.startswith("acc"):  # accumulators at 0 are a fresh device, not "no data"
        out.setdefault("nodata", unimplemented)
    return out


def encode_write(
    point: Point, value: float | bool | str, sf: int = 0, ref: float | None = None
) -> list[int] | bool:
    """Registers (or the coil state) that set `point` to `value`, after checking the range.

    Raises ValueError naming the point, the value and what is allowed, or when
    the scaled value does not fit the register's type.
    """
    check_write(point, value)
    if point.function == "coil":
        return bool(value)
    raw = point.to_raw(value, sf, ref)
    try:
        return encode(
            raw,
            point.type,
            byte_order=point.byte_order,
            word_order=point.word_order,
            length=point.length,
        )
    except ValueError as exc:
        raise ValueError(f"point {point.name!r}: {value} {point.unit}: {exc}") from None


def profile_path(name_or_path: str | Path) -> Path:
    """A bare name means drivers/profiles/NAME.yaml; anything with a suffix is a path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        return p
    return PROFILE_DIR / f"{name_or_path}.yaml"


_cache: dict[Path, Profile] = {}


def load_profile(name_or_path: str | Path) -> Profile:
    """Load and validate a profile (cached). Raises FileNotFoundError or pydantic ValidationError."""
    path = profile_path(name_or_path).resolve()
    if path not in _cache:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
        _cache[path] = Profile.model_validate(data)
    return _cache[path]


def shipped_profiles() -> list[str]:
    """Names of the profiles under drivers/profiles/."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
