"""The published SunSpec model definitions, as shipped by `pysunspec2` (sunspec2/models/json).

SunSpec profiles name their points by model id and SunSpec point name; the
offset, data type, size, scale factor and access come from here, never from
hand-written numbers. Offsets count from the model's first data register
(after its ID and L header words). Points of groups that occur exactly once
(model 704's PFWInj, ...) are named `Group.Point`; repeating groups are not
addressed by profiles.

Reference: SunSpec Alliance model definitions (github.com/sunspec/models),
the same JSON files pysunspec2 1.3 carries.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from dataclasses import dataclass
from typing import Any

#: SunSpec point types -> codec data types (enums, bitfields and accumulators are unsigned integers).
TYPE_MAP: dict[str, str] = {
    "int16": "int16",
    "uint16": "uint16",
    "count": "uint16",
    "acc16": "uint16",
    "enum16": "uint16",
    "bitfield16": "uint16",
    "pad": "uint16",
    "sunssf": "int16",
    "int32": "int32",
    "uint32": "uint32",
    "acc32": "uint32",
    "enum32": "uint32",
    "bitfield32": "uint32",
    "ipaddr": "uint32",
    "int64": "int64",
    "acc64": "int64",
    "float32": "float32",
    "float64": "float64",
    "string": "string",
}

#: Raw values meaning "not implemented", by SunSpec type (SunSpec Information Model Specification).
UNIMPLEMENTED: dict[str, tuple[int, ...]] = {
    "int16": (-0x8000,),
    "sunssf": (-0x8000,),
    "uint16": (0xFFFF,),
    "enum16": (0xFFFF,),
    "bitfield16": (0xFFFF,),
    "count": (0xFFFF,),
    "int32": (-0x80000000,),
    "uint32": (0xFFFFFFFF,),
    "enum32": (0xFFFFFFFF,),
    "bitfield32": (0xFFFFFFFF,),
    "acc32": (0,),
    "acc16": (0,),
    "int64": (-0x8000000000000000,),
}


@dataclass(frozen=True)
class PointDef:
    """One point of a published model."""

    name: str  # "WSet", or "PFWInj.PF" inside a group that occurs once
    offset: int  # registers after the model's ID and L words
    sunspec_type: str
    size: int
    sf: str | None
    access: str  # "R" or "RW"
    units: str
    symbols: dict[str, int]

    @property
    def type(self) -> str:
        return TYPE_MAP[self.sunspec_type]


@dataclass(frozen=True)
class ModelDef:
    id: int
    name: str
    length: int  # L of the fixed part (every group counted once)
    fixed: bool  # no repeating groups: a device's L must equal `length`
    points: dict[str, PointDef]

    def point(self, name: str) -> PointDef:
        try:
            return self.points[name]
        except KeyError:
            raise KeyError(f"SunSpec model {self.id} ({self.name}) has no point {name!r}") from None


def _json(model_id: int) -> dict[str, Any]:
    base = importlib.resources.files("sunspec2") / "models" / "json" / f"model_{model_id}.json"
    try:
        text = base.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyError(f"SunSpec model {model_id} is not among the published definitions") from None
    data: dict[str, Any] = json.loads(text)
    return data


@functools.cache
def model(model_id: int) -> ModelDef:
    """The published definition of `model_id` (KeyError if SunSpec publishes none)."""
    group = _json(model_id)["group"]
    points: dict[str, PointDef] = {}
    fixed = True
    offset = -2  # ID and L come first; offsets count from the first data register

    def add(prefix: str, pts: list[dict[str, Any]]) -> None:
        nonlocal offset
        for p in pts:
            name = prefix + p["name"]
            if offset >= 0:
                symbols = {s["name"]: int(s["value"]) for s in p.get("symbols", [])}
                points[name] = PointDef(
                    name,
                    offset,
                    p["type"],
                    int(p["size"]),
                    p.get("sf"),
                    p.get("access", "R"),
                    str(p.get("units", "")),
                    symbols,
                )
            offset += int(p["size"])

    add("", group["points"])
    for g in group.get("groups", []):
        count = g.get("count", 1)
        if count != 1:
            fixed = False
        add(f"{g['name']}.", g["points"])
    return ModelDef(model_id, group["name"], offset, fixed, points)
