"""`plan` and `simulate` are rehearsals: pointed at a site's devices, they write nothing to them.

The site's devices are served as simulators on real Modbus TCP loopback, each
register bank counting the writes it receives; `dr-agent plan` (which reads
the devices once) and `dr-agent simulate` run as processes against a config
pointing at them, and the counters must stay at zero. The same counters see
the start-up writes of an ordinary poll, so a zero means something.
"""

from __future__ import annotations

import asyncio
import json
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from agent.cli.cmd_sim import rehearsal_config
from agent.config.load import load_site_config
from agent.runtime.daemon import build_devices
from drivers.sim.plant import SimEndpoint, SimulatedPlant
from drivers.sim.server import free_port
from tests.helpers import dr_agent, event_payload

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SITES = [REPO / "config" / "demo-site.yaml", REPO / "config" / "site.example.yaml"]


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *dr_agent(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def served_site(site: Path, tmp: Path) -> tuple[Path, Any, SimulatedPlant]:
    """The site's devices on loopback ports at 11:00 local, and a config (the sim's) pointing at them."""
    cfg, _ = load_site_config(site)
    ports = {ep.name: free_port() for ep in cfg.modbus.endpoints}
    data = rehearsal_config(
        site, ports, host="127.0.0.1", db=tmp / "rehearsal.sqlite", mqtt=("127.0.0.1", 1883)
    )
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    tz = ZoneInfo(cfg.site.timezone)
    eleven = datetime.combine(date.today(), time(11, 0), tz)
    plant = SimulatedPlant.build(
        cfg.devices,
        peak_kw=cfg.contract.peak_kw,
        meter_name=cfg.site.meter,
        tz_offset_s=(eleven.utcoffset() or timedelta(0)).total_seconds(),
    )
    plant.step(eleven.timestamp())
    await plant.serve([SimEndpoint(e.name, "127.0.0.1", ports[e.name]) for e in cfg.modbus.endpoints])
    return path, cfg, plant


def writes(plant: SimulatedPlant) -> dict[str, int]:
    return {name: bank.writes for name, bank in plant.banks.items() if bank.writes}


@pytest.mark.parametrize("site", SITES, ids=lambda p: p.stem)
async def test_plan_and_simulate_write_nothing(site: Path, tmp_path: Path) -> None:
    path, cfg, plant = await served_site(site, tmp_path)
    try:
        # plan reads every device once over Modbus TCP: real readings, no write.
        rc, out, err = await run_cli("plan", "-c", str(path), "--target-pct", "10", "--at", "11:00", "--json")
        assert rc == 0, err
        p = json.loads(out)
        assert p["source"] == "device readings (one poll)"
        assert p["load_kw"] == pytest.approx(plant.site_kw(), abs=0.5)
        assert p["steps"], p  # the devices were read: the plan has steps to take
        assert err == ""  # no log noise
        assert writes(plant) == {}

        tz = ZoneInfo(cfg.site.timezone)
        start = datetime.combine(date.today() + timedelta(days=1), time(11, 0), tz).timestamp()
        event = tmp_path / "event.json"
        event.write_text(
            json.dumps(event_payload("rehearsal-1", start, 600, cfg.site.timezone, program="realtime"))
        )
        rc, out, err = await run_cli("simulate", "-c", str(path), "--event", str(event), "--json")
        assert rc == 0, err[-2000:]
        s = json.loads(out)
        assert s["settled"] is True and s["actuations"] > 0, s  # it shed (the simulated plant)
        assert writes(plant) == {}
    finally:
        await plant.stop()


async def test_the_counter_sees_the_start_up_writes_a_plan_skips(tmp_path: Path) -> None:
    # demo-site's chargers have a failsafe current and its battery a setpoint revert time:
    # an ordinary (non read-only) poll writes them, and the counters see it over TCP.
    path, _cfg, plant = await served_site(SITES[0], tmp_path)
    try:
        cfg, _ = load_site_config(path)
        transports, devices = build_devices(cfg)
        try:
            for name in ("ev-1", "battery"):
                assert await devices[name].poll()
        finally:
            for t in transports.values():
                await t.close()
        seen = writes(plant)
        assert seen.get("ev-1", 0) >= 2 and seen.get("battery", 0) >= 1, seen
    finally:
        await plant.stop()
