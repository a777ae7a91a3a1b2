"""`dr-agent status`: what the running daemon is doing now, from the state file it writes.

Reads `<db>.state.json` (agent/runtime/statefile.py), so it works as any user who can
read the state directory, needs no connection to the daemon, and still shows
the last known state of a daemon that is wedged or gone. Exit codes follow
`systemctl status`: 0 running, 3 not running (stopped, crashed, never ran),
4 the state file is stale (the daemon stopped updating it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from typing import Any, TextIO
from zoneinfo import ZoneInfo

EXIT = {"running": 0, "stopped": 3, "crashed": 3, "absent": 3, "stale": 4}


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="what the running agent is doing now (event, target, devices)")
    p.add_argument("-c", "--config", required=True, help="site config YAML (finds the state directory)")
    p.add_argument("--json", action="store_true", help="print the state document as one JSON object")
    p.add_argument("-w", "--watch", type=float, metavar="S", help="refresh every S seconds until Ctrl-C")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent.config.load import ConfigError, load_site_config
    from agent.runtime.statefile import liveness, read_state, state_path

    try:
        cfg, _ = load_site_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return 2
    path = state_path(cfg)
    tz = ZoneInfo(cfg.site.timezone)
    while True:
        doc = read_state(path)
        live, why = liveness(doc)
        stuck = unrestored(cfg, doc if live == "running" else None)
        if args.json:
            print(
                json.dumps(
                    {"liveness": live, "detail": why, "path": str(path), "state": doc, "unrestored": stuck}
                )
            )
        else:
            if args.watch:
                sys.stdout.write("\x1b[H\x1b[2J")
            render(doc, live, why, tz, sys.stdout)
            render_unrestored(stuck, tz, sys.stdout)
        if not args.watch:
            return EXIT[live]
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return EXIT[live]


def unrestored(cfg: Any, running: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Open revert-journal rows no live event owns: sheds the agent could not undo (read-only look)."""
    import sqlite3

    from agent.cli.diagnose import open_read_only

    live = ((running or {}).get("live") or {}).get("event_id")
    try:
        store = open_read_only(cfg.storage.resolved())
        if store is None:
            return []
        try:
            rows = store.journal_open()
        finally:
            store.db.close()
    except sqlite3.Error:
        return []
    return [
        {
            "device": r.device,
            "role": r.role,
            "original": r.original,
            "written": r.written,
            "ts": r.ts,
            "event_id": r.event_id,
        }
        for r in rows
        if r.event_id != live
    ]


def render_unrestored(rows: list[dict[str, Any]], tz: ZoneInfo, out: TextIO) -> None:
    seen: set[tuple[str, str]] = set()
    for r in rows:
        if (r["device"], r["role"]) in seen:
            continue
        seen.add((r["device"], r["role"]))
        print(
            f"  ✘ NOT restored: {r['device']} {r['role']} {r['original']} -> {r['written']} since "
            f"{_t(r['ts'], tz)} by {r['event_id'] or '-'}: dr-agent restore --device {r['device']}",
            file=out,
        )


def _t(ts: float | None, tz: ZoneInfo) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M:%S")


def _kw(v: float | None) -> str:
    return "unknown" if v is None else f"{v:.1f} kW"


def render(doc: dict[str, Any] | None, live: str, why: str, tz: ZoneInfo, out: TextIO) -> None:
    """The human view: one block for the process, the event, the devices."""
    mark = {"running": "●", "stale": "!", "stopped": "○", "crashed": "✘", "absent": "○"}[live]
    if doc is None:
        print(f"{mark} dr-agent: {why}", file=out)
        return
    print(f"{mark} dr-agent {doc.get('version', '?')} site {doc.get('site_id')}: {live} ({why})", file=out)
    cfg = doc.get("config") or {}
    if cfg:
        last = cfg.get("last_reload") or {}
        extra = ""
        if last:
            extra = "; last reload " + (
                "applied" if last.get("ok") else f"REJECTED ({len(last.get('errors', []))} errors)"
            )
            extra += f" at {_t(last.get('ts'), tz)}"
        print(f"  config   {cfg.get('path')} sha256 {str(cfg.get('digest', ''))[:12]}{extra}", file=out)
    m = doc.get("mqtt") or {}
    conn = "connected" if m.get("connected") else f"NOT connected ({m.get('last_error') or 'connecting'})"
    print(
        f"  mqtt     {m.get('broker')} {conn}; root {m.get('topic_root')}; outbox {m.get('outbox_pending', 0)} pending",
        file=out,
    )
    lv = doc.get("live") or {}
    print(
        f"  load     {_kw(lv.get('measured_kw'))} (sim/agent time {_t(doc.get('clock_now'), tz)})", file=out
    )
    if lv.get("event_id"):
        lo, hi = lv.get("band_kw") or [0.0, 0.0]
        inb = lv.get("in_band")
        band_state = "in band" if inb else ("OUT of band" if inb is not None else "band unknown")
        print(f"  event    {lv['event_id']} {lv.get('state')} / {lv.get('phase')}", file=out)
        print(
            f"           target {_kw(lv.get('committed_kw'))}, realized {_kw(lv.get('realized_kw'))} "
            f"of baseline {_kw(lv.get('baseline_kw'))}, band {lo:.0f}-{hi:.0f} kW: {band_state}",
            file=out,
        )
        steps = lv.get("active_steps") or []
        print(f"           {len(steps)} steps: {', '.join(steps) or '-'}", file=out)
        if lv.get("last_decision"):
            print(f"           last decision: {lv['last_decision']}", file=out)
    else:
        print("  event    none running", file=out)
    for ev in doc.get("events") or []:
        if ev["event_id"] != lv.get("event_id"):
            print(
                f"  upcoming {ev['event_id']} {ev['state']} ({ev['program']}, opt {ev['opt']}) "
                f"{_t(ev['start'], tz)} - {_t(ev['end'], tz)[11:]}",
                file=out,
            )
    print("  devices", file=out)
    for d in doc.get("devices") or []:
        ok = "✔" if d["available"] else "✘"
        power = "" if d.get("power_kw") is None else f"{d['power_kw']:.1f} kW"
        lat = "" if d.get("latency_ms") is None else f"{d['latency_ms']:.1f} ms"
        shed = ""
        if d.get("shed"):
            s = d["shed"][-1]
            shed = f"SHED {s['role']} {s['original']} -> {s['written']} ({s.get('event_id') or '-'})"
        err = "" if d["available"] else (d.get("last_error") or "")
        print(f"    {ok} {d['name']:<18} {d['kind']:<10} {power:>10} {lat:>9}  {shed}{err}", file=out)
