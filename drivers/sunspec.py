"""SunSpec discovery: find the 'SunS' marker, walk the model chain, resolve model-relative points.

A SunSpec device (inverters, batteries, meters) publishes a chain of models in
holding registers: the two-register marker 0x5375 0x6E53 ('SunS') at a base
address (40000, 0 or 50000), then for each model its id and length `L`
followed by `L` data registers, ending with id 0xFFFF. A profile names points
by model id and offset; `discover()` reads the chain once and
`Profile.resolved()` turns those into absolute addresses. A model whose
length differs from the published definition (an older draft, e.g. model 704
before its 2021 revision) is refused rather than misread.

Reference: SunSpec Alliance, "SunSpec Information Model Specification"
(v1.1) and the model definitions pysunspec2 ships (`drivers/sunspec_models.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from drivers import sunspec_models
from drivers.errors import ModbusIOError
from drivers.profile import Function, Profile

log = logging.getLogger("dr_agent.sunspec")

MARKER = (0x5375, 0x6E53)  # 'SunS'
END_ID = 0xFFFF
MAX_MODELS = 64


class ReadTransport(Protocol):
    async def read(
        self, unit: int, function: Function, address: int, count: int
    ) -> list[int] | list[bool]: ...


class SunSpecError(Exception):
    """The device shows no SunSpec marker, or its model chain is broken."""


class MissingModel(SunSpecError):
    """The device lacks a model the profile uses (a fallback profile may fit)."""


@dataclass(frozen=True)
class ModelHeader:
    id: int
    start: int  # address of the model's first data register (after ID and L)
    length: int


async def discover(
    transport: ReadTransport, unit: int, bases: tuple[int, ...] = (40000, 0, 50000)
) -> list[ModelHeader]:
    """The model chain of `unit`: probes each base for 'SunS', then walks id/length headers.

    Transport errors (timeouts, no connection) propagate to the caller; a base
    that answers with a Modbus exception or a wrong marker is skipped.
    """
    tried = []
    for base in bases:
        try:
            marker = await transport.read(unit, "holding_register", base, 2)
        except ModbusIOError as exc:
            if exc.exception_code is None:
                raise
            tried.append(f"{base}: exception {exc.exception_code}")
            continue
        if tuple(int(r) for r in marker) != MARKER:
            tried.append(f"{base}: no marker")
            continue
        return await _walk(transport, unit, base + 2)
    raise SunSpecError(f"unit {unit}: no SunSpec marker ({'; '.join(tried)})")


async def _walk(transport: ReadTransport, unit: int, addr: int) -> list[ModelHeader]:
    chain: list[ModelHeader] = []
    for _ in range(MAX_MODELS):
        head = [int(r) for r in await transport.read(unit, "holding_register", addr, 2)]
        model_id, length = head[0], head[1]
        if model_id == END_ID:
            log.info("unit=%d event=sunspec_discovered models=%s", unit, ",".join(str(m.id) for m in chain))
            return chain
        chain.append(ModelHeader(model_id, addr + 2, length))
        addr += 2 + length
        if addr > 0xFFFF:
            break
    raise SunSpecError(f"unit {unit}: SunSpec chain has no end marker within {MAX_MODELS} models")


def model_starts(chain: list[ModelHeader]) -> dict[int, int]:
    """Model id -> first data register; the first instance wins when a model repeats."""
    out: dict[int, int] = {}
    for m in chain:
        out.setdefault(m.id, m.start)
    return out


def check_chain(profile: Profile, chain: list[ModelHeader]) -> None:
    """Raise SunSpecError when a model the profile uses is absent or not laid out as published."""
    lengths: dict[int, int] = {}
    for m in chain:
        lengths.setdefault(m.id, m.length)
    for mid in sorted({p.model for p in profile.points if p.model is not None}):
        if mid not in lengths:
            raise MissingModel(f"device has no SunSpec model {mid}")
        d = sunspec_models.model(mid)
        have = lengths[mid]
        if have != d.length if d.fixed else have < d.length:
            raise SunSpecError(
                f"SunSpec model {mid} ({d.name}) has length {have}, the published definition {d.length}: "
                "not laid out as published (an older draft?), refusing to map it"
            )


def layout(models: list[int], base: int = 40000) -> tuple[list[int], list[ModelHeader]]:
    """Registers of a chain with empty models (for simulators): the marker, headers, end; and the chain."""
    regs = list(MARKER)
    chain = []
    addr = base + 2
    for mid in models:
        try:
            length = sunspec_models.model(mid).length
        except KeyError as exc:
            raise ValueError(str(exc.args[0])) from None
        regs += [mid, length] + [0] * length
        chain.append(ModelHeader(mid, addr + 2, length))
        addr += 2 + length
    regs += [END_ID, 0]
    return regs, chain
