"""Register maps as data: device profiles loaded from YAML, and read coalescing.

A profile lists a device's points (name, Modbus function, address, data type,
byte/word order, scale, unit, access, write range). Device kinds find the
points they need by `role` (e.g. `power_kw`), so one kind serves every vendor
whose profile maps those roles. Scaling turns raw values into the canonical
engineering unit of the role: `engineering = raw * scale + offset`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.codec import DataType, Order, Value, decode, encode, register_count

Function = Literal["coil", "discrete_input", "input_register", "holding_register"]
BIT_FUNCTIONS = ("coil", "discrete_input")

PROFILE_DIR = Path(__file__).parent / "profiles"

# Modbus spec limits per request.
MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000


class Point(BaseModel):
    """One value on a device: where it lives and how to read it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Point name, unique within the profile.")
    role: str | None = Field(
        default=None,
        description="Canonical meaning the device kind looks for (e.g. power_kw, setpoint_c).",
    )
    function: Function = Field(description="Modbus table the point lives in.")
    address: int = Field(ge=0, le=65535, description="0-based protocol (PDU) address.")
    type: DataType = Field(default="uint16", description="Data type of the raw value.")
    length: int | None = Field(default=None, ge=1, description="Registers, for strings only.")
    byte_order: Order = Field(default="big", description="Byte order inside each register.")
    word_order: Order = Field(
        default="big", description="Register order for multi-register values (little = swapped)."
    )
    scale: float = Field(default=1.0, description="engineering = raw * scale + offset.")
    offset: float = Field(default=0.0, description="engineering = raw * scale + offset.")
    unit: str = Field(default="", description="Engineering unit after scaling (kW, A, degC, %).")
    access: Literal["r", "rw", "w"] = Field(default="r", description="r, rw or w.")
    min: float | None = Field(default=None, description="Lowest value a write may set.")
    max: float | None = Field(default=None, description="Highest value a write may set.")
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
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        return self

    @property
    def count(self) -> int:
        """Registers (or bits) the point occupies."""
        return 1 if self.function in BIT_FUNCTIONS else register_count(self.type, self.length)

    @property
    def writable(self) -> bool:
        return self.access in ("rw", "w") and self.function in ("coil", "holding_register")

    def to_engineering(self, raw: Value) -> Value:
        if isinstance(raw, (str, bool)):
            return raw
        if self.scale == 1.0 and self.offset == 0.0:
            return raw
        return raw * self.scale + self.offset

    def to_raw(self, value: float | bool | str) -> float | bool | str:
        if isinstance(value, (str, bool)):
            return value
        if self.scale == 1.0 and self.offset == 0.0:
            return value
        return (value - self.offset) / self.scale


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
    max_block: int = Field(
        default=MAX_REGISTERS_PER_READ,
        ge=1,
        le=MAX_REGISTERS_PER_READ,
        description="Most registers the device answers in one read.",
    )
    max_gap: int = Field(
        default=8, ge=0, description="Unused registers a coalesced read may span between points."
    )
    points: list[Point] = Field(description="The device's points.")

    @model_validator(mode="after")
    def _unique(self) -> Profile:
        seen: set[str] = set()
        roles: set[str] = set()
        for p in self.points:
            if p.name in seen:
                raise ValueError(f"duplicate point name {p.name!r}")
            seen.add(p.name)
            if p.role:
                if p.role in roles:
                    raise ValueError(f"duplicate role {p.role!r}")
                roles.add(p.role)
        return self

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


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One Modbus read request that serves several points."""

    function: Function
    address: int
    count: int
    points: tuple[Point, ...]


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
        pts.sort(key=lambda p: (p.address, p.count))
        start = pts[0].address
        end = start + pts[0].count
        group = [pts[0]]
        for p in pts[1:]:
            new_end = max(end, p.address + p.count)
            if p.address - end <= max_gap and new_end - start <= limit:
                end = new_end
                group.append(p)
                continue
            blocks.append(ReadBlock(function, start, end - start, tuple(group)))  # type: ignore[arg-type]
            start, end, group = p.address, p.address + p.count, [p]
        blocks.append(ReadBlock(function, start, end - start, tuple(group)))  # type: ignore[arg-type]
    return blocks


def decode_point(point: Point, raw: Sequence[int] | Sequence[bool]) -> Value:
    """Decode one point from its own registers/bits and scale it."""
    if point.function in BIT_FUNCTIONS:
        return bool(raw[0])
    value = decode(
        [int(r) for r in raw], point.type, byte_order=point.byte_order, word_order=point.word_order
    )
    return point.to_engineering(value)


def decode_block(block: ReadBlock, raw: Sequence[int] | Sequence[bool]) -> dict[str, Value]:
    """Engineering values of every point a read returned; non-finite floats become NaN."""
    out: dict[str, Value] = {}
    for p in block.points:
        i = p.address - block.address
        out[p.name] = decode_point(p, raw[i : i + p.count])
    return out


def encode_write(point: Point, value: float | bool | str) -> list[int] | bool:
    """Registers (or the coil state) that set `point` to `value`, after checking the range.

    Raises ValueError naming the point, the value and what is allowed.
    """
    if not point.writable:
        raise ValueError(f"point {point.name!r} is not writable")
    if point.function == "coil":
        return bool(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"point {point.name!r}: {value} is not a finite number")
        lo, hi = point.min, point.max
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError(
                f"point {point.name!r}: {value:g} {point.unit} outside the allowed range "
                f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            )
    raw = point.to_raw(value)
    return encode(
        raw,
        point.type,
        byte_order=point.byte_order,
        word_order=point.word_order,
        length=point.length,
    )


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
