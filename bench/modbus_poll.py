"""Poll N simulated Modbus TCP devices at 1 Hz and measure what the agent's poller costs.

The simulators run in a child process (so their CPU is not counted); this
process runs the daemon's own poll path (`Agent._poll_endpoint` over real
`ModbusTransport`s and `Device`s) for `--duration` seconds and reports
requests/s, registers/s, the agent's CPU share of one core, and how much read
coalescing saves against one request per point. Two maps, each said in the output:

- `synthetic`: a meter-like map of `--points` points with one-register holes,
  marked `reads_unmapped: true` (a device that answers reads across its holes,
  so coalescing may span them): the best case for coalescing;
- `site-mix`: the demo site's mix of shipped profiles (meter, HVAC, lighting,
  chargers, a SunSpec battery) repeated to `--devices`, each read as its
  profile allows (strict devices: no spanning of unmapped registers).

    python bench/modbus_poll.py --devices 100 --points 20 --json          # both maps
    python bench/modbus_poll.py --map site-mix --devices 100 --json
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
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml

from agent.cli.main import event_loop_runner
from drivers.device import Device
from drivers.modbus import ModbusTransport
from drivers.profile import Profile, load_profile
from drivers.registry import kinds

TYPES = ("float32", "int16", "uint32", "float32", "uint16")


def synthetic_profile(points: int, coalesce: bool) -> dict[str, Any]:
    """A meter-like map: mixed types, small holes between points, like a real vendor table, on a
    device that answers reads across the holes (`reads_unmapped: true`, said in the output)."""
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
        "reads_unmapped": True,
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


async def serve_site(config_path: str) -> None:
    """The site mix: the simulated plant of a site config, its physics stepped every second."""
    from agent.config.load import load_site_config
    from agent.platform.clock import SystemClock
    from drivers.sim.plant import SimEndpoint, SimulatedPlant

    cfg, _ = load_site_config(Path(config_path))
    plant = SimulatedPlant.build(cfg.devices, peak_kw=cfg.contract.peak_kw, meter_name=cfg.site.meter)
    await plant.serve([SimEndpoint(e.name, "127.0.0.1", e.port) for e in cfg.modbus.endpoints])
    task = asyncio.create_task(plant.run(SystemClock()))
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    task.cancel()
    await plant.stop()


def site_mix_config(tmp: Path, devices: int, endpoints: int) -> Path:
    """The demo site's devices (one of each shipped profile it uses) repeated to `devices`, dealt
    round-robin over `endpoints` endpoints: a realistic mix of shipped profiles."""
    from agent.config.load import load_site_config

    base, _ = load_site_config(REPO / "config" / "demo-site.yaml")
    raw = base.model_dump(mode="json", exclude_none=True)
    ports = free_ports(endpoints)
    raw["modbus"]["endpoints"] = [
        {"name": f"ep{i}", "protocol": "tcp", "host": "127.0.0.1", "port": p, "timeout_s": 1.0}
        for i, p in enumerate(ports)
    ]
    templates = raw["devices"]
    out, units = [], [1] * endpoints
    for i in range(devices):
        d = dict(templates[i % len(templates)])
        ep = i % endpoints
        d.update(name=f"{d['name']}-{i}", endpoint=f"ep{ep}", unit_id=units[ep])
        units[ep] += 1
        out.append(d)
    raw["devices"] = out
    raw["site"]["meter"] = out[0]["name"]
    # A strategy the config accepts (it is never run): dim the first lighting zone.
    zone = next((d["zone"] for d in out if d["kind"] == "lighting"), None)
    if zone is None:
        raise SystemExit(f"--map site-mix needs a lighting zone among its devices: {devices} are too few")
    raw["strategies"] = [
        {
            "name": "bench",
            "description": "polling only",
            "programs": ["contracted", "realtime"],
            "default": True,
            "stages": [{"name": "lights", "actions": [{"kind": "lighting", "group": zone, "level_pct": 50}]}],
        }
    ]
    raw.pop("outdoor_temperature", None)
    # Only polled here, but the config must still load at any size: a few devices cannot shed a
    # band sized for the demo's 1,000 kW peak, so the peak follows the site's size (never below
    # its largest device).
    largest = max(float(d.get("rated_kw", 0)) for d in out)
    raw["contract"]["peak_kw"] = max(largest, min(raw["contract"]["peak_kw"], 10.0 * devices))
    path = tmp / "site-mix.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# -- the agent side -----------------------------------------------------------------


def synthetic_groups(args: argparse.Namespace, profile: Profile, ports: list[int]) -> list[list[Device]]:
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
    return groups


def site_groups(config: Path) -> list[list[Device]]:
    from agent.config.load import load_site_config
    from agent.runtime.daemon import build_devices

    cfg, _ = load_site_config(config)
    _transports, devices = build_devices(cfg)
    by_ep: dict[str, list[Device]] = {}
    for d in devices.values():
        by_ep.setdefault(d.transport.name, []).append(d)
    return list(by_ep.values())


async def reference(args: argparse.Namespace, groups: list[list[Device]]) -> float:
    """A bare pymodbus client per endpoint sending the agent's very requests (the same blocks,
    endpoints in parallel, one request at a time on each) at the same rate, nothing decoded:
    its CPU ms per request, the yardstick for the agent's."""
    from pymodbus.client import AsyncModbusTcpClient

    plan = [
        (g[0].transport, [(d.unit_id, b.function, b.address, b.count) for d in g for b in d._blocks])
        for g in groups
    ]
    clients = []
    for t, _ in plan:
        host, port = str(getattr(t, "address", "")).rsplit(":", 1)
        clients.append(AsyncModbusTcpClient(host, port=int(port), timeout=args.timeout))
    for c in clients:
        await c.connect()

    async def one(c: Any, reqs: Sequence[tuple[int, str, int, int]]) -> int:
        for unit, fn, addr, count in reqs:
            if fn == "holding_register":
                await c.read_holding_registers(addr, count=count, device_id=unit)
            elif fn == "input_register":
                await c.read_input_registers(addr, count=count, device_id=unit)
            elif fn == "coil":
                await c.read_coils(addr, count=count, device_id=unit)
            else:
                await c.read_discrete_inputs(addr, count=count, device_id=unit)
        return len(reqs)

    async def cycle() -> int:
        return sum(await asyncio.gather(*(one(c, reqs) for c, (_, reqs) in zip(clients, plan, strict=True))))

    await cycle()
    n = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    next_at = wall0
    while time.perf_counter() - wall0 < args.duration:
        n += await cycle()
        next_at += args.period
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    cpu = time.process_time() - cpu0
    for c in clients:
        c.close()
    return cpu / max(1, n) * 1000


async def poll(args: argparse.Namespace, build: Any) -> dict[str, Any]:
    from agent.platform.clock import SystemClock
    from agent.runtime.daemon import Agent

    groups: list[list[Device]] = build()
    transports: list[Any] = [g[0].transport for g in groups]
    devices = [d for g in groups for d in g]
    # What `_poll_endpoint` takes from the agent: its clock, and the gate a new event's first
    # stage closes (`hold_polls`), open here as it is between events.
    polls_go = asyncio.Event()
    polls_go.set()
    fake_agent = SimpleNamespace(clock=SystemClock(), _polls_go=polls_go)

    async def cycle() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(Agent._poll_endpoint(fake_agent, g) for g in groups))  # type: ignore[arg-type]
        return time.perf_counter() - t0

    for _ in range(3):  # connect, discover (SunSpec), warm up
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
    ref_ms = await reference(args, groups)
    regs_per_cycle = sum(b.count for d in devices for b in d._blocks)
    points_per_cycle = sum(d.points_per_poll for d in devices)
    ok = sum(1 for d in devices if d.health.available and d.values)
    return {
        "devices": len(devices),
        "points_per_device": round(sum(d.points_per_poll for d in devices) / len(devices), 1),
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
        "ref_cpu_ms_per_request": round(ref_ms, 4),
        "cpu_per_request_vs_ref": round(cpu / max(1, requests) * 1000 / ref_ms, 2),
        "cycle_ms_p50": round(statistics.median(durations) * 1000, 1),
        "cycle_ms_max": round(max(durations) * 1000, 1),
        "failures": failures,
        "devices_ok": ok,
        "python": sys.version.split()[0],
    }


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports (free_port() may hand out the same port twice in a row)."""
    from drivers.sim.server import free_port

    ports: list[int] = []
    while len(ports) < n:
        if (p := free_port()) not in ports:
            ports.append(p)
    return ports


def run_map(args: argparse.Namespace, which: str) -> dict[str, Any]:
    """One map's figures, its simulators in a child process."""
    endpoints = max(1, min(args.endpoints, args.devices))
    units = -(-args.devices // endpoints)
    with tempfile.TemporaryDirectory() as tmp:
        if which == "synthetic":
            path = Path(tmp) / "bench.yaml"
            path.write_text(yaml.safe_dump(synthetic_profile(args.points, not args.no_coalesce)))
            profile = load_profile(path)
            ports = free_ports(endpoints)
            serve_args = ["--serve", str(path), "--ports", ",".join(map(str, ports)), "--units", str(units)]
            label = f"synthetic map, {args.points} points with one-register holes, reads_unmapped: true"

            def build() -> list[list[Device]]:
                return synthetic_groups(args, profile, ports)

        else:
            config = site_mix_config(Path(tmp), args.devices, endpoints)
            serve_args = ["--serve-site", str(config)]
            label = "site mix of shipped profiles (the demo site's devices repeated), strict reads"

            def build() -> list[list[Device]]:
                return site_groups(config)

        child = subprocess.Popen([sys.executable, __file__, *serve_args], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError("simulators did not start")
            # The agent's own choice of loop (DR_AGENT_LOOP), on asyncio unless asked: a default
            # install has no uvloop.
            os.environ.setdefault("DR_AGENT_LOOP", "asyncio")
            runner: Any = event_loop_runner()
            result = runner(poll(args, build))
        finally:
            child.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)
            if child.poll() is None:
                child.kill()
    result = {"map": label, **result}
    result["loop"] = "uvloop" if runner is not asyncio.run else "asyncio"
    result["cpu_count"] = os.cpu_count()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=100, help="simulated devices (default 100)")
    ap.add_argument(
        "--points", type=int, default=20, help="points per device of the synthetic map (default 20)"
    )
    ap.add_argument(
        "--endpoints", type=int, default=10, help="Modbus TCP endpoints (gateways) they share (default 10)"
    )
    ap.add_argument(
        "--map", choices=("both", "synthetic", "site-mix"), default="both", help="which map (default both)"
    )
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    ap.add_argument("--period", type=float, default=1.0, help="poll period, s (default 1)")
    ap.add_argument("--timeout", type=float, default=1.0, help="request timeout, s")
    ap.add_argument("--no-coalesce", action="store_true", help="one request per point (the baseline)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--serve-site", help=argparse.SUPPRESS)
    ap.add_argument("--ports", help=argparse.SUPPRESS)
    ap.add_argument("--units", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.serve:
        asyncio.run(serve(args.serve, [int(p) for p in args.ports.split(",")], args.units))
        return 0
    if args.serve_site:
        asyncio.run(serve_site(args.serve_site))
        return 0
    maps = ["synthetic", "site-mix"] if args.map == "both" else [args.map]
    results = [run_map(args, m) for m in maps]
    # The first map's figures at the top level (as before), the second under "site_mix".
    out = dict(results[0])
    if len(results) > 1:
        out["site_mix"] = results[1]
    if args.json:
        print(json.dumps(out))
    else:
        for r in results:
            for k, v in r.items():
                print(f"{k:>22}: {v}")
            print()
    ok = all(r["failures"] == 0 and r["devices_ok"] == r["devices"] for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
