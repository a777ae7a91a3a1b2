"""`dr-agent sim`: a site's devices as simulators on loopback, to rehearse and train with `dr-agent run`.

The simulated plant of `dr-agent demo` (drivers/sim: device physics, register
banks laid out by the devices' own profiles, a site meter that adds them up)
is built from the site config's devices, meter included, and served over
Modbus TCP, one server per endpoint. Beside it goes a rehearsal config: the
site's own config (conf.d merged) with only the endpoints, the broker, the
database and the metrics port changed, so `dr-agent run -c` that file runs the
production daemon, unchanged, against the simulators. Serial endpoints are
served as Modbus TCP. Runs until Ctrl-C or SIGTERM; every write the agent
makes is printed, so a trainee sees what the agent does to the plant.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import signal
import sys
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

#: Without --at outside the contract's hours, the simulated clock starts this long before they open:
#: the agent has the meter history a baseline needs before the first event may start.
LEAD_BEFORE_HOURS = timedelta(minutes=20)
#: The first line of every rehearsal config: sim overwrites only files that start with it.
HEADER = "# Rehearsal config written by"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sim",
        help="serve a site's devices as simulators on loopback and write a config for `dr-agent run` (rehearsal)",
        description="Serve the site's devices, meter included, as simulated devices over Modbus TCP on "
        "loopback ports, write a rehearsal config that points `dr-agent run` at them, print the command, "
        "and run until Ctrl-C or SIGTERM.",
    )
    p.add_argument("-c", "--config", required=True, help="site config YAML")
    p.add_argument(
        "--overlay",
        help="where to write the rehearsal config (default ./rehearsal-<site id>.yaml); its database "
        "goes beside it (.sqlite)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address the simulators listen on (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        default=0,
        help="first Modbus port, one per endpoint in order (default: free ports)",
    )
    p.add_argument(
        "--mqtt",
        default="127.0.0.1:1883",
        metavar="HOST:PORT",
        help="the broker the rehearsing agent uses, plain TCP (default 127.0.0.1:1883)",
    )
    p.add_argument(
        "--keep-mqtt", action="store_true", help="keep the site's own mqtt section (its broker, TLS, user)"
    )
    p.add_argument(
        "--at",
        help="local time HH:MM the simulated day starts at (default: now if inside the contract's "
        "allowed hours, else 20 min before they open)",
    )
    p.add_argument(
        "--speed", type=float, default=1.0, help="time compression, e.g. 60 (default 1: real time)"
    )
    p.add_argument("--seed", type=int, default=1, help="noise seed of the simulated plant (default 1)")
    p.add_argument(
        "--profile",
        choices=["factory", "office", "warehouse"],
        default="factory",
        help="the site's daily load shape (default factory)",
    )
    p.set_defaults(func=run)


def sim_origin(cfg: Any, hhmm: str | None, now: datetime) -> tuple[datetime, str]:
    """Where the simulated clock starts, and (without --at, outside the hours) one line saying why."""
    tz = now.tzinfo
    if hhmm is not None:
        try:
            t = time.fromisoformat(hhmm)
        except ValueError:
            raise SystemExit(f"--at {hhmm!r}: write HH:MM, e.g. 10:30") from None
        return datetime.combine(now.date(), t, tzinfo=tz), ""
    hours = cfg.contract.allowed_hours
    if not hours:
        return now, ""
    lo, hi = (time.fromisoformat(h) for h in hours)
    if lo <= now.time() < hi:
        return now, ""
    start = datetime.combine(now.date(), lo, tzinfo=tz) - LEAD_BEFORE_HOURS
    return start, (
        f"the simulated day starts at {start:%H:%M}, {LEAD_BEFORE_HOURS.seconds // 60} min before the "
        f"contract's allowed hours {hours[0]}-{hours[1]} (now, {now:%H:%M}, events are refused); "
        "--at HH:MM for another time"
    )


def _parse_hostport(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"--mqtt {spec!r}: write HOST:PORT, e.g. 127.0.0.1:1883")
    return host, int(port)


def rehearsal_config(
    main: Path,
    ports: dict[str, int],
    *,
    host: str,
    db: Path,
    mqtt: tuple[str, int] | None,
) -> dict[str, Any]:
    """The site's config as written (conf.d merged), pointed at the simulators, a broker and a database.

    Paths the loader resolves against the config's folder or the working directory are made
    absolute, so the rehearsal config works wherever it is written.
    """
    from agent.config.yamlsource import expand_config_paths, load_yaml_files

    data: dict[str, Any] = copy.deepcopy(load_yaml_files(expand_config_paths(main)).data)
    modbus = data.setdefault("modbus", {})
    endpoints = []
    for ep in modbus.get("endpoints") or []:
        entry = {"name": ep["name"], "protocol": "tcp", "host": host, "port": ports[ep["name"]]}
        if "timeout_s" in ep:
            entry["timeout_s"] = ep["timeout_s"]
        endpoints.append(entry)
    modbus["endpoints"] = endpoints
    if mqtt is not None:
        section = dict(data.get("mqtt") or {})
        for key in ("tls", "username"):
            section.pop(key, None)  # a local rehearsal broker: plain TCP, anonymous
        section["host"], section["port"] = mqtt
        data["mqtt"] = section
    data["storage"] = {**(data.get("storage") or {}), "path": str(db)}
    # Any free port: a rehearsal on the gateway itself must not take the running agent's.
    data["metrics"] = {**(data.get("metrics") or {}), "port": 0}
    files = data.get("strategy_files")
    if isinstance(files, list):
        data["strategy_files"] = [
            f if not isinstance(f, str) or Path(f).is_absolute() else str((main.parent / f).resolve())
            for f in files
        ]
    for dev in data.get("devices") or []:
        prof = dev.get("profile") if isinstance(dev, dict) else None
        if isinstance(prof, str) and Path(prof).suffix in (".yaml", ".yml"):
            dev["profile"] = str(Path(prof).resolve())  # profile files are relative to the working dir
    return data


def _endpoint_ports(cfg: Any, host: str, first: int) -> dict[str, int]:
    from drivers.sim.server import free_port

    if first:
        return {ep.name: first + i for i, ep in enumerate(cfg.modbus.endpoints)}
    return {ep.name: free_port(host) for ep in cfg.modbus.endpoints}


@dataclass
class Rehearsal:
    """What `dr-agent sim` serves and writes, decided before anything starts."""

    main: Path
    cfg: Any
    overlay: Path
    db: Path
    host: str  # where the simulators listen
    connect_host: str  # what the rehearsal config points at
    ports: dict[str, int]
    mqtt: tuple[str, int] | None
    origin: datetime
    origin_note: str
    speed: float
    seed: int
    explicit_at: bool
    profile: str = "factory"


def prepare(args: argparse.Namespace) -> Rehearsal:
    """Check the arguments and the site config; raises SystemExit(message) on bad input."""
    from agent.config.load import ConfigError, load_site_config

    main = Path(args.config)
    try:
        cfg, _warnings = load_site_config(main)
    except ConfigError as exc:
        raise SystemExit("\n".join(exc.lines)) from None
    if args.speed <= 0:
        raise SystemExit(f"--speed {args.speed:g}: must be > 0")
    mqtt = None if args.keep_mqtt else _parse_hostport(args.mqtt)
    tz = ZoneInfo(cfg.site.timezone)
    origin, note = sim_origin(cfg, args.at, datetime.now(tz).replace(microsecond=0))
    overlay = Path(args.overlay or f"rehearsal-{cfg.site.id}.yaml").resolve()
    conf_d = overlay.parent / "conf.d"
    if conf_d.is_dir() and any(conf_d.glob("*.yaml")):
        # The loader would merge that conf.d over the rehearsal (perhaps the real broker): refuse.
        raise SystemExit(
            f"--overlay {overlay}: {conf_d} would be merged over the rehearsal config; write it elsewhere"
        )
    if overlay.exists() and not overlay.read_text(encoding="utf-8", errors="replace").startswith(HEADER):
        # Never overwrite the site's config (or anything else) with a rehearsal.
        raise SystemExit(f"--overlay {overlay}: exists and is not a rehearsal config; choose another file")
    db = overlay.with_suffix(".sqlite")
    if db.resolve() == cfg.storage.resolved().resolve():
        raise SystemExit(
            f"--overlay {overlay}: its database {db} would be the site's own; choose another name"
        )
    return Rehearsal(
        main=main,
        cfg=cfg,
        overlay=overlay,
        db=db,
        host=args.host,
        connect_host="127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host,
        ports=_endpoint_ports(cfg, args.host, args.port),
        mqtt=mqtt,
        origin=origin,
        origin_note=note,
        speed=args.speed,
        seed=args.seed,
        explicit_at=args.at is not None,
        profile=getattr(args, "profile", "factory"),
    )


def write_rehearsal_config(r: Rehearsal) -> Any:
    """Write the rehearsal config and load it back as `dr-agent run` will (raises ConfigError, OSError)."""
    import yaml

    from agent.config.load import load_site_config

    data = rehearsal_config(r.main, r.ports, host=r.connect_host, db=r.db, mqtt=r.mqtt)
    written = datetime.now(ZoneInfo(r.cfg.site.timezone))
    header = (
        f"{HEADER} `dr-agent sim -c {r.main}` at {written:%Y-%m-%d %H:%M}.\n"
        "# The site's config with its Modbus endpoints pointed at simulators on loopback, its own\n"
        "# broker, database and metrics port. For rehearsals and training, never for the site itself.\n"
    )
    r.overlay.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    rcfg, _ = load_site_config(r.overlay)
    return rcfg


async def serve(r: Rehearsal, out: TextIO) -> int:
    """Serve the plant and write the rehearsal config; returns when stopped (SIGINT, SIGTERM)."""
    from agent.config.load import ConfigError
    from agent.platform.clock import ScaledClock
    from drivers.sim.models import PROFILES
    from drivers.sim.plant import PlantOptions, SimEndpoint, SimulatedPlant

    cfg = r.cfg
    tz = ZoneInfo(cfg.site.timezone)
    offset = r.origin.utcoffset()
    plant = SimulatedPlant.build(
        cfg.devices,
        peak_kw=cfg.contract.peak_kw,
        meter_name=cfg.site.meter,
        seed=r.seed,
        tz_offset_s=offset.total_seconds() if offset else 0.0,
        options=PlantOptions(profile=PROFILES[r.profile]),
    )
    clock = ScaledClock(r.speed, origin_sim=r.origin.timestamp())
    plant.step(clock.now())  # the meter shows a load from the first request on
    _print_writes(plant, clock, tz, out)
    try:
        await plant.serve([SimEndpoint(ep.name, r.host, r.ports[ep.name]) for ep in cfg.modbus.endpoints])
        rcfg = await asyncio.to_thread(write_rehearsal_config, r)
    except (OSError, ConfigError) as exc:
        await plant.stop()
        lines = exc.lines if isinstance(exc, ConfigError) else [f"dr-agent sim: {exc}"]
        print("\n".join(lines), file=sys.stderr)
        return 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    plant_task = asyncio.create_task(plant.run(clock), name="plant")
    try:
        _print_banner(out, r, rcfg, plant, clock)
        await stop.wait()
    finally:
        plant_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await plant_task
        await plant.stop()
    print("dr-agent sim: stopped", file=out, flush=True)
    return 0


def _print_writes(plant: Any, clock: Any, tz: ZoneInfo, out: TextIO) -> None:
    """Print each point a client writes, after the device model has taken it.

    Heartbeats (a watchdog's counter or constant) and a value written again unchanged (a
    watchdog's rewrite) are left out: a trainee sees what the agent changes, not it keeping alive.
    """
    for name, bank in plant.banks.items():
        inner = bank.on_write
        w = bank.source_profile.watchdog
        quiet: set[str] = set()
        if w is not None and w.mode in ("counter", "constant") and bank.has(w.point):
            hb = bank.point(w.point)
            quiet = {hb.name, hb.role or hb.name}
        last: dict[str, Any] = {}

        def hook(
            key: str,
            value: Any,
            name: str = name,
            inner: Any = inner,
            quiet: set[str] = quiet,
            last: Any = last,
        ) -> None:
            if inner is not None:
                inner(key, value)
            if key in quiet or last.get(key, object()) == value:
                return
            last[key] = value
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            when = datetime.fromtimestamp(clock.now(), tz)
            print(f"{when:%H:%M:%S} write {name} {key} = {shown}", file=out, flush=True)

        bank.on_write = hook


def _print_banner(out: TextIO, r: Rehearsal, rcfg: Any, plant: Any, clock: Any) -> None:
    cfg, ports, host = r.cfg, r.ports, r.connect_host
    tz = ZoneInfo(cfg.site.timezone)
    now = datetime.fromtimestamp(clock.now(), tz)
    print(
        f"dr-agent sim: {cfg.site.name or cfg.site.id}, {len(cfg.devices)} simulated devices over Modbus TCP, "
        f"site load {plant.site_kw():.0f} kW, simulated clock {now:%Y-%m-%d %H:%M:%S} at {clock.speed:g}x",
        file=out,
    )
    if r.origin_note:
        print(r.origin_note, file=out)
    for ep in cfg.modbus.endpoints:
        devs = [d for d in cfg.devices if d.endpoint == ep.name]
        what = ", ".join(f"{d.name} (unit {d.unit_id}, {d.kind})" for d in devs) or "no devices"
        was = f"{ep.serial_port}, rtu" if ep.protocol == "rtu" else f"{ep.host}:{ep.port}, {ep.protocol}"
        print(f"  {ep.name:14} {host}:{ports[ep.name]:<5}  (was {was}): {what}", file=out)
    m = rcfg.mqtt
    print(
        f"rehearsal config: {r.overlay} (broker {m.host}:{m.port}, topics {rcfg.topic_root}/..., "
        f"database {rcfg.storage.path})",
        file=out,
    )
    if m.security is not None and m.security.require_signature:
        print("events must be signed (mqtt.security): the provider's key is needed to send one", file=out)
    command = f"dr-agent run -c {r.overlay}"
    if clock.speed != 1 or r.explicit_at or r.origin_note:
        command += f" --clock {clock.spec()}"  # the agent shares this simulated clock
    print("run the agent against it, in another terminal:", file=out)
    print(f"  {command}", file=out)
    print(
        f"send an event to {rcfg.topic_root}/in/event (docs/mqtt-api.md); Ctrl-C stops", file=out, flush=True
    )


def run(args: argparse.Namespace) -> int:
    try:
        r = prepare(args)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2 if str(exc).startswith("--") else 1
    try:
        return asyncio.run(serve(r, sys.stdout))
    except KeyboardInterrupt:
        return 130
