"""`dr-agent simulate`: rehearse one event with the real controller against the simulated plant.

The plant is built from the config's own devices and runs faster than real
time; the agent code is production's, via `agent.cli.simulate.simulate_event`.
Prints the timeline (each step shed or released, a line a minute) and the
settlement, or with --json one object a script can check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from agent.cli.plot import INSTALL_HINT, charts_available


def register(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="rehearse an event against the simulated plant (the real controller, faster than real time)",
        description="Run the production controller against a simulated plant built from the config's "
        "devices, for one event, and print the timeline and the settlement.",
    )
    p.add_argument("-c", "--config", required=True, help="site config YAML")
    p.add_argument("--event", required=True, help="event JSON (the MQTT event payload)")
    p.add_argument("--seed", type=int, default=1, help="noise seed of the simulated plant (default 1)")
    p.add_argument(
        "--json", action="store_true", help="print one JSON object: settlement, in_band_fraction, ..."
    )
    p.add_argument(
        "--png", help="also draw baseline, load, band and steps to this PNG (needs the charts extra)"
    )
    p.add_argument(
        "--tail-min", type=float, default=60.0, help="simulate at most this long after the end, min"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show the agent's log lines")
    p.set_defaults(func=run)


def _max_shed_s(strategy: Any, step_id: str) -> float | None:
    """max_shed_s of the action a step id (`stage/N:device`) came from."""
    stage_name, _, rest = step_id.partition("/")
    number = rest.partition(":")[0]
    for stage in strategy.stages if strategy is not None else []:
        if stage.name == stage_name and number.isdigit() and int(number) <= len(stage.actions):
            limit: float | None = stage.actions[int(number) - 1].max_shed_s
            return limit
    return None


def _reason(state: dict[str, Any]) -> str:
    """The controller's reason for a tick, each distinct reason once (several steps added at once share one)."""
    return "; ".join(dict.fromkeys(r for r in state.get("last_decision", "").split("; ") if r))


def actions_from_timeline(timeline: list[dict[str, Any]], strategy: Any = None) -> list[dict[str, Any]]:
    """Each step shed or released, from the active steps of consecutive ticks."""
    out: list[dict[str, Any]] = []
    before: list[str] = []
    shed_at: dict[str, float] = {}
    for state in timeline:
        now = state.get("active_steps", [] if "event_id" in state else None)
        if now is None:
            now = []
        for step in now:
            if step not in before:
                shed_at[step] = state["ts"]
                out.append({"ts": state["ts"], "op": "shed", "step": step, "why": _reason(state)})
        for step in before:
            if step not in now:
                why = _reason(state)
                limit = _max_shed_s(strategy, step)
                if state.get("phase") in ("restoring", "done", None):
                    why = "event ended: staggered restore"
                elif limit is not None and state["ts"] - shed_at.get(step, state["ts"]) >= limit - 1e-6:
                    why = f"max_shed_s {limit:g} s reached"
                out.append({"ts": state["ts"], "op": "release", "step": step, "why": why})
        before = list(now)
    return out


def _load_event(path: str) -> Any:
    from agent.events.model import EventError, parse_event

    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return parse_event(raw)
    except EventError as err:
        raise SystemExit(f"{path}: {err.code}: {err.message}") from None


def run(args: argparse.Namespace) -> int:
    from agent.cli.simulate import simulate_event
    from agent.config.load import ConfigError, load_site_config

    if args.png and not charts_available():
        print(f"dr-agent simulate --png: {INSTALL_HINT}", file=sys.stderr)
        return 2
    try:
        cfg, warnings = load_site_config(args.config)
    except ConfigError as exc:
        for line in exc.lines + exc.warnings:
            print(line, file=sys.stderr)
        return 1
    try:
        event = _load_event(args.event)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 1
    if not args.json:
        for w in warnings:
            print(w, file=sys.stderr)
    if getattr(args, "verbose", False):
        from agent.platform.logs import setup_logging

        setup_logging("info", "text")
    else:
        # The timeline and the settlement say what happened; the agent's own log lines are noise here.
        logging.getLogger().addHandler(logging.NullHandler())
    result = asyncio.run(simulate_event(cfg, event, seed=args.seed, tail_s=args.tail_min * 60))
    tz = ZoneInfo(cfg.site.timezone)
    strategy = cfg.strategy_for(event.program)
    actions = actions_from_timeline(result.timeline, strategy)
    summary = _summary(cfg, event, strategy.name, result, actions)
    if args.png:
        from agent.cli.plot import plot_event

        plot_event(
            args.png,
            result.timeline,
            tz=tz,
            title=f"{cfg.site.name or cfg.site.id}: {event.event_id} (strategy {strategy.name}, simulated)",
            event_window=(event.start_ts, event.end_ts),
            actions=actions,
        )
        summary["png"] = str(args.png)
    if args.json:
        print(json.dumps(summary))
    else:
        _print_human(sys.stdout, cfg, event, result, actions, summary, tz)
    if result.settlement is None:
        return 1
    return 0


def _summary(
    cfg: Any, event: Any, strategy: str, result: Any, actions: list[dict[str, Any]]
) -> dict[str, Any]:
    s = result.settlement or {}
    return {
        "event_id": event.event_id,
        "site_id": cfg.site.id,
        "strategy": strategy,
        "opt": (result.response or {}).get("opt"),
        "settled": result.settlement is not None,
        "in_band_fraction": s.get("in_band_fraction"),
        "verified_reduction_kw": s.get("verified_reduction_kw"),
        "verified_reduction_pct_of_peak": s.get("verified_reduction_pct_of_peak"),
        "committed_kw": s.get("committed_kw"),
        "band_kw": s.get("band_kw") or [round(v, 3) for v in cfg.contract.band_kw()],
        "limit_violations": result.limit_violations,
        "violations": result.violations,
        "actuations": s.get("actuations", len(actions)),
        "actions": [{**a, "ts": round(a["ts"], 1)} for a in actions],
        "steps_skipped": s.get("steps_skipped", {}),
        "settlement": result.settlement,
        "response": result.response,
    }


def _fmt(v: float | None, width: int = 7) -> str:
    return f"{v:{width}.1f}" if v is not None else " " * (width - 1) + "-"


def _print_human(
    out: TextIO,
    cfg: Any,
    event: Any,
    result: Any,
    actions: list[dict[str, Any]],
    summary: dict[str, Any],
    tz: ZoneInfo,
) -> None:
    def hms(ts: float) -> str:
        return datetime.fromtimestamp(ts, tz).strftime("%H:%M:%S")

    lo, hi = cfg.contract.band_kw()
    target = event.target.model_dump(exclude_none=True)
    print(
        f"simulate: {cfg.site.name or cfg.site.id}, event {event.event_id} ({event.program}), "
        f"{datetime.fromtimestamp(event.start_ts, tz):%Y-%m-%d %H:%M} for {event.duration_s / 60:g} min, "
        f"target {target}, strategy {summary['strategy']}",
        file=out,
    )
    resp = result.response or {}
    if resp.get("opt") != "in":
        print(f"the agent opted out: {resp.get('code')}: {resp.get('reason')}", file=out)
        return
    print(
        f"band {lo:.0f}-{hi:.0f} kW ({cfg.contract.band_pct[0]:g}-{cfg.contract.band_pct[1]:g} % of "
        f"{cfg.contract.peak_kw:g} kW); committed {resp.get('committed_kw')} kW",
        file=out,
    )
    print(f"{'time':8}  {'phase':9} {'load kW':>8} {'realized':>8}  in band  steps", file=out)
    by_ts: dict[float, list[dict[str, Any]]] = {}
    for a in actions:
        by_ts.setdefault(a["ts"], []).append(a)
    last_minute = None
    for state in result.timeline:
        ts = state["ts"]
        if "event_id" not in state and ts < event.start_ts - 60:
            continue  # before control: the baseline window, nothing to show
        said = None
        for a in by_ts.get(ts, []):
            sign = "+" if a["op"] == "shed" else "-"
            # Steps moved in one tick for one reason: the reason once, on the first of them.
            why = "" if a["why"] == said else a["why"]
            said = a["why"]
            print(f"{hms(ts)}  {sign} {a['step']:40} {why}".rstrip(), file=out)
        minute = int(ts // 60)
        if minute != last_minute and ts % 60 < cfg.control.period_s:
            last_minute = minute
            band = state.get("in_band")
            mark = "yes" if band else ("no" if band is not None else "-")
            print(
                f"{hms(ts)}  {state.get('phase', '-'):9} {_fmt(state.get('measured_kw'), 8)} "
                f"{_fmt(state.get('realized_kw'), 8)}  {mark:7}  {len(state.get('active_steps', []))}",
                file=out,
            )
    s = result.settlement
    if s is None:
        print("not settled within the simulated time", file=out)
        return
    print(
        f"settlement: verified {s['verified_reduction_kw']:.1f} kW ({s['verified_reduction_pct_of_peak']:.2f} % of "
        f"peak) against baseline {s['baseline_kw']:.1f} kW; in band {s['in_band_fraction'] * 100:.0f} % of "
        f"minutes (from 1 min after the start); {s.get('actuations', 0)} actuations; "
        f"limit violations {result.limit_violations}; incentive {s.get('estimated_incentive_cny', 0):.0f} CNY",
        file=out,
    )
    for v in result.violations:
        print(f"LIMIT VIOLATION {v}", file=out)
    for step, why in (s.get("steps_skipped") or {}).items():
        print(f"skipped {step}: {why}", file=out)
    if summary.get("png"):
        print(f"chart: {summary['png']}", file=out)
