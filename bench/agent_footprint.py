"""Agent footprint and reaction time, measured on the real process.

Starts the demo site's simulators on Modbus TCP (in this process), a broker
(Mosquitto if installed, else the embedded one), and `dr-agent run` as a
subprocess. Measures:

- idle: the agent's resident memory (VmRSS) and CPU share over an idle window
  with every device polled at 1 Hz;
- reaction: the time from publishing an event whose start is "now" to the
  first Modbus write arriving at a simulator, over N events (each cancelled
  once it has shed, so devices are restored before the next).

    python bench/agent_footprint.py [--idle-s 30] [--events 15] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from agent.cli.demo import DemoBroker
from agent.config.load import load_site_config
from agent.platform.clock import ScaledClock
from drivers.sim.plant import SimEndpoint, SimulatedPlant
from drivers.sim.server import free_port

REPO = Path(__file__).resolve().parents[1]


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds user+system) of a process, from /proc."""
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    return rss_kb / 1024, cpu


async def start_broker(tmp: Path) -> tuple[int, Any]:
    exe = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    port = free_port()
    if exe:
        conf = tmp / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(0.3)
        return port, proc
    broker = DemoBroker(port=port)
    await broker.start()
    return port, broker


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import aiomqtt

    base, _ = load_site_config(REPO / "config" / "demo-site.yaml")
    tz = ZoneInfo(base.site.timezone)
    with tempfile.TemporaryDirectory(prefix="dr-agent-bench-") as tmp_s:
        tmp = Path(tmp_s)
        port, broker = await start_broker(tmp)
        endpoints = [e.model_copy(update={"port": free_port()}) for e in base.modbus.endpoints]
        cfg = base.model_copy(
            update={
                "mqtt": base.mqtt.model_copy(update={"port": port, "topic_root": "bench/site"}),
                "modbus": base.modbus.model_copy(update={"endpoints": endpoints}),
                "storage": base.storage.model_copy(update={"path": str(tmp / "agent.sqlite")}),
                "metrics": base.metrics.model_copy(update={"port": 0}),
                # No daily limits: the bench sends many events in a row.
                "contract": base.contract.model_copy(update={"programs": {}}),
            }
        )
        path = tmp / "site.yaml"
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False))
        # Real time (speed 1), but the simulated day starts at 11:00 so events fall in allowed hours.
        origin = datetime.now(tz).replace(hour=11, minute=0, second=0, microsecond=0).timestamp()
        clock = ScaledClock(1.0, origin_sim=origin)
        plant = SimulatedPlant.build(cfg.devices, peak_kw=cfg.contract.peak_kw, meter_name=cfg.site.meter)
        await plant.serve([SimEndpoint(e.name, "127.0.0.1", e.port) for e in cfg.modbus.endpoints])
        plant_task = asyncio.create_task(plant.run(clock))
        first_write: dict[str, float] = {}
        for bank in plant.banks.values():
            inner = bank.on_write

            def hook(key: str, value: Any, inner: Any = inner) -> None:
                first_write.setdefault("t", time.perf_counter())
                if inner:
                    inner(key, value)

            bank.on_write = hook
        exe = Path(sys.executable).parent / "dr-agent"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "agent.cli"]
        agent = subprocess.Popen(
            [*cmd, "run", "-c", str(path), "--clock", clock.spec(), "--log-level", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "agent.log", "w"),
        )
        result: dict[str, Any] = {
            "devices": len(cfg.devices),
            "broker": "mosquitto" if not isinstance(broker, DemoBroker) else "amqtt",
        }
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier="bench-provider") as client:
                await client.subscribe("bench/site/#", qos=1)
                async with asyncio.timeout(30):
                    async for m in client.messages:
                        if str(m.topic).endswith("/status") and b"online" in bytes(m.payload):  # type: ignore[arg-type]
                            break
                # Idle: devices polled at 1 Hz, no event.
                await asyncio.sleep(5)
                _rss0, cpu0 = proc_stats(agent.pid)
                t0 = time.monotonic()
                await asyncio.sleep(args.idle_s)
                rss1, cpu1 = proc_stats(agent.pid)
                result["idle_rss_mib"] = round(rss1, 1)
                result["idle_cpu_pct_one_core"] = round((cpu1 - cpu0) / (time.monotonic() - t0) * 100, 2)
                # Reaction: event start "now" -> first Modbus write at a simulator.
                latencies = []
                for i in range(args.events):
                    first_write.clear()
                    ev = {
                        "event_id": f"bench-{i}",
                        "program": "realtime",
                        "start": datetime.fromtimestamp(clock.now(), tz).isoformat(),
                        "duration_s": 600,
                        "target": {"reduce_kw": 100},
                    }
                    t_pub = time.perf_counter()
                    await client.publish("bench/site/in/event", json.dumps(ev), qos=1)
                    for _ in range(500):
                        if "t" in first_write:
                            break
                        await asyncio.sleep(0.001)
                    if "t" in first_write:
                        latencies.append((first_write["t"] - t_pub) * 1000)
                    cancel = {**ev, "modification_number": 1, "status": "cancelled"}
                    await client.publish("bench/site/in/event", json.dumps(cancel), qos=1)
                    await asyncio.sleep(1.5)  # restore, and let the loop settle
                rss2, _ = proc_stats(agent.pid)
                result["events"] = len(latencies)
                result["event_to_first_write_ms_p50"] = (
                    round(statistics.median(latencies), 1) if latencies else None
                )
                result["event_to_first_write_ms_max"] = round(max(latencies), 1) if latencies else None
                result["rss_after_events_mib"] = round(rss2, 1)
        except TimeoutError:
            print((tmp / "agent.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            agent.terminate()
            agent.wait(30)
            plant_task.cancel()
            await plant.stop()
            if isinstance(broker, DemoBroker):
                await broker.stop()
            else:
                broker.terminate()
                broker.wait(5)
        return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--idle-s", type=float, default=30.0)
    p.add_argument("--events", type=int, default=15)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    r = asyncio.run(run(args))
    if args.json:
        print(json.dumps(r))
        return
    print(f"agent with {r['devices']} devices polled at 1 Hz, broker: {r['broker']}")
    print(f"  idle RSS                      {r['idle_rss_mib']:.1f} MiB")
    print(f"  idle CPU                      {r['idle_cpu_pct_one_core']:.2f} % of one core")
    print(
        f"  event -> first device write   p50 {r['event_to_first_write_ms_p50']} ms, max {r['event_to_first_write_ms_max']} ms over {r['events']} events"
    )
    print(f"  RSS after the events          {r['rss_after_events_mib']:.1f} MiB")


if __name__ == "__main__":
    main()
