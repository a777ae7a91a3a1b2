"""`dr-agent restore --device NAME`: close a revert-journal row the agent could not close on its own.

A row stays open when its restore failed (the device refused the original,
or was unreachable). The operator either lets this command write the
journalled original back (read back, then the row closes), or, with
`--fixed-by-hand`, says the device was put back on site: then nothing is
written and the row closes with that note. Asks first unless --yes. Refused
while the running agent's live event owns the row (it restores it itself).
Exit codes: 0 closed (or nothing open), 1 the restore failed, 2 usage/config.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from agent.cli.confirm import confirm


def register(sub: Any) -> None:
    p = sub.add_parser("restore", help="put a device back to its journalled original and close the row")
    p.add_argument("-c", "--config", required=True, help="site config YAML")
    p.add_argument("--device", required=True, help="the device whose open journal rows to close")
    p.add_argument(
        "--fixed-by-hand",
        action="store_true",
        help="write nothing: the device was put back on site; only close the rows",
    )
    p.add_argument("-y", "--yes", action="store_true", help="do not ask first")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent.config.load import ConfigError, load_site_config

    quiet = logging.getLogger("dr_agent")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    try:
        cfg, _ = load_site_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return 2
    return asyncio.run(restore(cfg, args.device, fixed_by_hand=args.fixed_by_hand, yes=args.yes))


async def restore(cfg: Any, device: str, *, fixed_by_hand: bool, yes: bool) -> int:
    from agent.control.actuator import Actuator
    from agent.platform.store import AsyncStore, Store
    from agent.runtime.daemon import build_devices
    from agent.runtime.statefile import liveness, read_state, state_path

    db = cfg.storage.resolved()
    if not db.exists():
        print(f"no database at {db}: nothing was ever journalled", file=sys.stderr)
        return 2
    tz = ZoneInfo(cfg.site.timezone)
    store = AsyncStore(Store(db))
    try:
        rows = await store.journal_open(device)
        if not rows:
            print(f"{device}: no open journal rows, nothing to restore")
            return 0
        doc = read_state(state_path(cfg))
        live = ((doc or {}).get("live") or {}).get("event_id")
        if liveness(doc)[0] == "running" and live and any(r.event_id == live for r in rows):
            print(
                f"{device}: shed by the running event {live}; the agent restores it itself", file=sys.stderr
            )
            return 2
        roles: dict[str, Any] = {}
        for r in rows:
            roles.setdefault(r.role, r)  # the first open row holds the original
        for role, r in roles.items():
            since = datetime.fromtimestamp(r.ts, tz).strftime("%Y-%m-%d %H:%M:%S")
            print(
                f"{device}: {role} shed {r.original:g} -> {rows[-1].written:g} since {since} by {r.event_id or '-'}"
            )
        if fixed_by_hand:
            question = f"Close {len(roles)} row(s) of {device} WITHOUT writing (put back on site)? [y/N] "
        else:
            question = f"Write the original(s) back to {device} and close the row(s)? [y/N] "
        if not confirm(question, yes=yes, action="act"):
            print("cancelled; nothing was written")
            return 1
        if fixed_by_hand:
            for role in roles:
                await store.journal_restored(device, role, "fixed by hand (operator, dr-agent restore)")
                await store.audit(f"restore {role}: closed, fixed by hand", None, device)
            print(f"{device}: closed {len(roles)} row(s); nothing written")
            return 0
        if device not in {d.name for d in cfg.devices}:
            print(
                f"{device} is no longer configured: put it back on site, then --fixed-by-hand",
                file=sys.stderr,
            )
            return 1
        transports, devices = build_devices(cfg)
        dev = devices[device]
        dev.read_only = True  # only the originals are written
        failed = 0
        try:
            if not await dev.poll():
                print(f"{device} does not answer: {dev.health.last_error}", file=sys.stderr)
                return 1
            actuator = Actuator(devices, store)
            for role, r in roles.items():
                if await actuator.restore(device, role, "operator restore (dr-agent restore)", r.event_id):
                    print(f"{device}: {role} back to {r.original:g} (read back); row closed")
                else:
                    failed += 1
                    print(f"{device}: restore of {role}={r.original:g} failed", file=sys.stderr)
        finally:
            for t in transports.values():
                with contextlib.suppress(Exception):
                    await t.close()
        if failed:
            print(
                "put it back on site, then: dr-agent restore --device NAME --fixed-by-hand", file=sys.stderr
            )
            return 1
        return 0
    finally:
        await store.close()
