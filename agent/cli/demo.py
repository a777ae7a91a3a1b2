"""`dr-agent demo`: a simulated plant, an in-process broker, the real agent, one event, a settlement.

Everything runs in one process on loopback with a time-compressed clock
(60x by default): the plant's devices are served over real Modbus TCP, the
agent is the production `Agent`, and the event arrives over real MQTT from a
separate client, which also prints the agent's live reports.

The demo writes its effective config (the demo site on this run's ports) to
a file and prints it with the ports and the database, so `dr-agent diagnose`,
`status` and `report` can be pointed at it from a second terminal;
`--keep-running` keeps the site and the agent up after the event until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
import tempfile
from collections.abc import Awaitable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

import aiomqtt
import yaml

from agent.config.load import ConfigError, load_site_config
from agent.config.model import SiteConfig
from agent.platform.clock import ScaledClock
from agent.runtime.daemon import Agent, build_devices
from agent.runtime.reload import Reloader
from drivers.sim.plant import SimEndpoint, SimulatedPlant
from drivers.sim.server import free_port

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "demo-site.yaml"
CONFIG_NAME = "demo-site.yaml"
# The roles a shed writes: after the demo each must read what it read before the event.
CONTROL_ROLES = ("setpoint_c", "level_pct", "current_limit_a", "power_setpoint_kw")
NOTICE_S = 900.0  # the event's notification_s: `near` this long before the start
# The demo's baseline (realtime_15min) is the mean load of the 15 min before the start, so the
# event starts 16 min after the demo does.
BASELINE_MIN = 15
LEAD_MIN = BASELINE_MIN + 1
BAR_WIDTH = 30
DEMO_TIMEOUT_S = 2.0  # Modbus timeout of the demo's endpoints (see relocate)

STATE_WORDS = {
    "far": "scheduled (state far: more than {notice} min before the start)",
    "near": "starting soon (state near: less than {notice} min to go; the baseline is measured now)",
    "active": "active: the agent sheds load to keep the reduction inside the band",
    "completed": "completed: the event is over and every device is back; the settlement follows",
    "cancelled": "cancelled: the agent restores every device",
}


class DemoError(Exception):
    """The demo cannot start (its broker is not installed); the message says what to do."""


class DemoBroker:
    """The demo's MQTT broker: amqtt (the `demo` extra) on a loopback port, in this process.

    So the demo needs nothing but Python; a site runs Mosquitto. amqtt keeps no queue for an
    anonymous client's persistent session while it is away, and on each CONNECT it sends the
    retained messages of every client's subscriptions: neither matters here, where the agent and
    the provider stay connected and the agent reads only its own input topics.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._broker: Any = None

    async def start(self) -> int:
        try:
            from amqtt.broker import Broker
        except ImportError as exc:
            raise DemoError(
                "demo: its MQTT broker is amqtt: pip install 'dr-agent[demo]' (./dev demo installs it)"
            ) from exc
        self._broker = Broker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
            }
        )
        await self._broker.start()
        return self.port

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None


def relocate(cfg: SiteConfig, broker_port: int, state_dir: Path, db: Path | None = None) -> SiteConfig:
    """The same site on free loopback ports, with its database in `state_dir` (or at `db`)."""
    # The simulators share one event loop with the agent and the broker: on a busy machine a reply
    # can take longer than a real device's, and a diagnose beside the demo must not read that as dead.
    endpoints = [
        e.model_copy(
            update={"host": "127.0.0.1", "port": free_port(), "timeout_s": max(e.timeout_s, DEMO_TIMEOUT_S)}
        )
        for e in cfg.modbus.endpoints
    ]
    return cfg.model_copy(
        update={
            "mqtt": cfg.mqtt.model_copy(update={"host": "127.0.0.1", "port": broker_port, "tls": None}),
            "modbus": cfg.modbus.model_copy(update={"endpoints": endpoints}),
            "storage": cfg.storage.model_copy(update={"path": str(db or state_dir / "demo.sqlite")}),
            # A fixed free port rather than 0, so the config file says where /metrics is.
            "metrics": cfg.metrics.model_copy(update={"host": "127.0.0.1", "port": free_port()}),
        }
    )


def write_config(cfg: SiteConfig, path: Path, source: Path) -> None:
    """The effective config as YAML that `dr-agent validate/diagnose/status` load as they are."""
    # strategy_files are already merged into `strategies`; listing them again would load them twice.
    data = cfg.model_dump(mode="json", exclude_defaults=True, exclude={"strategy_files"})
    head = (
        f"# The effective config of a `dr-agent demo` run: {source} on this run's loopback ports.\n"
        "# Valid while the demo runs; point diagnose, status and report at it.\n"
    )
    path.write_text(head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110), "utf-8")


def _bar(realized: float, lo: float, hi: float, width: int = BAR_WIDTH) -> str:
    """Shed kW as a bar from 0 to 1.25 x the band's top; `·` marks the band (see `_ruler`)."""
    top = hi * 1.25
    pos = int(max(0.0, min(1.0, realized / top)) * width)
    a, b = int(lo / top * width), int(hi / top * width)
    cells = []
    for i in range(width):
        ch = "█" if i < pos else ("·" if a <= i <= b else " ")
        cells.append(ch)
    return "[" + "".join(cells) + "]"


def _ruler(lo: float, hi: float, width: int = BAR_WIDTH) -> str:
    """The scale over `_bar`: 0, the band's bottom and top, the bar's end, in kW shed."""
    top = hi * 1.25
    a, b = int(lo / top * width), int(hi / top * width)
    cells = [" "] * (width + 2)

    def put(text: str, at: int) -> None:
        for i, ch in enumerate(text):
            if 0 <= at + i < len(cells):
                cells[at + i] = ch

    lo_s, hi_s, top_s = f"{lo:g}", f"{hi:g}", f"{top:g}"
    put("0", 0)
    put(lo_s, a + 1)
    put(hi_s, b + 2 - len(hi_s))
    put(top_s, width + 2 - len(top_s))
    gap = (b + 2 - len(hi_s)) - (a + 1 + len(lo_s))
    if gap >= 6:
        inner = " band ".center(gap, "·")
        put(inner, a + 1 + len(lo_s))
    return "".join(cells) + " kW"


async def demo(args: argparse.Namespace, out: TextIO) -> dict[str, Any]:
    """Run the demo; returns {"settlement", "restored", "interrupted", "folder"}.

    `--keep-running` keeps the site and the agent up after the settlement until SIGINT/SIGTERM.
    """
    path = Path(args.config) if args.config else DEMO_CONFIG
    base_cfg, _warnings = load_site_config(path)
    tz = ZoneInfo(base_cfg.site.timezone)
    today = datetime.now(tz).replace(hour=10, minute=30, second=0, microsecond=0)
    clock = ScaledClock(args.speed, origin_sim=today.timestamp())
    keep_running = bool(getattr(args, "keep_running", False))
    broker = DemoBroker()
    port = await broker.start()  # first: a demo without its broker leaves no folder behind
    try:
        if keep_running:
            # Kept after the demo: the printed commands name it, and `report --db` reads it afterwards.
            folder = Path(tempfile.mkdtemp(prefix="dr-agent-demo-"))
            return await _demo(args, out, path, base_cfg, tz, clock, folder, keep_running, port)
        with tempfile.TemporaryDirectory(prefix="dr-agent-demo-") as tmp:
            return await _demo(args, out, path, base_cfg, tz, clock, Path(tmp), keep_running, port)
    finally:
        await broker.stop()  # after the agent: its `stopped` status reaches the broker


async def _demo(
    args: argparse.Namespace,
    out: TextIO,
    source: Path,
    base_cfg: SiteConfig,
    tz: ZoneInfo,
    clock: ScaledClock,
    folder: Path,
    keep_running: bool,
    port: int,
) -> dict[str, Any]:
    keep = Path(args.keep_db) if getattr(args, "keep_db", None) else None
    cfg = relocate(base_cfg, port, folder, keep)
    config_file = folder / CONFIG_NAME
    write_config(cfg, config_file, source)
    db = cfg.storage.resolved().absolute()
    offset = datetime.fromtimestamp(clock.now(), tz).utcoffset() or timedelta(0)
    plant = SimulatedPlant.build(
        cfg.devices,
        peak_kw=cfg.contract.peak_kw,
        meter_name=cfg.site.meter,
        tz_offset_s=offset.total_seconds(),
    )
    await plant.serve([SimEndpoint(e.name, e.host or "127.0.0.1", e.port) for e in cfg.modbus.endpoints])
    lo, hi = cfg.contract.band_kw()
    bp = cfg.contract.band_pct
    print(
        f"dr-agent demo: {cfg.site.name or cfg.site.id}, peak {cfg.contract.peak_kw:g} kW, contracted band "
        f"{bp[0]:g}-{bp[1]:g} % of peak = {lo:.0f}-{hi:.0f} kW below the baseline; "
        f"clock {args.speed:g}x (1 s here is {args.speed:g} s on site)",
        file=out,
    )
    where = "kept after the demo" if keep_running else "removed at the end; --keep-running keeps it"
    eps = ", ".join(f"{e.name} 127.0.0.1:{e.port}" for e in cfg.modbus.endpoints)
    for k, v in (
        ("config", f"{config_file} (this run's effective config; folder {where})"),
        ("broker", f"mqtt://127.0.0.1:{port} (amqtt, in this process), topics {cfg.topic_root}/..."),
        ("modbus", f"{eps} ({len(cfg.devices)} simulated devices)"),
        ("metrics", f"http://127.0.0.1:{cfg.metrics.port}/metrics"),
        ("database", str(db)),
    ):
        print(f"  {k:9}{v}", file=out)
    out.flush()

    quit_ = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGHUP too: closing the terminal must restore the devices like Ctrl-C does.
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in signals:
        loop.add_signal_handler(sig, quit_.set)
    agent = Agent(cfg, clock)
    Reloader(agent, config_file)  # records the config's path and digest for `status`, as `run` does
    stop = asyncio.Event()
    result: dict[str, Any] = {
        "settlement": None,
        "restored": None,
        "interrupted": False,
        "folder": str(folder),
    }
    async with asyncio.TaskGroup() as tg:
        plant_task = tg.create_task(plant.run(clock), name="plant")
        agent_task = tg.create_task(agent.run(stop), name="agent")
        try:
            await agent.polled_once.wait()
            before = await read_controls(cfg)
            async with aiomqtt.Client("127.0.0.1", port, identifier="demo-provider") as client:
                work = _provide(client, agent, cfg, clock, tz, out, args, config_file, db)
                settlement = await _until(quit_, work)
                result["settlement"] = settlement
                if settlement is not None and not args.json:
                    print_settlement(settlement, out)
                    if keep_running or keep is not None:
                        print(
                            f"\nThe database is kept: dr-agent report --db {shlex.quote(str(db))} "
                            f"{settlement['event_id']} (add --png chart.png for the chart)",
                            file=out,
                        )
                if keep_running and not quit_.is_set():
                    print(
                        f"\n{_t(clock, tz)} the event is settled; the site and the agent keep running "
                        f"(Ctrl-C to stop)",
                        file=out,
                    )
                    out.flush()
                    await quit_.wait()
            result["interrupted"] = quit_.is_set()
            if quit_.is_set():
                print(f"\n{_t(clock, tz)} stopping: the agent restores what it shed", file=out)
        finally:
            stop.set()
            await agent_task
            with contextlib.suppress(Exception):
                after = await read_controls(cfg)
                result["restored"] = _restored(before, after, out)
            plant_task.cancel()
            await plant.stop()
            for sig in signals:
                loop.remove_signal_handler(sig)
    return result


async def _until(quit_: asyncio.Event, work: Awaitable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """`work`'s result, or None once `quit_` is set (Ctrl-C, SIGTERM) first."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(quit_.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return task.result() if task.done() and not task.cancelled() else None


async def read_controls(cfg: SiteConfig) -> dict[tuple[str, str], float]:
    """Every device's control values (setpoints, levels, current limits), read over Modbus."""
    transports, devices = build_devices(cfg)
    values: dict[tuple[str, str], float] = {}
    try:
        for dev in devices.values():
            dev.read_only = True  # look only: no start-up writes
            if not await dev.poll():
                continue
            for role in CONTROL_ROLES:
                v = dev.reading(role) if dev.point_for(role) is not None else None
                if v is not None:
                    values[(dev.name, role)] = v
    finally:
        for t in transports.values():
            with contextlib.suppress(Exception):
                await t.close()
    return values


def _restored(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float], out: TextIO) -> bool:
    wrong = [
        f"{dev} {role} {after.get((dev, role))} (was {v:g})"
        for (dev, role), v in before.items()
        if after.get((dev, role)) is None or abs(after[(dev, role)] - v) > 1e-6
    ]
    n = len({dev for dev, _ in before})
    if wrong:
        print(f"devices NOT restored: {'; '.join(wrong)}", file=out)
        return False
    print(
        f"devices restored: all {n} controllable devices read back over Modbus as before the event "
        f"({len(before)} setpoints, levels and limits)",
        file=out,
    )
    return True


def _t(clock: ScaledClock, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(clock.now(), tz).strftime("%H:%M:%S")


def _commands(config_file: Path, db: Path, event_id: str) -> list[str]:
    c, d = shlex.quote(str(config_file)), shlex.quote(str(db))
    return [
        f"dr-agent diagnose -c {c}",
        f"dr-agent status -c {c}",
        f"dr-agent report --db {d} {event_id}",
    ]


async def _provide(
    client: aiomqtt.Client,
    agent: Agent,
    cfg: SiteConfig,
    clock: ScaledClock,
    tz: ZoneInfo,
    out: TextIO,
    args: argparse.Namespace,
    config_file: Path,
    db: Path,
) -> dict[str, Any] | None:
    """Send one event like a provider would, narrate until its settlement arrives."""
    root = cfg.topic_root
    await client.subscribe(f"{root}/out/#", qos=1)
    await client.subscribe(f"{root}/status", qos=1)
    # Like a real provider, wait until the agent says it is online (it subscribes first).
    async for msg in client.messages:
        if str(msg.topic).endswith("/status") and b'"online"' in bytes(msg.payload or b""):
            break
    start = datetime.fromtimestamp(clock.now(), tz) + timedelta(minutes=LEAD_MIN)
    start = start.replace(second=0, microsecond=0)
    event = {
        "event_id": f"demo-{start:%Y%m%d-%H%M}",
        "modification_number": 0,
        "status": "far",
        "program": "contracted",
        "priority": 1,
        "start": start.isoformat(),
        "duration_s": args.duration_min * 60,
        "notification_s": NOTICE_S,
        "target": {"reduce_pct_of_peak": args.target_pct},
    }
    if getattr(args, "keep_running", False):
        print(
            "\nFrom a second terminal, while this runs (Ctrl-C here stops the site and the agent):", file=out
        )
        for line in _commands(config_file, db, str(event["event_id"])):
            print(f"  {line}", file=out)
        print("(report: once the event is settled)\n", file=out)
    await client.publish(f"{root}/in/event", json.dumps(event), qos=1)
    print(
        f"{_t(clock, tz)} provider: event {event['event_id']} asks {args.target_pct:g} % of peak "
        f"from {start:%H:%M} for {args.duration_min:g} min",
        file=out,
    )
    out.flush()
    lo, hi = cfg.contract.band_kw()
    narrator = asyncio.create_task(_narrate_lead(agent, clock, tz, out, start.timestamp()), name="narrate")
    try:
        return await _follow(client, clock, tz, out, str(event["event_id"]), lo, hi, narrator)
    finally:
        narrator.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await narrator


async def _narrate_lead(agent: Agent, clock: ScaledClock, tz: ZoneInfo, out: TextIO, start_ts: float) -> None:
    """Before the event: say what the agent does meanwhile (polls, gathers the baseline's history)."""
    window_min = BASELINE_MIN
    first = True
    while clock.now() < start_ts - 90:
        await clock.sleep(60 if first else 240)
        if clock.now() >= start_ts - 30:
            return
        recent = agent.recent
        have = min(window_min, (recent[-1][0] - recent[0][0]) / 60) if len(recent) > 1 else 0.0
        load = agent.site_load_kw()
        load_s = "unknown" if load is None else f"{load:.1f} kW"
        if first:
            print(
                f"{_t(clock, tz)} agent: polling {len(agent.devices)} devices every "
                f"{agent.cfg.modbus.poll_interval_s:g} s, site load {load_s}; the baseline will be the mean "
                f"load of the {window_min:g} min before the start ({have:.0f} of {window_min:g} min recorded)",
                file=out,
            )
        else:
            print(
                f"{_t(clock, tz)} agent: polling, site load {load_s}; baseline history {have:.0f} of "
                f"{window_min:g} min",
                file=out,
            )
        out.flush()
        first = False


async def _follow(
    client: aiomqtt.Client,
    clock: ScaledClock,
    tz: ZoneInfo,
    out: TextIO,
    event_id: str,
    lo: float,
    hi: float,
    narrator: asyncio.Task[None],
) -> dict[str, Any] | None:
    last_minute = None
    ruler_shown = False
    reached_band = False
    restoring_said = False
    async with asyncio.timeout(3600 / max(1.0, clock.speed) * 3 + 120):
        async for msg in client.messages:
            topic = str(msg.topic)
            body = json.loads(msg.payload if isinstance(msg.payload, (bytes, str)) else b"{}")
            if topic.endswith("/out/response"):
                if body["opt"] == "in":
                    committed = body.get("committed_kw")
                    what = f", commits {committed:g} kW" if committed is not None else ""
                    why = "" if body.get("code") == "accepted" else f" ({body['code']}: {body['reason']})"
                    print(f"{_t(clock, tz)} agent: opted in{what}{why}", file=out)
                else:
                    print(f"{_t(clock, tz)} agent: opted out ({body['code']}): {body['reason']}", file=out)
                    return None
            elif topic.endswith("/out/error"):
                print(f"{_t(clock, tz)} agent error: {body}", file=out)
            elif "/out/event/" in topic:
                state = body["state"]
                words = STATE_WORDS.get(state, state).format(notice=f"{NOTICE_S / 60:g}")
                print(f"{_t(clock, tz)} event {body['event_id']} is {words}", file=out)
                if state == "active":
                    narrator.cancel()
            elif topic.endswith("/out/report"):
                minute = int(body["ts"] // 60)
                if minute == last_minute or body.get("realized_kw") is None:
                    continue
                last_minute = minute
                r = body["realized_kw"]
                if body.get("phase") == "restoring":
                    # The event is over: the band no longer applies.
                    flag = "restoring" if restoring_said else "restoring: devices come back one by one"
                    restoring_said = True
                elif body["in_band"]:
                    flag = "in band"
                    reached_band = True
                elif not reached_band and r < lo:
                    flag = "ramping toward the band"
                else:
                    flag = "OUT of band, " + ("below" if r < lo else "above")
                n = len(body["active_steps"])
                prefix = (
                    f"{_t(clock, tz)} load {body['measured_kw']:7.1f} kW  baseline {body['baseline_kw']:7.1f}  "
                    f"shed {r:6.1f} kW ({body['realized_pct_of_peak']:5.1f} %) "
                )
                if not ruler_shown:
                    ruler_shown = True
                    caption = "kW shed: "
                    print(f"{caption:>{len(prefix)}}{_ruler(lo, hi)}", file=out)
                print(f"{prefix}{_bar(r, lo, hi)} {n:2d} step{'s' if n != 1 else ' '} shed  {flag}", file=out)
                out.flush()
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
    from agent.platform.logs import setup_logging

    setup_logging(os.environ.get("DR_AGENT_DEMO_LOG", "warning"), "text")
    out = sys.stderr if args.json else sys.stdout
    if args.keep_db:
        keep = Path(args.keep_db).resolve()
        keep.unlink(missing_ok=True)  # a fresh demo: no events of an earlier run in the books
        args.keep_db = str(keep)
    try:
        result = asyncio.run(demo(args, out))
    except ConfigError as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return 1
    except DemoError as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    settlement = result["settlement"]
    if args.json and settlement is not None:
        print(json.dumps(settlement))
    if getattr(args, "keep_running", False):
        print(f"The demo's folder is kept: {result['folder']} (remove it when done)", file=out)
    with contextlib.suppress(Exception):
        out.flush()
    if result["restored"] is False:
        return 1
    if result["interrupted"]:
        # --keep-running ends with Ctrl-C: that is its normal end.
        return 0 if getattr(args, "keep_running", False) else 130
    if settlement is None:
        print("demo: no settlement was published", file=sys.stderr)
        return 1
    return 0
