"""Every shipped profile against its simulator, over real Modbus TCP, RTU over TCP and a serial link.

All profiles sit on one endpoint as different unit ids (a shared bus). The
serial link is a pseudo-terminal pair made by socat carrying real RTU frames
(CRC, inter-frame gaps) between the pymodbus serial server and our client.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.codec import Value
from drivers.device import Device
from drivers.modbus import ModbusTransport
from drivers.profile import Point, load_profile, shipped_profiles
from drivers.registry import kinds
from drivers.sim.bank import RegisterBank
from drivers.sim.server import SimServer

# Every test here on both loops (tests/conftest.py): the transport is the part of the agent that
# meets the loop's own transport classes, and uvloop's are not asyncio's.
pytestmark = [pytest.mark.integration, pytest.mark.each_loop]

# Raw test values by type: signed types get negatives, wide types values that need every register.
RAW: dict[str, Value] = {
    "int16": -7,
    "uint16": 7,
    "int32": -70000,
    "uint32": 70000,
    "int64": -(2**40) - 3,
    "float32": 12.5,
    "float64": -1234.0625,
    "string": "dr-agent",
    "bool": True,
}

KIND_CONFIG: dict[str, dict[str, Any]] = {"storage": {"capacity_kwh": 100, "max_discharge_kw": 50}}


@contextlib.asynccontextmanager
async def pty_pair(tmp: Path) -> AsyncIterator[tuple[str, str]]:
    """Two linked pseudo-terminals (socat), like the two ends of an RS-485 adapter pair."""
    socat = shutil.which("socat")
    if socat is None:
        pytest.fail("socat is not installed: apt-get install socat")
    a, b = tmp / "ttyA", tmp / "ttyB"
    proc = await asyncio.create_subprocess_exec(
        socat,
        f"pty,raw,echo=0,link={a}",
        f"pty,raw,echo=0,link={b}",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while not (a.exists() and b.exists()):
            if time.monotonic() > deadline or proc.returncode is not None:
                pytest.fail("socat did not create the pty pair")
            await asyncio.sleep(0.02)
        yield str(a), str(b)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 5)


def expected_values(bank: RegisterBank) -> dict[str, Value]:
    """Fill every readable point with a test value; return the engineering values the driver must see."""
    p = bank.profile
    sfs = p.scale_factor_names()
    for q in p.points:
        if q.access == "w" or q.name in sfs:
            continue
        if q.type == "bool":
            bank.set(q.name, True)
        elif q.valid is not None:
            bank.set(q.name, (q.valid[0] + q.valid[1]) / 2)
        elif q.min is not None and q.max is not None and q.type not in ("float32", "float64"):
            bank.set(q.name, round(((q.min + q.max) / 2) / q.scale) * q.scale)
        elif q.type == "string":
            bank.set_raw(q.name, str(RAW["string"])[: 2 * (q.length or 1)])
        else:
            bank.set_raw(q.name, RAW[q.type])
    return {q.name: bank.get(q.name) for q in p.points if q.access != "w"}


def resolution(q: Point, bank: RegisterBank) -> float:
    sf = bank.get_raw(q.scale_factor) if q.scale_factor else 0
    ref = bank.get(q.percent_of) if q.percent_of else None  # a percentage of another point
    return q.resolution(int(sf), float(ref) if isinstance(ref, (int, float)) else None) or 0.5


def write_value(q: Point, step: float) -> float:
    lo = q.min if q.min is not None else 0.0
    hi = q.max if q.max is not None else lo + 100
    return round((lo + (hi - lo) / 3) / step) * step


async def exercise(transport: ModbusTransport, units: dict[int, tuple[str, RegisterBank]]) -> list[str]:
    problems: list[str] = []
    registry = kinds()
    for unit, (name, bank) in units.items():
        prof = load_profile(name)
        expected = expected_values(bank)
        k = registry[prof.kind]
        cfg = k.config.model_validate(
            {
                "name": name,
                "kind": prof.kind,
                "endpoint": "ep",
                "unit_id": unit,
                "profile": name,
                **KIND_CONFIG.get(prof.kind, {}),
            }
        )
        dev: Device = k.device(cfg, transport, prof)
        if not await dev.poll():
            problems.append(f"{name}: poll failed: {dev.health.last_error}")
            continue
        for point, value in expected.items():
            got = dev.values.get(point)
            ok = got == pytest.approx(value, rel=1e-6) if isinstance(value, float) else got == value
            if not ok:
                problems.append(f"{name}.{point}: read {got!r}, simulator holds {value!r}")
        for q in dev.profile.points:
            if q.access != "rw" or q.function == "coil":
                continue
            step = resolution(q, bank)
            v = write_value(q, step)
            try:
                back = await dev.write_point(q, v)
            except Exception as exc:
                problems.append(f"{name}.{q.name}: write {v} failed: {exc}")
                continue
            if back != pytest.approx(v, abs=step / 2 + 1e-6) or bank.get(q.name) != pytest.approx(
                back, abs=1e-6
            ):
                problems.append(
                    f"{name}.{q.name}: wrote {v}, read back {back}, simulator has {bank.get(q.name)}"
                )
        for q in dev.profile.points:
            if q.function == "coil" and q.writable:
                await dev.write_point(q, True)
                if bank.get(q.name) is not True:
                    problems.append(f"{name}.{q.name}: coil write did not land")
    return problems


def banks() -> dict[int, tuple[str, RegisterBank]]:
    return {i + 1: (name, RegisterBank(load_profile(name))) for i, name in enumerate(shipped_profiles())}


@pytest.mark.parametrize("protocol", ["tcp", "rtu_over_tcp"])
async def test_every_profile_over_tcp(protocol: str) -> None:
    units = banks()
    server = SimServer({u: b for u, (_n, b) in units.items()}, protocol=protocol)
    port = await server.start()
    transport = ModbusTransport("ep", protocol=protocol, host="127.0.0.1", port=port, timeout_s=1.0)  # type: ignore[arg-type]
    try:
        problems = await exercise(transport, units)
    finally:
        await transport.close()
        await server.stop()
    assert problems == []
    assert transport.stats.failures == 0


async def test_every_profile_over_a_serial_rtu_link(tmp_path: Path) -> None:
    units = banks()
    async with pty_pair(tmp_path) as (server_end, client_end):
        server = SimServer(
            {u: b for u, (_n, b) in units.items()}, protocol="rtu", serial_port=server_end, baudrate=19200
        )
        await server.start()
        transport = ModbusTransport(
            "bus", protocol="rtu", serial_port=client_end, baudrate=19200, timeout_s=1.0
        )
        try:
            problems = await exercise(transport, units)
        finally:
            await transport.close()
            await server.stop()
    assert problems == []
    assert transport.stats.failures == 0
    assert transport.inter_frame_delay_s == pytest.approx(3.5 * 11 / 19200)
