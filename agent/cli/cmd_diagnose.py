"""`dr-agent diagnose`: one screen of checks for a field technician; --json for tooling.

Exit code 0 when every check passed, 1 with warnings, 2 with failures.
`--device NAME --test-shed` sheds one device briefly and restores it (asks first
unless --yes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from agent.cli.confirm import confirm


def register(sub: Any) -> None:
    p = sub.add_parser(
        "diagnose",
        help="check config, clock, disk, broker, every device, the daemon: a verdict and a fix per line",
    )
    p.add_argument("-c", "--config", required=True, help="site config YAML")
    p.add_argument("--json", action="store_true", help="one JSON object: {checks: [...], exit_code}")
    p.add_argument(
        "--min-free-mb", type=float, default=200.0, help="disk space the database needs (default 200 MB)"
    )
    p.add_argument("--timeout", type=float, default=5.0, help="per network check, s (default 5)")
    p.add_argument("--device", help="with --test-shed: the device to test")
    p.add_argument(
        "--test-shed", action="store_true", help="shed --device by its first strategy step, then restore"
    )
    p.add_argument(
        "--seconds", type=float, default=10.0, help="how long --test-shed holds the shed (default 10)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also print the agent's log lines")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask before --test-shed writes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent.cli.diagnose import Check, Options, diagnose, exit_code, render, shed_test, to_json
    from agent.config.load import ConfigError, load_site_config

    if args.verbose:
        from agent.platform.logs import setup_logging

        setup_logging("debug" if args.verbose else "warning", "text")
    else:
        # The checks report what the drivers would log; keep the screen to the verdicts.
        quiet = logging.getLogger("dr_agent")
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
    try:
        cfg, warnings = load_site_config(args.config)
    except ConfigError as exc:
        checks = [
            Check(
                "config",
                "fail",
                f"{args.config}: {len(exc.lines)} errors: {exc.lines[0] if exc.lines else ''}",
                f"dr-agent validate -c {args.config} lists every error as file:line:col",
                {"errors": exc.lines},
            )
        ]
        _print(args, checks, "")
        return 2
    if args.test_shed:
        if not args.device:
            print("--test-shed needs --device NAME", file=sys.stderr)
            return 2

        def ask(question: str) -> bool:
            return confirm(question, yes=args.yes, action="write")

        checks = asyncio.run(shed_test(cfg, args.device, args.seconds, ask, args.timeout))
        _print(args, checks, f"dr-agent diagnose --test-shed {args.device}: site {cfg.site.id}")
        return exit_code(checks)
    opts = Options(min_free_mb=args.min_free_mb, timeout_s=args.timeout, config_path=args.config)
    checks = asyncio.run(diagnose(cfg, opts, warnings))
    _print(args, checks, f"dr-agent diagnose: site {cfg.site.id} ({args.config})")
    _ = render, to_json
    return exit_code(checks)


def _print(args: argparse.Namespace, checks: list[Any], header: str) -> None:
    from agent.cli.diagnose import render, to_json

    if args.json:
        print(json.dumps(to_json(checks), ensure_ascii=False, default=str))
    else:
        print(render(checks, color=sys.stdout.isatty(), header=header))
