"""What the process benches share: a synthetic site of N lighting zones over M endpoints, its
simulators (in the bench's process), a broker, and `dr-agent run` as a subprocess.

The site: a site meter (eastron_sdm630) and N-1 lighting zones (generic_lighting) dealt
round-robin over the endpoints. The strategy's first stage is a fifth of them (one group,
100 kW expected in all, so a 100 kW event is met by the first stage alone); the rest form a
second stage. Its clock is real time from 11:00 local, inside the contract's hours.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.cli.demo import DemoBroker
from agent.config.load import load_site_config
from agent.platform.clock import ScaledClock
from drivers.sim.plant import SimEndpoint, SimulatedPlant
from drivers.sim.server import free_port

TZ = "Asia/Shanghai"
#: The first stage's expected kW in all; events ask for EVENT_KW, more than it, so the whole first
#: stage is always added whatever the real-time baseline makes of the previous event's restore.
FIRST_STAGE_KW = 100.0
EVENT_KW = 150.0
SHED_LEVEL = 50


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds user+system) of a process, from /proc."""
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss_kb / 1024, (int(fields[11]) + int(fields[12])) / ticks


async def start_broker(tmp: Path) -> tuple[int, Any]:
    exe = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    port = free_port()
    if exe:
        conf = tmp / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
        )
        proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(0.3)
        return port, proc
    broker = DemoBroker(port=port)
    await broker.start()
    return port, broker


async def stop_broker(broker: Any) -> None:
    if isinstance(broker, DemoBroker):
        await broker.stop()
    else:
        broker.terminate()
        broker.wait(5)


@dataclass
class Site:
    devices: int
    endpoints: int
    path: Path
    cfg: Any
    clock: ScaledClock
    #: Lighting zones of the first stage, and the (endpoint, host, port, unit, register) each is written at.
    first: list[str] = field(default_factory=list)
    where: dict[str, tuple[str, int, int, int]] = field(default_factory=dict)
    plant: SimulatedPlant | None = None
    plant_task: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        cfg = self.cfg
        self.plant = SimulatedPlant.build(
            cfg.devices, peak_kw=cfg.contract.peak_kw, meter_name=cfg.site.meter
        )
        await self.plant.serve([SimEndpoint(e.name, "127.0.0.1", e.port) for e in cfg.modbus.endpoints])
        self.plant_task = asyncio.create_task(self.plant.run(self.clock))

    async def stop(self) -> None:
        if self.plant_task is not None:
            self.plant_task.cancel()
        if self.plant is not None:
            await self.plant.stop()

    def level(self, device: str) -> float:
        assert self.plant is not None
        return float(self.plant.banks[device].get("dim_level"))


def build_site(
    tmp: Path,
    broker_port: int,
    devices: int,
    endpoints: int,
    *,
    topic_root: str = "bench/site",
    overrides: dict[str, Any] | None = None,
) -> Site:
    """Write the site config for `devices` devices (the meter included) over `endpoints` endpoints."""
    base, _ = load_site_config(REPO / "config" / "demo-site.yaml")
    tz = ZoneInfo(TZ)
    endpoints = max(1, min(endpoints, devices))
    ports: list[int] = []
    while len(ports) < endpoints:  # free_port() may hand out the same port twice in a row
        if (p := free_port()) not in ports:
            ports.append(p)
    eps: list[dict[str, Any]] = [
        {"name": f"ep{i}", "protocol": "tcp", "host": "127.0.0.1", "port": ports[i], "timeout_s": 0.5}
        for i in range(endpoints)
    ]
    loads = devices - 1
    n_first = max(1, min(loads, devices // 5))
    per_kw = FIRST_STAGE_KW / n_first
    devs: list[dict[str, Any]] = [
        {"name": "site-meter", "kind": "meter", "endpoint": "ep0", "unit_id": 1, "profile": "eastron_sdm630"}
    ]
    units = {e["name"]: 1 for e in eps}
    units["ep0"] = 2
    first: list[str] = []
    where: dict[str, tuple[str, int, int, int]] = {}
    for i in range(loads):
        ep = eps[i % endpoints]
        unit = units[ep["name"]]
        units[ep["name"]] += 1
        name = f"zone-{i:04d}"
        is_first = i < n_first
        devs.append(
            {
                "name": name,
                "kind": "lighting",
                "endpoint": ep["name"],
                "unit_id": unit,
                "profile": "generic_lighting",
                "rated_kw": 2 * per_kw if is_first else 2.0,
                "zone": "first" if is_first else "rest",
                "min_level_pct": 40,
            }
        )
        if is_first:
            first.append(name)
        where[name] = (ep["name"], ep["port"], unit, 100)
    raw = base.model_dump(mode="json", exclude_none=True)
    raw["site"]["timezone"] = TZ
    raw["mqtt"].update(port=broker_port, topic_root=topic_root)
    raw["modbus"]["endpoints"] = eps
    raw["devices"] = devs
    raw["storage"] = {**raw.get("storage", {}), "path": str(tmp / "agent.sqlite")}
    raw["metrics"] = {**raw.get("metrics", {}), "port": 0}
    raw["contract"]["programs"] = {}  # no daily limits: the benches send many events in a row
    raw.pop("outdoor_temperature", None)
    raw["strategies"] = [
        {
            "name": "bench",
            "description": "first stage: a fifth of the zones; then the rest",
            "programs": ["contracted", "realtime"],
            "default": True,
            "restore": {"step_interval_s": 1, "rebound_cap_factor": 2.0, "rebound_window_s": 60},
            "stages": [
                {
                    "name": "first",
                    "actions": [
                        {"kind": "lighting", "group": "first", "level_pct": SHED_LEVEL, "expected_kw": per_kw}
                    ],
                },
                {
                    "name": "rest",
                    "actions": [
                        {"kind": "lighting", "group": "rest", "level_pct": SHED_LEVEL, "expected_kw": 1.0}
                    ],
                },
            ],
        }
    ]
    if loads - n_first <= 0:
        raw["strategies"][0]["stages"].pop()
    for k, v in (overrides or {}).items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg, _ = load_site_config(path)
    origin = datetime.now(tz).replace(hour=11, minute=0, second=0, microsecond=0).timestamp()
    clock = ScaledClock(1.0, origin_sim=origin)
    return Site(devices, endpoints, path, cfg, clock, first, where)


def agent_env(extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a bench starts `dr-agent run` in: the agent of this tree (not whichever
    one the venv installed), on asyncio as a default install runs unless DR_AGENT_LOOP says
    otherwise (the speed extra)."""
    return {"DR_AGENT_LOOP": "asyncio", **os.environ, "PYTHONPATH": str(REPO), **(extra_env or {})}


def start_agent(
    site: Site, log_path: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = agent_env(extra_env)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "run",
            "-c",
            str(site.path),
            "--clock",
            site.clock.spec(),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(log_path, "w"),
        env=env,
        cwd=REPO,
    )


def stop_agent(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


async def wait_online(client: Any, root: str, timeout_s: float = 60) -> None:
    async with asyncio.timeout(timeout_s):
        async for m in client.messages:
            if str(m.topic) == f"{root}/status" and b"online" in bytes(m.payload):
                return


def event(event_id: str, clock: ScaledClock, reduce_kw: float = EVENT_KW) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "program": "realtime",
        "start": datetime.fromtimestamp(clock.now(), ZoneInfo(TZ)).isoformat(),
        "duration_s": 600,
        "target": {"reduce_kw": reduce_kw},
    }


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1), nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def until(cond: Callable[[], bool], timeout_s: float, poll_s: float = 0.01) -> bool:
    """Poll `cond` until true or `timeout_s` passed (the benches watch simulator hooks this way)."""
    deadline = time.perf_counter() + timeout_s
    while not cond() and time.perf_counter() < deadline:  # noqa: ASYNC110 - hooks set no Event
        await asyncio.sleep(poll_s)
    return cond()
