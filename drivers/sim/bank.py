"""A simulated device's register memory, laid out by the same profile the driver reads.

Physics models set and get points by name or role in engineering units; the
bank encodes them with the profile's data type, byte/word order, scale and
scale factor, so the driver's decoding is exercised for real. A SunSpec
profile is served as a real SunSpec chain ('SunS' marker, model headers, end
marker) so the driver's discovery runs too. Writes from a Modbus client land
here and are reported to the model through `on_write`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from drivers.codec import Value, encode
from drivers.profile import BIT_FUNCTIONS, Function, Point, Profile, decode_raw
from drivers.sunspec import layout

WriteHook = Callable[[str, Value], None]

#: Scale factors the SunSpec simulator serves (chosen so 100 kW fits an int16 and negatives are exercised).
SUNSPEC_SIM_SF: dict[str, int] = {
    "A_SF": -1,
    "V_SF": -1,
    "W_SF": 1,
    "Hz_SF": -2,
    "VA_SF": 1,
    "VAr_SF": 1,
    "PF_SF": -2,
    "WH_SF": 0,
    "WSet_SF": 1,
    "WSetPct_SF": -1,
    "ChaState_SF": -1,
    "WChaMax_SF": 1,
    "MinRsvPct_SF": 0,
}


class RegisterBank:
    def __init__(self, profile: Profile, *, register_offset: int = 0, sunspec_base: int = 40000) -> None:
        self.source_profile = profile
        self.sunspec_models: list[int] = []
        header: list[int] = []
        if profile.needs_resolution:
            self.sunspec_models = sorted({p.model for p in profile.points if p.model is not None})
            if 1 not in self.sunspec_models:
                self.sunspec_models.insert(0, 1)  # every SunSpec device starts with the common model
            header, chain = layout(self.sunspec_models, sunspec_base)
            profile = profile.resolved({m.id: m.start for m in chain})
        else:
            profile = profile.shifted(register_offset)
        self.profile = profile
        size: dict[str, int] = {
            f: 1 for f in ("coil", "discrete_input", "input_register", "holding_register")
        }
        for p in profile.points:
            size[p.function] = max(size[p.function], p.addr + p.count + 1)
        if header:
            size["holding_register"] = max(size["holding_register"], sunspec_base + len(header) + 1)
        self.bits: dict[str, list[bool]] = {
            "coil": [False] * size["coil"],
            "discrete_input": [False] * size["discrete_input"],
        }
        self.regs: dict[str, list[int]] = {
            "input_register": [0] * size["input_register"],
            "holding_register": [0] * size["holding_register"],
        }
        if header:
            self.regs["holding_register"][sunspec_base : sunspec_base + len(header)] = header
        self._points = {p.name: p for p in profile.points}
        self._by_role = {p.role: p for p in profile.points if p.role}
        self.on_write: WriteHook | None = None
        #: When set, every request is answered with this Modbus exception code.
        self.fail_with: int | None = None
        #: When True the device is "off the bus": requests get no answer at all.
        self.offline = False
        #: When True, a read touching any register the profile does not map answers exception 02
        #: (a SunSpec chain counts as mapped from its marker to its end), as strict devices do.
        self.strict = False
        self._mapped: dict[str, set[int]] = {f: set() for f in size}
        for p in profile.points:
            self._mapped[p.function].update(range(p.addr, p.addr + p.count))
        if header:
            self._mapped["holding_register"].update(range(sunspec_base, sunspec_base + len(header)))
        #: Client writes received (requests, not registers): a rehearsal must leave this at 0.
        self.writes = 0
        for name in profile.scale_factor_names():
            self.set(name, SUNSPEC_SIM_SF.get(name, 0))
        if self.has("frequency_hz"):
            self.set("frequency_hz", 50.0)  # a live grid, so plausibility checks pass from the start
        for p in profile.points:
            # Zeroed memory would be implausible for points whose range excludes 0 (SunSpec St, ChaSt).
            if p.valid is not None and p.function not in BIT_FUNCTIONS and p.type != "string":
                v = self.get(p.name)
                if isinstance(v, (int, float)) and not p.valid[0] <= v <= p.valid[1]:
                    self.set(p.name, p.valid[0])

    def _point(self, key: str) -> Point:
        p = self._by_role.get(key) or self._points.get(key)
        if p is None:
            raise KeyError(f"{self.profile.name}: no point or role {key!r}")
        return p

    def has(self, key: str) -> bool:
        return key in self._by_role or key in self._points

    def point(self, key: str) -> Point:
        return self._point(key)

    def _sf(self, p: Point) -> int:
        if p.scale_factor is None:
            return 0
        sf = self.get_raw(p.scale_factor)
        assert isinstance(sf, int)
        return sf

    def set(self, key: str, value: Value) -> None:
        """Set a point (by role or name) in engineering units, as the device would."""
        p = self._point(key)
        if p.function in BIT_FUNCTIONS:
            self.bits[p.function][p.addr] = bool(value)
            return
        raw = p.to_raw(value, self._sf(p), self._ref(p)) if not isinstance(value, (str, bool)) else value
        self.set_raw(p.name, raw)

    def set_raw(self, key: str, raw: Value) -> None:
        """Set a point's raw (unscaled) value, e.g. a 'no data' marker or a scale factor."""
        p = self._point(key)
        words = encode(raw, p.type, byte_order=p.byte_order, word_order=p.word_order, length=p.length)
        self.regs[p.function][p.addr : p.addr + len(words)] = words

    def get_raw(self, key: str) -> Value:
        p = self._point(key)
        if p.function in BIT_FUNCTIONS:
            return self.bits[p.function][p.addr]
        return decode_raw(p, self.regs[p.function][p.addr : p.addr + p.count])

    def get(self, key: str) -> Value:
        p = self._point(key)
        return p.to_engineering(self.get_raw(key), self._sf(p), self._ref(p))

    def _ref(self, p: Point) -> float | None:
        if p.percent_of is None:
            return None
        v = self.get(p.percent_of)
        return float(v) if isinstance(v, (int, float)) else None

    def read(self, function: Function, address: int, count: int) -> list[int] | list[bool]:
        if self.strict and not self._mapped[function].issuperset(range(address, address + count)):
            raise IndexError("illegal data address")
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
        self.writes += 1
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
            if p.function == function and p.addr < end and p.addr + p.count > address:
                if self.on_write:
                    self.on_write(p.role or p.name, self.get(p.name))
