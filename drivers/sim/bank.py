"""A simulated device's register memory, laid out by the same profile the driver reads.

Physics models set and get points by name in engineering units; the bank
encodes them with the profile's data type, byte/word order and scale, so the
driver's decoding is exercised for real. Writes from a Modbus client land
here and are reported to the model through `on_write`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from drivers.codec import Value, encode
from drivers.profile import BIT_FUNCTIONS, Function, Point, Profile, decode_point

WriteHook = Callable[[str, Value], None]


class RegisterBank:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        size: dict[str, int] = {
            f: 1 for f in ("coil", "discrete_input", "input_register", "holding_register")
        }
        for p in profile.points:
            size[p.function] = max(size[p.function], p.address + p.count + 1)
        self.bits: dict[str, list[bool]] = {
            "coil": [False] * size["coil"],
            "discrete_input": [False] * size["discrete_input"],
        }
        self.regs: dict[str, list[int]] = {
            "input_register": [0] * size["input_register"],
            "holding_register": [0] * size["holding_register"],
        }
        self._points = {p.name: p for p in profile.points}
        self._by_role = {p.role: p for p in profile.points if p.role}
        self.on_write: WriteHook | None = None
        #: When set, every request is answered with this Modbus exception code.
        self.fail_with: int | None = None

    def _point(self, key: str) -> Point:
        p = self._by_role.get(key) or self._points.get(key)
        if p is None:
            raise KeyError(f"{self.profile.name}: no point or role {key!r}")
        return p

    def has(self, key: str) -> bool:
        return key in self._by_role or key in self._points

    def set(self, key: str, value: Value) -> None:
        """Set a point (by role or name) in engineering units, as the device would."""
        p = self._point(key)
        if p.function in BIT_FUNCTIONS:
            self.bits[p.function][p.address] = bool(value)
            return
        raw = p.to_raw(value) if not isinstance(value, (str, bool)) else value
        words = encode(raw, p.type, byte_order=p.byte_order, word_order=p.word_order, length=p.length)
        self.regs[p.function][p.address : p.address + len(words)] = words

    def get(self, key: str) -> Value:
        p = self._point(key)
        if p.function in BIT_FUNCTIONS:
            return self.bits[p.function][p.address]
        return decode_point(p, self.regs[p.function][p.address : p.address + p.count])

    def read(self, function: Function, address: int, count: int) -> list[int] | list[bool]:
        if function in BIT_FUNCTIONS:
            table_b = self.bits[function]
            if address + count > len(table_b):
                raise IndexError("illegal data address")
            return table_b[address : address + count]
        table = self.regs[function]
        if address + count > len(table):
            raise IndexError("illegal data address")
        return table[address : address + count]

    def write(self, function: Function, address: int, values: Sequence[int] | Sequence[bool]) -> None:
        """Apply a client's write, then tell the model which points changed."""
        if function == "coil":
            table_b = self.bits["coil"]
            if address + len(values) > len(table_b):
                raise IndexError("illegal data address")
            table_b[address : address + len(values)] = [bool(v) for v in values]
        elif function == "holding_register":
            table = self.regs["holding_register"]
            if address + len(values) > len(table):
                raise IndexError("illegal data address")
            table[address : address + len(values)] = [int(v) for v in values]
        else:
            raise PermissionError(f"{function} is read-only")
        end = address + len(values)
        for p in self.profile.points:
            if p.function == function and p.address < end and p.address + p.count > address:
                if self.on_write:
                    self.on_write(p.role or p.name, self.get(p.name))
