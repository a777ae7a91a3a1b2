"""`dr-agent demo`: a simulated plant, an embedded broker, the real agent, one event, a settlement.

Everything runs in one process on loopback with a time-compressed clock
(60x by default): the plant's devices are served over real Modbus TCP, the
agent is the production `Agent`, and the event arrives over real MQTT from a
separate client, which also prints the agent's live reports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

import aiomqtt

from agent.clock import ScaledClock
from agent.config import SiteConfig
from agent.configload import ConfigError, load_site_config
from agent.daemon import Agent
from agent.minibroker import MiniBroker
from drivers.sim.plant import SimEndpoint, SimulatedPlant
from drivers.sim.server import free_port

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "config" / "demo-site.yaml"


def relocate(cfg: SiteConfig, broker_port: int, state_dir: Path, db: Path | None = None) -> SiteConfig:
    """The same site on free loopback ports, with its database in `state_dir` (or at `db`)."""
    endpoints = [
        e.model_copy(update={"host": "127.0.0.1", "port": free_port()}) for e in cfg.modbus.endpoints
    ]
    return cfg.model_copy(
        update={
            "mqtt": cfg.mqtt.model_copy(update={"host": "127.0.0.1", "port": broker_port, "tls": None}),
            "modbus": cfg.modbus.model_copy(update={"endpoints": endpoints}),
            "storage": cfg.storage.model_copy(update={"path": str(db or state_dir / "demo.sqlite")}),
            "metrics": cfg.metrics.model_copy(update={"port": 0}),
        }
    )


def _bar(realized: float, lo: float, hi: float, width: int = 30) -> str:
    top = hi * 1.25
    pos = int(max(0.0, min(1.0, realized / top)) * width)
    a, b = int(lo / top * width), int(hi / top * width)
    cells = []
    for i in range(width):
        ch = "█" if i < pos else ("·" if a <= i <= b else " ")
        cells.append(ch)
    return "[" + "".join(cells) + "]"


async def demo(args: argparse.Namespace, out: TextIO) -> dict[str, Any] | None:
    path = Path(args.config) if args.config else DEMO_CONFIG
    base_cfg, _warnings = load_site_config(path)
    tz = ZoneInfo(base_cfg.site.timezone)
    today = datetime.now(tz).replace(hour=10, minute=30, second=0, microsecond=0)
    clock = ScaledClock(args.speed, origin_sim=today.timestamp())
    with tempfile.TemporaryDirectory(prefix="dr-agent-demo-") as tmp:
        broker = MiniBroker()
        port = await broker.start()
        keep = Path(args.keep_db) if getattr(args, "keep_db", None) else None
        cfg = relocate(base_cfg, port, Path(tmp), keep)
        offset = today.utcoffset() or timedelta(0)
        plant = SimulatedPlant.build(
            cfg.devices,
            peak_kw=cfg.contract.peak_kw,
            meter_name=cfg.site.meter,
            tz_offset_s=offset.total_seconds(),
        )
        await plant.serve([SimEndpoint(e.name, e.host or "127.0.0.1", e.port) for e in cfg.modbus.endpoints])
        agent = Agent(cfg, clock)
        stop = asyncio.Event()
        root = cfg.topic_root
        lo, hi = cfg.contract.band_kw()
        print(
            f"dr-agent demo: {cfg.site.name or cfg.site.id}, peak {cfg.contract.peak_kw:g} kW, "
            f"band {cfg.contract.band_pct[0]:g}-{cfg.contract.band_pct[1]:g} % = {lo:.0f}-{hi:.0f} kW, "
            f"{len(cfg.devices)} devices over Modbus TCP, broker on 127.0.0.1:{port}, clock {args.speed:g}x",
            file=out,
        )
        settlement: dict[str, Any] | None = None
        async with asyncio.TaskGroup() as tg:
            plant_task = tg.create_task(plant.run(clock), name="plant")
            agent_task = tg.create_task(agent.run(stop), name="agent")
            try:
                async with aiomqtt.Client("127.0.0.1", port, identifier="demo-provider") as client:
                    await client.subscribe(f"{root}/out/#", qos=1)
                    await client.subscribe(f"{root}/status", qos=1)
                    # Like a real provider, wait until the agent says it is online (it subscribes first).
                    async for msg in client.messages:
                        if str(msg.topic).endswith("/status") and b'"online"' in bytes(msg.payload or b""):
                            break
                    start = datetime.fromtimestamp(clock.now(), tz) + timedelta(minutes=16)
                    start = start.replace(second=0, microsecond=0)
                    event = {
                        "event_id": f"demo-{start:%Y%m%d-%H%M}",
                        "modification_number": 0,
                        "status": "far",
                        "program": "contracted",
                        "priority": 1,
                        "start": start.isoformat(),
                        "duration_s": args.duration_min * 60,
                        "target": {"reduce_pct_of_peak": args.target_pct},
                    }
                    await client.publish(f"{root}/in/event", json.dumps(event), qos=1)
                    print(
                        f"{_t(clock, tz)} provider: event {event['event_id']} asks {args.target_pct:g} % of peak "
                        f"from {start:%H:%M} for {args.duration_min:g} min",
                        file=out,
                    )
                    settlement = await _follow(client, clock, tz, out, event["event_id"], lo, hi)
            finally:
                stop.set()
                await agent_task
                plant_task.cancel()
                await plant.stop()
                await broker.stop()
        return settlement


def _t(clock: ScaledClock, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(clock.now(), tz).strftime("%H:%M:%S")


async def _follow(
    client: aiomqtt.Client, clock: ScaledClock, tz: ZoneInfo, out: TextIO, event_id: str, lo: float, hi: float
) -> dict[str, Any] | None:
    last_minute = None
    async with asyncio.timeout(3600 / max(1.0, clock.speed) * 3 + 120):
        async for msg in client.messages:
            topic = str(msg.topic)
            body = json.loads(msg.payload if isinstance(msg.payload, (bytes, str)) else b"{}")
            if topic.endswith("/out/response"):
                print(
                    f"{_t(clock, tz)} agent: opt {body['opt']} ({body['code']}): {body['reason']}", file=out
                )
                if body["opt"] == "out":
                    return None
            elif topic.endswith("/out/error"):
                print(f"{_t(clock, tz)} agent error: {body}", file=out)
            elif "/out/event/" in topic:
                print(f"{_t(clock, tz)} event {body['event_id']} is {body['state']}", file=out)
            elif topic.endswith("/out/report"):
                minute = int(body["ts"] // 60)
                if minute == last_minute or body.get("realized_kw") is None:
                    continue
                last_minute = minute
                r = body["realized_kw"]
                if body.get("phase") == "restoring":
                    flag = "restoring"  # the event is over: the band no longer applies
                else:
                    flag = "in band" if body["in_band"] else "OUT of band"
                print(
                    f"{_t(clock, tz)} load {body['measured_kw']:7.1f} kW  baseline {body['baseline_kw']:7.1f}  "
                    f"shed {r:6.1f} kW ({body['realized_pct_of_peak']:5.1f} %) {_bar(r, lo, hi)} {flag:11s} "
                    f"steps {len(body['active_steps'])}",
                    file=out,
                )
            elif f"/out/settlement/{event_id}" in topic:
                return dict(body)
    return None


def print_settlement(s: dict[str, Any], out: TextIO) -> None:
    rows = [
        ("event", s["event_id"]),
        (f"baseline ({s.get('baseline_method', 'realtime_15min')})", f"{s['baseline_kw']:.1f} kW"),
        ("measured during the event", f"{s['measured_kw']:.1f} kW"),
        (
            "verified reduction",
            f"{s['verified_reduction_kw']:.1f} kW = {s['verified_reduction_pct_of_peak']:.2f} % of peak",
        ),
        ("contracted band", f"{s['band_pct'][0]:g}-{s['band_pct'][1]:g} % of peak"),
        ("in band (1-min means, from minute 1)", f"{s['in_band_fraction'] * 100:.1f} % of minutes"),
        (
            "compliance vs commitment",
            "-" if s.get("compliance") is None else f"{s['compliance'] * 100:.0f} %",
        ),
        ("estimated incentive", f"{s['estimated_incentive_cny']:.0f} CNY"),
        ("device writes", str(s.get("actuations", 0))),
    ]
    print("\nSettlement", file=out)
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{w}}  {v}", file=out)


def run_demo(args: argparse.Namespace) -> int:
    from agent.logs import setup_logging

    setup_logging(os.environ.get("DR_AGENT_DEMO_LOG", "warning"), "text")
    out = sys.stderr if args.json else sys.stdout
    if args.keep_db:
        keep = Path(args.keep_db).resolve()
        keep.unlink(missing_ok=True)  # a fresh demo: no events of an earlier run in the books
        args.keep_db = str(keep)
    try:
        settlement = asyncio.run(demo(args, out))
    except ConfigError as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if settlement is None:
        print("demo: no settlement was published", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(settlement))
    else:
        print_settlement(settlement, out)
        if args.keep_db:
            print(
                f"\nThe database is kept: dr-agent report --db {args.keep_db} {settlement['event_id']}"
                f" (add --png chart.png for the chart)",
                file=out,
            )
    with contextlib.suppress(Exception):
        out.flush()
    return 0
