"""`dr-agent plan`: what the controller would do for a target, step by step, before any event.

The plan runs the controller's own decision function (`agent.control.controller.decide`)
over the strategy's steps with their expected kW, as if each step delivered
its estimate, so the order, the step sizes and where it stops are the ones the
controller would choose. Device states come from the real devices (one poll),
the simulated plant (--sim), or a given site load (--load-kw, device states
from the simulated defaults); a recorded day (--recorded CSV) gives the load
at --at.

A plan is a rehearsal: it never writes to a device. The poll runs with
`Device.read_only` (no start-up writes such as a charger's failsafe current)
over transports that refuse every write.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import sys
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from drivers.device import WriteError
from strategies.engine import NotApplicable, Step, build_steps, precool_value, shed_value
from strategies.model import EvChargerAction, HvacAction, LightingAction, RelayAction, StorageAction

POLL_TIMEOUT_S = 5.0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="rehearse a strategy: the steps the controller would take for a target, with expected kW",
        description="Print, for a target, the stages and actions the controller would take in order, with "
        "the expected kW of each, the cumulative curtailment against the contracted band, and the "
        "constraints that would stop or limit it.",
    )
    p.add_argument("-c", "--config", required=True, help="site config YAML")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-kw", type=float, help="requested reduction, kW")
    target.add_argument("--target-pct", type=float, help="requested reduction, %% of the contract peak")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--load-kw", type=float, help="site load now, kW (device states: simulated defaults)")
    source.add_argument("--sim", action="store_true", help="read the simulated plant instead of the devices")
    source.add_argument("--recorded", help="CSV of a recorded day (ts,kw): the site load at --at")
    p.add_argument("--program", default="contracted", choices=["contracted", "realtime", "price"])
    p.add_argument(
        "--at",
        help="local time of day HH:MM the event would start (default: now if inside the contract's "
        "allowed hours, else their start)",
    )
    p.add_argument("--duration-min", type=float, default=30.0, help="event length, min (default 30)")
    p.add_argument("--strategy", help="plan this strategy (by name) instead of the program's")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.add_argument("-v", "--verbose", action="store_true", help="show the agent's log lines (device errors)")
    p.set_defaults(func=run)


@dataclass
class PlannedStep:
    """One step of the plan and what would happen to it."""

    step: str
    stage: str
    device: str
    kind: str
    what: str
    expected_kw: float
    status: str  # shed | reserve | skipped | not-now
    cumulative_kw: float | None = None
    band: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "stage": self.stage,
            "device": self.device,
            "kind": self.kind,
            "what": self.what,
            "expected_kw": round(self.expected_kw, 2),
            "status": self.status,
            "cumulative_kw": None if self.cumulative_kw is None else round(self.cumulative_kw, 2),
            "band": self.band,
            "notes": self.notes,
        }


def _describe(step: Step, original: float | None, value: float | bool | None, dev: Any) -> str:
    a = step.action
    if isinstance(a, HvacAction):
        frm = f"{original:g}" if original is not None else "?"
        return f"setpoint {frm} -> {value} °C" if value is not None else "setpoint"
    if isinstance(a, LightingAction):
        frm = f"{original:g}" if original is not None else "?"
        return f"dim {frm} -> {value:g} %" if isinstance(value, float | int) else "dim"
    if isinstance(a, EvChargerAction):
        frm = f"{original:g}" if original is not None else "?"
        if value == 0:
            return f"pause (limit {frm} -> 0 A)"
        return f"cap {frm} -> {value} A" if value is not None else "cap"
    if isinstance(a, StorageAction):
        return f"discharge {value} kW" if value is not None else "discharge"
    if isinstance(a, RelayAction):
        return "switch off"
    return a.kind


def _constraints(step: Step, duration_s: float, dev: Any) -> list[str]:
    a = step.action
    notes = []
    if a.min_hold_s:
        notes.append(f"held >= {a.min_hold_s:g} s")
    if a.max_shed_s is not None:
        if a.max_shed_s < duration_s:
            notes.append(
                f"max_shed_s {a.max_shed_s:g} s < event {duration_s:g} s: released at "
                f"+{a.max_shed_s / 60:g} min, the controller then needs another step"
            )
        else:
            notes.append(f"max {a.max_shed_s:g} s")
    if a.cooldown_s:
        notes.append(f"cooldown {a.cooldown_s:g} s before it may be shed again")
    if isinstance(a, RelayAction) and (a.min_off_s or a.min_on_s):
        notes.append(f"min off {a.min_off_s or 0:g} s / min on {a.min_on_s or 0:g} s")
    if isinstance(a, HvacAction):
        lo, hi = a.comfort_limits(*dev.setpoint_limits_c())
        notes.append(f"comfort {lo:g}-{hi:g} °C")
    if isinstance(a, LightingAction):
        notes.append(f"floor {max(dev.min_level_pct(), a.floor_pct or 0):g} %")
    if isinstance(a, EvChargerAction):
        lo, hi = dev.current_range_a()
        prio = getattr(dev.config, "priority", 0)
        notes.append(
            f"min {lo:g} A{' (pause allowed)' if a.pause else ''}" + (f", priority {prio}" if prio else "")
        )
    if isinstance(a, StorageAction):
        reserve = max(a.reserve_soc_pct or 0.0, dev.reserve_soc_pct())
        soc = dev.soc_pct()
        notes.append(
            f"reserve {reserve:g} % (SOC {soc:g} %)" if soc is not None else f"reserve {reserve:g} %"
        )
        cap = getattr(dev.config, "capacity_kwh", None)
        if soc is not None and cap:
            usable_h = max(0.0, soc - reserve) / 100 * cap / max(0.1, step.estimate_kw)
            if usable_h * 3600 < duration_s:
                notes.append(f"runs {usable_h * 60:.0f} min to reserve, shorter than the event")
    return notes


class ReadOnlyTransport:
    """A transport that reads and refuses every write: a rehearsal never changes a device.

    A refused write fails like one the device refused (WriteError), so a poll that tried one
    marks the device unreachable instead of crashing the plan.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name

    async def read(self, unit: int, function: Any, address: int, count: int) -> list[int] | list[bool]:
        result: list[int] | list[bool] = await self.inner.read(unit, function, address, count)
        return result

    async def write_registers(self, unit: int, address: int, values: list[int]) -> None:
        raise WriteError(f"{self.name}: unit {unit}: a plan does not write to devices")

    async def write_coil(self, unit: int, address: int, value: bool) -> None:
        raise WriteError(f"{self.name}: unit {unit}: a plan does not write to devices")


async def _poll_real(cfg: Any) -> tuple[dict[str, Any], str]:
    from agent.runtime.daemon import build_devices

    transports, devices = build_devices(cfg)
    for d in devices.values():
        d.read_only = True  # no start-up writes (a charger's failsafe current): the daemon does those
        d.transport = ReadOnlyTransport(d.transport)
    try:
        async with asyncio.timeout(POLL_TIMEOUT_S * 2):
            await asyncio.gather(*(d.poll() for d in devices.values()))
    except TimeoutError:
        pass
    finally:
        for t in transports.values():
            await t.close()
    return devices, "device readings (one poll)"


async def _poll_sim(cfg: Any, at_ts: float) -> tuple[dict[str, Any], Any]:
    from agent.cli.simulate import loopback_transports
    from agent.runtime.daemon import build_devices
    from drivers.sim.plant import SimulatedPlant

    tz = ZoneInfo(cfg.site.timezone)
    offset = datetime.fromtimestamp(at_ts, tz).utcoffset()
    plant = SimulatedPlant.build(
        cfg.devices,
        peak_kw=cfg.contract.peak_kw,
        meter_name=cfg.site.meter,
        tz_offset_s=offset.total_seconds() if offset else 0.0,
    )
    plant.step(at_ts)
    _t, devices = build_devices(cfg, loopback_transports(cfg, plant))
    for d in devices.values():
        await d.poll()
    return devices, plant


def _recorded_load(path: str, at: datetime) -> float:
    """The load at `at`'s time of day in a CSV of (ts, kW): ts as epoch seconds or ISO 8601."""
    rows: list[tuple[float, float]] = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            if len(row) < 2 or not row[0].strip() or row[0].strip().startswith("#"):
                continue
            try:
                kw = float(row[1])
            except ValueError:
                continue  # a header
            raw = row[0].strip()
            try:
                ts = float(raw)
                local = datetime.fromtimestamp(ts, at.tzinfo)
            except ValueError:
                local = datetime.fromisoformat(raw)
                if local.tzinfo is None:
                    local = local.replace(tzinfo=at.tzinfo)
            rows.append((local.hour * 3600 + local.minute * 60 + local.second, kw))
    if not rows:
        raise ValueError(f"{path}: no (ts, kW) rows")
    want = at.hour * 3600 + at.minute * 60
    before = [r for r in sorted(rows) if r[0] <= want]
    return (before[-1] if before else sorted(rows)[0])[1]


def _controller_adds(
    candidates: list[Step], realized: float, aim: float, band: tuple[float, float], deadband: float
) -> tuple[list[tuple[Step, float, float]], str]:
    """The steps the controller's own `decide()` adds next, as (step, kW, depth), or why it adds none.

    Every step is assumed to deliver its estimate, and time to have settled.
    """
    from agent.control.controller import Option, decide

    options = [Option(st, st.estimate_kw, st.traits.continuous) for st in candidates]
    decisions = decide(
        now=0.0,
        predicted_kw=realized,
        aim=aim,
        band=band,
        deadband_kw=deadband,
        settle_s=0.0,
        last_add=None,
        last_release=None,
        held=[],
        options=options,
    )
    adds = [(d.step, d.kw, d.depth) for d in decisions if d.action == "add" and d.step is not None]
    return adds, "; ".join(d.reason for d in decisions if d.action != "add") or "no step to add"


def make_plan(
    cfg: Any,
    devices: dict[str, Any],
    *,
    load_kw: float,
    target_kw: float,
    program: str,
    at: datetime,
    duration_s: float,
    strategy_name: str | None = None,
) -> dict[str, Any]:
    """The plan as data: steps in the order the controller would add them, then the rest."""
    from agent.control.controller import aim_kw

    if strategy_name:
        strategy = next(s for s in cfg.strategies if s.name == strategy_name)
    else:
        strategy = cfg.strategy_for(program)
    lo, hi = cfg.contract.band_kw()
    peak = cfg.contract.peak_kw
    committed = min(max(target_kw, lo), hi)
    deadband = peak * cfg.control.deadband_pct / 100
    aim = aim_kw(committed, (lo, hi), deadband)
    steps = build_steps(strategy, devices)
    planned: dict[str, PlannedStep] = {}
    usable: list[Step] = []
    values: dict[str, float | bool] = {}
    for st in steps:
        dev = devices[st.device]
        original = dev.reading(st.role)
        ps = PlannedStep(st.id, st.stage, st.device, st.action.kind, "", st.estimate_kw, "reserve")
        ps.notes = _constraints(st, duration_s, dev)
        planned[st.id] = ps
        if not dev.health.available or (not dev.values and st.role != "switch"):
            ps.status, ps.what = "skipped", _describe(st, original, None, dev)
            ps.notes.insert(0, "device unreachable: state unknown, the controller will not act on it")
            continue
        if not st.allowed_at(at):
            ps.status, ps.what = "not-now", _describe(st, original, None, dev)
            hours = st.action.allowed_hours or ("", "")
            ps.notes.insert(0, f"allowed_hours {hours[0]}-{hours[1]}: not at {at:%H:%M}")
            continue
        try:
            value = shed_value(st, dev, original)
        except NotApplicable as exc:
            ps.status, ps.what = "skipped", _describe(st, original, None, dev)
            ps.notes.insert(0, f"not applicable: {exc}")
            continue
        values[st.id] = value
        ps.what = _describe(st, original, value, dev)
        pre = precool_value(st, dev, original)
        if pre is not None and isinstance(st.action, HvacAction) and st.action.precool is not None:
            ps.notes.append(
                f"pre-cool to {pre:g} °C from {st.action.precool.lead_s / 60:g} min before the start"
            )
        usable.append(st)
    order: list[str] = []
    realized = 0.0
    stop_reason = ""
    for _ in range(len(usable) + 1):
        adds, reason = _controller_adds(
            [s for s in usable if s.id not in order], realized, aim, (lo, hi), deadband
        )
        if not adds:
            stop_reason = reason
            break
        for st, kw, depth in adds:
            order.append(st.id)
            realized += kw
            ps = planned[st.id]
            ps.status, ps.cumulative_kw, ps.expected_kw = "shed", realized, kw
            if depth < 0.999:
                ps.notes.insert(0, f"partly: {depth * 100:.0f} % of the step (continuous actuator)")
            ps.band = "below" if realized < lo else ("in band" if realized <= hi else "above")
    reached = realized
    if reached < lo:
        verdict = f"short of the band minimum by {lo - reached:.1f} kW"
    elif reached > hi:
        verdict = f"above the band maximum by {reached - hi:.1f} kW"
    else:
        verdict = "in band"
    rest = [planned[s.id] for s in steps if s.id not in order]
    return {
        "site_id": cfg.site.id,
        "strategy": strategy.name,
        "program": program,
        "at": at.isoformat(),
        "duration_s": duration_s,
        "load_kw": round(load_kw, 2),
        "target_kw": round(target_kw, 2),
        "committed_kw": round(committed, 2),
        "aim_kw": round(aim, 2),
        "band_kw": [round(lo, 2), round(hi, 2)],
        "band_pct": list(cfg.contract.band_pct),
        "deadband_kw": round(deadband, 2),
        "steps": [planned[i].as_dict() for i in order],
        "not_used": [p.as_dict() for p in rest],
        "expected_kw": round(reached, 2),
        "expected_pct_of_peak": round(reached / peak * 100, 2),
        "verdict": verdict,
        "in_band": lo <= reached <= hi,
        "stopped_because": stop_reason,
        "restore": strategy.restore.model_dump(),
    }


def print_plan(plan: dict[str, Any], source: str, out: TextIO) -> None:
    lo, hi = plan["band_kw"]
    print(
        f"plan: site {plan['site_id']}, strategy {plan['strategy']} ({plan['program']}), "
        f"event at {plan['at'][11:16]} for {plan['duration_s'] / 60:g} min; site load {plan['load_kw']:.1f} kW "
        f"({source})",
        file=out,
    )
    note = "" if plan["target_kw"] == plan["committed_kw"] else f" (target {plan['target_kw']:g} kW, clamped)"
    print(
        f"band {lo:.1f}-{hi:.1f} kW ({plan['band_pct'][0]:g}-{plan['band_pct'][1]:g} % of peak); "
        f"committed {plan['committed_kw']:.1f} kW{note}; the controller aims at {plan['aim_kw']:.1f} kW",
        file=out,
    )
    print(f"{'#':>2}  {'stage':12} {'device':16} {'action':28} {'exp kW':>7} {'cum kW':>7}  band", file=out)
    for i, s in enumerate(plan["steps"], 1):
        print(
            f"{i:>2}  {s['stage'][:12]:12} {s['device'][:16]:16} {s['what'][:28]:28} {s['expected_kw']:7.1f} "
            f"{s['cumulative_kw']:7.1f}  {s['band']}",
            file=out,
        )
        if s["notes"]:
            print(f"{'':4}{'; '.join(s['notes'])}", file=out)
    print(
        f"result: about {plan['expected_kw']:.1f} kW ({plan['expected_pct_of_peak']:.1f} % of peak): "
        f"{plan['verdict']}; stops because: {plan['stopped_because']}",
        file=out,
    )
    if plan["not_used"]:
        print("not used:", file=out)
        for s in plan["not_used"]:
            why = s["notes"][0] if s["status"] in ("skipped", "not-now") and s["notes"] else "held in reserve"
            print(
                f"    {s['step'][:40]:40} {s['expected_kw']:6.1f} kW  {s['status']}: {why}",
                file=out,
            )
    r = plan["restore"]
    print(
        f"restore: last shed first, every {r['step_interval_s']:g} s"
        + (f" (spread over >= {r['ramp_s']:g} s)" if r["ramp_s"] else "")
        + (
            f", held while load > baseline x {r['rebound_cap_factor']:g} for {r['rebound_window_s']:g} s"
            if r["rebound_cap_factor"]
            else ""
        ),
        file=out,
    )


def _at(
    cfg: Any, hhmm: str | None, duration_s: float = 0.0, now: datetime | None = None
) -> tuple[datetime, str]:
    """When the planned event starts, and (without --at) one line saying why then."""
    tz = ZoneInfo(cfg.site.timezone)
    if hhmm is not None:
        try:
            t = time.fromisoformat(hhmm)
        except ValueError:
            raise SystemExit(f"--at {hhmm!r}: write HH:MM, e.g. 11:00") from None
        return datetime.combine(date.today(), t, tzinfo=tz), ""
    now = (now or datetime.now(tz)).replace(second=0, microsecond=0)
    hours = cfg.contract.allowed_hours
    if not hours:
        return (
            now,
            f"planned for now, {now:%H:%M} (the contract sets no allowed hours; --at HH:MM for another time)",
        )
    lo, hi = (time.fromisoformat(h) for h in hours)
    end = now + timedelta(seconds=duration_s)
    if lo <= now.time() and end.date() == now.date() and end.time() <= hi:
        return now, f"planned for now, {now:%H:%M}, inside the contract's allowed hours {hours[0]}-{hours[1]}"
    start = datetime.combine(now.date(), lo, tzinfo=tz)
    return start, (
        f"planned for {hours[0]}, the start of the contract's allowed hours {hours[0]}-{hours[1]} "
        f"(a {duration_s / 60:g}-min event cannot run now, at {now:%H:%M}); --at HH:MM for another time"
    )


def run(args: argparse.Namespace) -> int:
    from agent.config.load import ConfigError, load_site_config

    try:
        cfg, _warnings = load_site_config(args.config)
    except ConfigError as exc:
        for line in exc.lines + exc.warnings:
            print(line, file=sys.stderr)
        return 1
    if args.strategy and args.strategy not in {s.name for s in cfg.strategies}:
        print(
            f"--strategy {args.strategy!r}: no such strategy; have: {', '.join(s.name for s in cfg.strategies)}",
            file=sys.stderr,
        )
        return 1
    if args.verbose:
        from agent.platform.logs import setup_logging

        setup_logging("info", "text")
    else:
        # A plan prints its findings itself (an unreachable device is "skipped" in the table).
        logging.getLogger().addHandler(logging.NullHandler())
    try:
        at, at_note = _at(cfg, args.at, args.duration_min * 60)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    peak = cfg.contract.peak_kw
    target = args.target_kw if args.target_kw is not None else peak * args.target_pct / 100
    if args.load_kw is not None or args.sim or args.recorded:
        devices, plant = asyncio.run(_poll_sim(cfg, at.timestamp()))
        if args.load_kw is not None:
            load, source = args.load_kw, "given; device states: simulated defaults"
        elif args.recorded:
            try:
                load = _recorded_load(args.recorded, at)
            except (OSError, ValueError) as exc:
                print(f"--recorded: {exc}", file=sys.stderr)
                return 1
            source = f"recorded {Path(args.recorded).name}; device states: simulated defaults"
        else:
            load, source = plant.site_kw(), "simulated plant"
    else:
        devices, source = asyncio.run(_poll_real(cfg))
        meter = devices[cfg.site.meter]
        kw = meter.power_kw()
        if kw is None:
            print(
                f"plan: no readings: cannot read the site meter {cfg.site.meter!r} "
                f"({meter.health.last_error or 'no data'}); add --sim (the simulated plant), --load-kw KW "
                "(the site load) or --recorded FILE.csv (a recorded day)",
                file=sys.stderr,
            )
            return 1
        load = kw
    plan = make_plan(
        cfg,
        devices,
        load_kw=load,
        target_kw=target,
        program=args.program,
        at=at,
        duration_s=args.duration_min * 60,
        strategy_name=args.strategy,
    )
    plan["source"] = source
    if at_note:
        plan["at_note"] = at_note
    if args.json:
        print(json.dumps(plan))
    else:
        if at_note:
            print(at_note)
        print_plan(plan, source, sys.stdout)
    return 0
