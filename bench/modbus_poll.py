"""Poll N simulated Modbus TCP devices at 1 Hz and measure what the agent's poller costs.

The simulators run in a child process (so their CPU is not counted); this
process runs the daemon's own poll path (`Agent._poll_endpoint` over real
`ModbusTransport`s and `Device`s) for `--duration` seconds and reports
requests/s, registers/s, the agent's CPU share of one core, and how much read
coalescing saves against one request per point.

    python bench/modbus_poll.py --devices 100 --points 20 --json
    python bench/modbus_poll.py --devices 100 --points 20 --no-coalesce   # one request per point
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from drivers.device import Device
from drivers.modbus import ModbusTransport
from drivers.profile import Profile, load_profile
from drivers.registry import kinds

TYPES = ("float32", "int16", "uint32", "float32", "uint16")


def synthetic_profile(points: int, coalesce: bool) -> dict[str, Any]:
    """A meter-like map: mixed types, small holes between points, like a real vendor table."""
    pts: list[dict[str, Any]] = []
    addr = 0
    for i in range(points):
        t = TYPES[i % len(TYPES)]
        p: dict[str, Any] = {"name": f"p{i}", "function": "input_register", "address": addr, "type": t}
        if i == 0:
            p.update(role="power_kw", scale=0.001, unit="kW")
        pts.append(p)
        addr += (2 if t in ("float32", "uint32") else 1) + (i % 3 == 2)  # a one-register hole now and then
    return {
        "version": 1,
        "name": "bench_meter",
        "kind": "meter",
        "source": "synthetic (bench/modbus_poll.py)",
        "max_block": 125 if coalesce else 2,
        "max_gap": 8 if coalesce else 0,
        "points": pts,
    }


# -- the simulator child ----------------------------------------------------------


async def serve(profile_path: str, ports: list[int], units: int) -> None:
    from drivers.sim.bank import RegisterBank
    from drivers.sim.server import SimServer

    prof = load_profile(profile_path)
    servers = []
    for port in ports:
        banks = {}
        for u in range(1, units + 1):
            bank = RegisterBank(prof)
            for i, q in enumerate(prof.points):
                bank.set(q.name, float(i + u) if q.type.startswith("float") else i + u)
            banks[u] = bank
        s = SimServer(banks, port=port)
        await s.start()
        servers.append(s)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for s in servers:
        await s.stop()


# -- the agent side -----------------------------------------------------------------


async def poll(args: argparse.Namespace, profile: Profile, ports: list[int]) -> dict[str, Any]:
    from agent.clock import SystemClock
    from agent.daemon import Agent

    meter = kinds()["meter"]
    transports = [
        ModbusTransport(f"ep{i}", host="127.0.0.1", port=port, timeout_s=args.timeout)
        for i, port in enumerate(ports)
    ]
    per_ep = args.devices // len(transports)
    groups: list[list[Device]] = []
    for i, t in enumerate(transports):
        n = per_ep + (1 if i < args.devices % len(transports) else 0)
        devs = []
        for u in range(1, n + 1):
            cfg = meter.config.model_validate(
                {"name": f"d{i}-{u}", "kind": "meter", "endpoint": t.name, "unit_id": u, "profile": "bench"}
            )
            devs.append(meter.device(cfg, t, profile))
        groups.append(devs)
    devices = [d for g in groups for d in g]
    fake_agent = SimpleNamespace(clock=SystemClock())

    async def cycle() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(Agent._poll_endpoint(fake_agent, g) for g in groups))  # type: ignore[arg-type]
        return time.perf_counter() - t0

    for _ in range(2):  # connect and warm up
        await cycle()
    req0 = sum(t.stats.requests for t in transports)
    fail0 = sum(t.stats.failures for t in transports)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    cycles, durations = 0, []
    next_at = time.perf_counter()
    while time.perf_counter() - wall0 < args.duration:
        durations.append(await cycle())
        cycles += 1
        next_at += args.period
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    requests = sum(t.stats.requests for t in transports) - req0
    failures = sum(t.stats.failures for t in transports) - fail0
    for t in transports:
        await t.close()
    regs_per_cycle = sum(b.count for d in devices for b in d._blocks)
    points_per_cycle = sum(d.points_per_poll for d in devices)
    ok = sum(1 for d in devices if d.health.available and d.values)
    return {
        "devices": len(devices),
        "points_per_device": args.points,
        "endpoints": len(transports),
        "coalesce": not args.no_coalesce,
        "duration_s": round(wall, 2),
        "cycles": cycles,
        "period_s": args.period,
        "requests_per_cycle": round(requests / cycles, 1),
        "points_per_cycle": points_per_cycle,
        "registers_per_cycle": regs_per_cycle,
        "coalescing_factor": round(points_per_cycle / (requests / cycles), 2),
        "requests_per_s": round(requests / wall, 1),
        "registers_per_s": round(regs_per_cycle * cycles / wall, 1),
        "points_per_s": round(points_per_cycle * cycles / wall, 1),
        "cpu_pct_one_core": round(cpu / wall * 100, 2),
        "cpu_ms_per_request": round(cpu / max(1, requests) * 1000, 4),
        "cycle_ms_p50": round(statistics.median(durations) * 1000, 1),
        "cycle_ms_max": round(max(durations) * 1000, 1),
        "failures": failures,
        "devices_ok": ok,
        "python": sys.version.split()[0],
    }


def free_ports(n: int) -> list[int]:
    from drivers.sim.server import free_port

    return [free_port() for _ in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=100, help="simulated devices (default 100)")
    ap.add_argument("--points", type=int, default=20, help="points per device (default 20)")
    ap.add_argument(
        "--endpoints", type=int, default=10, help="Modbus TCP endpoints (gateways) they share (default 10)"
    )
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    ap.add_argument("--period", type=float, default=1.0, help="poll period, s (default 1)")
    ap.add_argument("--timeout", type=float, default=1.0, help="request timeout, s")
    ap.add_argument("--no-coalesce", action="store_true", help="one request per point (the baseline)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--ports", help=argparse.SUPPRESS)
    ap.add_argument("--units", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.serve:
        asyncio.run(serve(args.serve, [int(p) for p in args.ports.split(",")], args.units))
        return 0

    endpoints = max(1, min(args.endpoints, args.devices))
    units = -(-args.devices // endpoints)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(synthetic_profile(args.points, not args.no_coalesce)))
        profile = load_profile(path)
        ports = free_ports(endpoints)
        child = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                str(path),
                "--ports",
                ",".join(map(str, ports)),
                "--units",
                str(units),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                print("simulators did not start", file=sys.stderr)
                return 1
            try:
                import uvloop

                runner: Any = uvloop.run
            except ImportError:
                runner = asyncio.run
            result = runner(poll(args, profile, ports))
        finally:
            child.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)
            if child.poll() is None:
                child.kill()
    result["loop"] = "uvloop" if runner is not asyncio.run else "asyncio"
    result["cpu_count"] = os.cpu_count()
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    return 0 if result["failures"] == 0 and result["devices_ok"] == result["devices"] else 1


if __name__ == "__main__":
    sys.exit(main())
