"""Encode and decode Modbus register values: every data type, byte and word order.

Modbus moves 16-bit registers. Devices pack wider values across several
registers, and vendors disagree about order: `word_order="little"` means the
least significant register comes first (the "swapped words" float32 many
meters use); `byte_order="little"` swaps the two bytes inside each register.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Literal

DataType = Literal["bool", "int16", "uint16", "int32", "uint32", "int64", "float32", "float64", "string"]
Order = Literal["big", "little"]

# struct format (big-endian) and register count for the numeric types.
_NUMERIC: dict[str, tuple[str, int]] = {
    "int16": (">h", 1),
    "uint16": (">H", 1),
    "int32": (">i", 2),
    "uint32": (">I", 2),
    "int64": (">q", 4),
    "float32": (">f", 2),
    "float64": (">d", 4),
}

#: struct code (no byte order) of each numeric type, for formats that decode several values at once.
NUMERIC_CODES: dict[str, str] = {t: fmt[1:] for t, (fmt, _n) in _NUMERIC.items()}

Value = bool | int | float | str


def register_count(dtype: DataType, length: int | None = None) -> int:
    """Registers one value of `dtype` occupies (`length` registers for strings)."""
    if dtype == "bool":
        return 1
    if dtype == "string":
        if not length or length < 1:
            raise ValueError("a string point needs length >= 1 (registers)")
        return length
    return _NUMERIC[dtype][1]


def _to_bytes(registers: Sequence[int], byte_order: Order, word_order: Order) -> bytes:
    words = list(registers)
    if word_order == "little":
        words.reverse()
    raw = b"".join(int(w & 0xFFFF).to_bytes(2, "big") for w in words)
    if byte_order == "little":
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    return raw


def _from_bytes(raw: bytes, byte_order: Order, word_order: Order) -> list[int]:
    if byte_order == "little":
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if word_order == "little":
        words.reverse()
    return words


def decode(
    registers: Sequence[int],
    dtype: DataType,
    *,
    byte_order: Order = "big",
    word_order: Order = "big",
) -> Value:
    """Decode raw registers into a Python value (no scaling). Raises ValueError for too few registers."""
    if not registers:  # a truncated response: say so rather than IndexError
        raise ValueError(f"{dtype} needs at least one register, got none")
    if dtype == "bool":
        return bool(registers[0])
    if dtype == "string":
        # Strings are byte streams: word order does not apply, byte order does.
        raw = _to_bytes(registers, byte_order, "big")
        return raw.split(b"\x00", 1)[0].decode("ascii", errors="replace").strip()
    fmt, count = _NUMERIC[dtype]
    if len(registers) < count:
        raise ValueError(f"{dtype} needs {count} registers, got {len(registers)}")
    value: Value = struct.unpack(fmt, _to_bytes(registers[:count], byte_order, word_order))[0]
    return value


def encode(
    value: Value,
    dtype: DataType,
    *,
    byte_order: Order = "big",
    word_order: Order = "big",
    length: int | None = None,
) -> list[int]:
    """Encode a Python value into registers (no scaling). Raises ValueError if it cannot fit."""
    if dtype == "bool":
        return [1 if value else 0]
    if dtype == "string":
        n = register_count("string", length)
        data = str(value).encode("ascii")
        if len(data) > 2 * n:
            raise ValueError(f"string of {len(data)} bytes does not fit {n} registers")
        return _from_bytes(data.ljust(2 * n, b"\x00"), byte_order, "big")
    fmt, _count = _NUMERIC[dtype]
    if dtype.startswith("float"):
        number: float | int = float(value)
        if dtype == "float32" and math.isfinite(number) and abs(number) > 3.4028234663852886e38:
            raise ValueError(f"{value} does not fit float32")
    else:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value} does not fit {dtype}")
        if isinstance(value, float) and not value.is_integer():
            value = round(value)
        number = int(value)
    try:
        raw = struct.pack(fmt, number)
    except struct.error as exc:
        raise ValueError(f"{value} does not fit {dtype}") from exc
    return _from_bytes(raw, byte_order, word_order)
