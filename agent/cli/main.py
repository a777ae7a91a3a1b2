"""The `dr-agent` command: run the daemon, check configs, print the schema, run the demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from agent import __version__


def _cmd_validate(args: argparse.Namespace) -> int:
    from agent.config.load import ConfigError, is_strategy_file, load_site_config, load_strategy_file

    if is_strategy_file(args.config):
        # A strategy file (strategy_files:) on its own: its structure is all there is to check.
        try:
            strategy = load_strategy_file(args.config)
        except ConfigError as exc:
            for line in exc.lines:
                print(line, file=sys.stderr)
            print(f"{args.config}: {len(exc.lines)} error(s)", file=sys.stderr)
            return 1
        actions = sum(len(stage.actions) for stage in strategy.stages)
        print(
            f"{args.config}: OK (strategy {strategy.name}, {len(strategy.stages)} stages, {actions} actions; "
            "its device names are checked when you validate the site config that lists it under strategy_files:)"
        )
        return 0
    try:
        cfg, warnings = load_site_config(args.config)
    except ConfigError as exc:
        for line in exc.lines + exc.warnings:
            print(line, file=sys.stderr)
        print(f"{args.config}: {len(exc.lines)} error(s)", file=sys.stderr)
        return 1
    for w in warnings:
        print(w, file=sys.stderr)
    print(
        f"{args.config}: OK (site {cfg.site.id}, {len(cfg.devices)} devices, "
        f"{len(cfg.strategies)} strategies{f', {len(warnings)} warning(s)' if warnings else ''})"
    )
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from agent.config.load import json_schema
    from agent.config.model import SiteConfig
    from strategies.model import Strategy

    # --strategy: the schema of a strategy file (strategy_files:), for its editor comment line.
    text = json_schema(Strategy if args.strategy else SiteConfig)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from agent.config.load import ConfigError, load_site_config
    from agent.platform.clock import Clock, ScaledClock, SystemClock
    from agent.platform.logs import setup_logging
    from agent.runtime.daemon import Agent, AgentFailed

    setup_logging(args.log_level, args.log_format)
    try:
        run_loop = event_loop_runner()
    except LoopChoiceError as exc:
        print(f"dr-agent: {exc}", file=sys.stderr)
        return 2
    try:
        cfg, warnings = load_site_config(args.config)
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return 1
    for w in warnings:
        print(w, file=sys.stderr)
    clock: Clock = ScaledClock.from_spec(args.clock) if args.clock else SystemClock()

    async def main() -> None:
        from agent.runtime.reload import Reloader

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        agent = Agent(cfg, clock)
        # SIGHUP (systemctl reload): re-read config + conf.d; an invalid one is rejected, the old kept.
        loop.add_signal_handler(signal.SIGHUP, Reloader(agent, args.config).request)
        await agent.run(stop)

    try:
        run_loop(main())
    except AgentFailed as exc:
        # Devices were restored (or what could not be is in the log and the audit), and the
        # broker shows `failed`: exit non-zero so systemd and the operator see it.
        print(f"dr-agent: stopped after a failure: {exc}", file=sys.stderr)
        return 1
    return 0


#: Which event loop `dr-agent run` runs on: `auto` (the default: uvloop when installed, the
#: `speed` extra, else asyncio), `asyncio` or `uvloop`. An operator who suspects uvloop sets
#: `asyncio` in the unit's environment; the test suite runs its agents on both.
LOOP_ENV = "DR_AGENT_LOOP"
LOOP_CHOICES = ("auto", "asyncio", "uvloop")


class LoopChoiceError(Exception):
    """DR_AGENT_LOOP names a loop this machine cannot run."""


def event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """What runs the loop DR_AGENT_LOOP asks for (the agent's `starting` line says which ran).
    uvloop costs about a fifth less CPU per polled Modbus request (bench/modbus_poll.py); the
    event path's latency is the same."""
    choice = os.environ.get(LOOP_ENV, "").strip().lower() or "auto"
    if choice not in LOOP_CHOICES:
        raise LoopChoiceError(f"{LOOP_ENV}={choice!r}: expected one of {', '.join(LOOP_CHOICES)}")
    if choice == "asyncio":
        return asyncio.run
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise LoopChoiceError(
                f"{LOOP_ENV}=uvloop, but uvloop is not installed (pip install 'dr-agent[speed]')"
            ) from None
        return asyncio.run
    return uvloop.run


def _cmd_demo(args: argparse.Namespace) -> int:
    from agent.cli.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dr-agent", description="Demand-response agent for energy gateways.")
    p.add_argument("--version", action="version", version=f"dr-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the agent daemon")
    r.add_argument("-c", "--config", required=True, help="site config YAML")
    r.add_argument("--log-level", default="info")
    r.add_argument("--log-format", choices=["auto", "text", "json"], default="auto")
    r.add_argument("--clock", help=argparse.SUPPRESS)  # SPEED@ORIGIN_SIM@ORIGIN_WALL, for simulations
    r.set_defaults(func=_cmd_run)

    v = sub.add_parser("validate", help="check a site config; every error as file:line:col")
    v.add_argument("-c", "--config", required=True)
    v.set_defaults(func=_cmd_validate)

    s = sub.add_parser("schema", help="print the JSON Schema of the site config")
    s.add_argument("-o", "--output", help="write to this file instead of stdout")
    s.add_argument("--strategy", action="store_true", help="the schema of a strategy file instead")
    s.set_defaults(func=_cmd_schema)

    d = sub.add_parser("demo", help="a simulated plant, a broker, an event, live progress, a settlement")
    d.add_argument("--json", action="store_true", help="print only the settlement as one JSON object")
    d.add_argument("--speed", type=float, default=60.0, help="time compression (default 60x)")
    d.add_argument("--duration-min", type=float, default=30.0, help="event length, simulated minutes")
    d.add_argument("--target-pct", type=float, default=10.0, help="requested reduction, %% of peak")
    d.add_argument("--config", default=None, help="site config to simulate (default config/demo-site.yaml)")
    d.add_argument(
        "--keep-db",
        metavar="PATH",
        help="keep the demo's SQLite database here, to try `dr-agent report --db PATH` afterwards",
    )
    d.add_argument(
        "--keep-running",
        action="store_true",
        help="after the event keep the simulated site and the agent running until Ctrl-C, and print the "
        "diagnose/status/report commands to run against them from a second terminal",
    )
    d.set_defaults(func=_cmd_demo)
    import importlib

    for module in EXTRA_COMMANDS:
        importlib.import_module(module).register(sub)
    return p


# Further commands live in their own modules, each with `register(subparsers)`,
# so the CLI grows without one file that every feature edits.
EXTRA_COMMANDS: list[str] = ["agent.cli.cmd_diagnose", "agent.cli.cmd_status"]
EXTRA_COMMANDS += ["agent.cli.cmd_plan", "agent.cli.cmd_simulate"]  # rehearsal of strategies before any event
EXTRA_COMMANDS.append("agent.cli.cmd_report")  # settlements, baselines, the year's books, charts
EXTRA_COMMANDS.append("agent.cli.cmd_sim")  # a site's devices as simulators, to rehearse with `run`
EXTRA_COMMANDS.append("agent.cli.cmd_restore")  # close a journal row the agent could not restore
EXTRA_COMMANDS.append("agent.cli.cmd_baseline")  # baseline advice from the site's history; shutdown days


def main(argv: list[str] | None = None) -> int:
    from agent.platform.store import NewerDatabase

    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except NewerDatabase as exc:  # written by a newer dr-agent: said plainly, the file left as it is
        print(f"dr-agent: {exc}", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
