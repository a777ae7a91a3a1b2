"""A SunSpec battery laid out by pysunspec2 from the published model definitions, not from our profiles.

The register image is what `sunspec2.device.Model.get_mb()` produces for the
chain (common model 1, inverter 103, storage 124, DER AC controls 704 by
default), so a profile whose offsets, types or enums drift from the published
models is caught by tests against it. Points are set and read by SunSpec name
through pysunspec2 (`set("124", "ChaState", 800)`, raw values).

`strict=True` answers exception 02 (illegal data address) for any register
outside the chain and for writes to read-only points, as strict devices do.
The battery follows model 704 WSet (WSetEna 1, WSetMod 1 = W) or, without
704, model 124 (StorCtl_Mod discharge bit, OutWRte % of WChaMax), and reverts
per WSetEnaRvrt/WSetRvrtTms when the set-point is not renewed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sunspec2.device as ssd

from drivers.profile import Function

MARKER = (0x5375, 0x6E53)
END = (0xFFFF, 0)


class PublishedSunSpecBattery:
    """Holding registers of a SunSpec battery inverter; served by `drivers.sim.server.SimServer`."""

    def __init__(
        self,
        models: Sequence[int] = (1, 103, 124, 704),
        *,
        base: int = 40000,
        strict: bool = False,
        soc_pct: float = 80.0,
        max_w: float = 50_000.0,
    ) -> None:
        self.base = base
        self.strict = strict
        self.offline = False
        self.fail_with: int | None = None
        self.max_w = max_w
        self.models: dict[int, Any] = {}
        self.starts: dict[int, int] = {}  # model id -> address of its ID word
        addr = base + 2
        for mid in models:
            m = ssd.Model(mid)
            self.models[mid] = m
            self.starts[mid] = addr
            addr += len(m.get_mb()) // 2
        self.end = addr + 2  # one past the end marker
        self.bits: dict[str, list[bool]] = {"coil": [False], "discrete_input": [False]}
        self.regs: dict[str, list[int]] = {"input_register": [0], "holding_register": [0] * self.end}
        self.writes: list[tuple[int, list[int]]] = []
        self.sets: dict[str, float] = {}
        self._defaults(soc_pct)
        self._render()

    # -- points by SunSpec name (raw values) ------------------------------------------

    def _point(self, mid: int, name: str) -> Any:
        m = self.models[mid]
        if "." in name:
            group, pname = name.split(".", 1)
            return m.groups[group].points[pname]
        return m.points[name]

    def set(self, mid: int, name: str, raw: int | str | None) -> None:
        self._point(mid, name).value = raw
        self._render()

    def get(self, mid: int, name: str) -> Any:
        return self._point(mid, name).value

    def address(self, mid: int, name: str) -> int:
        """Absolute address of a point, from pysunspec2's own offsets."""
        p = self._point(mid, name)
        return int(self.starts[mid] + p.offset)

    def _defaults(self, soc_pct: float) -> None:
        s = self.set_quiet
        s(1, "Mn", "Published")
        s(1, "Md", "SunSpec battery")
        s(1, "SN", "PUB-0001")
        if 103 in self.models:
            for name, v in (("A_SF", -1), ("V_SF", -1), ("W_SF", 1), ("Hz_SF", -2), ("WH_SF", 0)):
                s(103, name, v)
            s(103, "Hz", 5000)
            s(103, "W", 0)
            s(103, "A", 0)
            s(103, "WH", 1_000_000)
            s(103, "St", 4)  # MPPT / operating
        if 124 in self.models:
            for name, v in (("WChaMax_SF", 1), ("ChaState_SF", -1), ("MinRsvPct_SF", 0), ("InOutWRte_SF", 0)):
                s(124, name, v)
            s(124, "WChaMax", int(self.max_w / 10))
            s(124, "ChaState", round(soc_pct * 10))
            s(124, "MinRsvPct", 10)
            s(124, "ChaSt", 6)  # holding
            s(124, "StorCtl_Mod", 0)
            s(124, "OutWRte", 0)
        if 704 in self.models:
            s(704, "WSet_SF", 1)
            s(704, "WSetPct_SF", -1)
            s(704, "WSetEna", 0)
            s(704, "WSetMod", 1)
            s(704, "WSet", 0)
            s(704, "WSetRvrt", 0)
            s(704, "WSetEnaRvrt", 0)
            s(704, "WSetRvrtTms", 0)
            s(704, "WSetRvrtRem", 0)
            s(704, "PFWInj.PF", 950)  # a power factor where old drafts put WSet_SF

    def set_quiet(self, mid: int, name: str, raw: int | str | None) -> None:
        self._point(mid, name).value = raw

    def _render(self) -> None:
        table = self.regs["holding_register"]
        table[self.base : self.base + 2] = list(MARKER)
        for mid, m in self.models.items():
            b = m.get_mb()
            regs = [int.from_bytes(b[i : i + 2], "big") for i in range(0, len(b), 2)]
            table[self.starts[mid] : self.starts[mid] + len(regs)] = regs
        table[self.end - 2 : self.end] = list(END)

    # -- the physics ------------------------------------------------------------------

    def setpoint_w(self) -> float:
        """What the inverter is commanded to inject, W (positive = discharge)."""
        if 704 in self.models and self.get(704, "WSetEna") == 1:
            sf = self.get(704, "WSet_SF") or 0
            w = float(self.get(704, "WSet") or 0) * 10.0**sf
            if self.get(704, "WSetMod") == 0:
                w = w / 100.0 * self.max_w  # WSet as % of WMax
            return w
        if 124 in self.models and (self.get(124, "StorCtl_Mod") or 0) & 0b10:
            sf = self.get(124, "InOutWRte_SF") or 0
            return float(self.get(124, "OutWRte") or 0) * 10.0**sf / 100.0 * self.max_w
        return 0.0

    def step(self, dt_s: float) -> None:
        """Follow the set-point immediately; count the reversion timer down."""
        if 704 in self.models and self.get(704, "WSetEnaRvrt") == 1 and self.get(704, "WSetEna") == 1:
            rem = float(self.get(704, "WSetRvrtRem") or 0) - dt_s
            if rem <= 0:
                self.set_quiet(704, "WSet", self.get(704, "WSetRvrt"))
                rem = 0
            self.set_quiet(704, "WSetRvrtRem", int(rem))
        self._follow()
        self._render()

    def _follow(self) -> None:
        if 103 in self.models:
            sf = self.get(103, "W_SF") or 0
            self.set_quiet(103, "W", round(max(-self.max_w, min(self.max_w, self.setpoint_w())) / 10.0**sf))

    # -- the Modbus side --------------------------------------------------------------

    def _mapped(self, address: int, count: int) -> bool:
        return self.base <= address and address + count <= self.end

    def read(self, function: Function, address: int, count: int) -> list[int] | list[bool]:
        if function != "holding_register":
            raise IndexError("illegal data address")
        table = self.regs["holding_register"]
        if self.strict and not self._mapped(address, count):
            raise IndexError("illegal data address")
        if address + count > len(table):
            raise IndexError("illegal data address")
        return table[address : address + count]

    def _read_only(self, address: int, count: int) -> bool:
        for mid, m in self.models.items():
            start = self.starts[mid]
            for p in list(m.points.values()) + [q for g in m.groups.values() for q in g.points.values()]:
                a = start + p.offset
                if a < address + count and a + p.len > address and p.pdef.get("access", "R") != "RW":
                    return True
        return False

    def write(self, function: Function, address: int, values: Sequence[int] | Sequence[bool]) -> None:
        if function != "holding_register":
            raise PermissionError(f"{function} is read-only")
        count = len(values)
        if not self._mapped(address, count) or (self.strict and self._read_only(address, count)):
            raise IndexError("illegal data address")
        table = self.regs["holding_register"]
        table[address : address + count] = [int(v) for v in values]
        self.writes.append((address, [int(v) for v in values]))
        for mid, m in self.models.items():
            start = self.starts[mid]
            n = len(m.get_mb()) // 2
            if start < address + count and start + n > address:
                m.set_mb(b"".join(r.to_bytes(2, "big") for r in table[start : start + n]))
                if mid == 704 and any(
                    self.address(704, "WSetRvrtTms") <= a < self.address(704, "WSetRvrtTms") + 2
                    or self.address(704, "WSet") <= a < self.address(704, "WSet") + 2
                    for a in range(address, address + count)
                ):
                    # A renewed set-point (or a new timeout) restarts the reversion timer.
                    self.set_quiet(704, "WSetRvrtRem", self.get(704, "WSetRvrtTms"))
        self._follow()
        self._render()
