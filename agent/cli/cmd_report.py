"""`dr-agent report`: settlements, baselines side by side, the year's books, and a chart per event.

    dr-agent report -c site.yaml                    # the latest settlements, one line each
    dr-agent report -c site.yaml EVENT_ID           # one event: every baseline method beside the official one
    dr-agent report -c site.yaml EVENT_ID --png e.png   # baselines against metered load over the event day
    dr-agent report -c site.yaml --year [YYYY]      # events, hours, days, participation, verified kW, incentive
    ... --format table|csv|json                     # for people, spreadsheets, programs

It reads the agent's SQLite file (the config's storage path, or `--db`); it
can run beside the daemon (WAL readers do not block it).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo


def register(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="settlements, every baseline side by side, the year's books; --png charts an event",
        description="Settlements and the participation ledger from the agent's database.",
    )
    p.add_argument("event_id", nargs="?", help="one event (or 'latest'); default: list the settlements")
    p.add_argument("-c", "--config", help="site config YAML (database path, timezone, contract)")
    p.add_argument("--db", help="SQLite database (default: the config's storage path)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")
    p.add_argument("--png", metavar="FILE", help="chart the event (default: the latest) into this PNG")
    p.add_argument(
        "--year", nargs="?", type=int, const=0, metavar="YYYY", help="the year's books (default: this year)"
    )
    p.add_argument("--limit", type=int, default=20, help="settlements listed (default 20)")
    p.set_defaults(func=run)


class ReportError(Exception):
    pass


def _open(args: argparse.Namespace) -> tuple[Any, Any, ZoneInfo | None]:
    """(Store, SiteConfig or None, timezone or None) from -c / --db."""
    from agent.platform.store import Store

    cfg = None
    if args.config:
        from agent.config.load import ConfigError, load_site_config

        try:
            cfg, _ = load_site_config(args.config)
        except ConfigError as exc:
            raise ReportError("\n".join(exc.lines)) from None
    if args.db:
        path = Path(args.db)
    elif cfg is not None:
        path = cfg.storage.resolved()
    else:
        raise ReportError("say where the data is: -c SITE.yaml (its storage path) or --db FILE.sqlite")
    if not path.is_file():
        raise ReportError(f"{path}: no such database (has the agent run with this config?)")
    tz = ZoneInfo(cfg.site.timezone) if cfg is not None else None
    return Store(path), cfg, tz


def run(args: argparse.Namespace) -> int:
    try:
        store, cfg, tz = _open(args)
    except ReportError as exc:
        print(f"dr-agent report: {exc}", file=sys.stderr)
        return 2
    try:
        if args.year is not None:
            return _year(store, cfg, tz, args, sys.stdout)
        if args.event_id or args.png:
            return _event(store, cfg, tz, args, sys.stdout)
        return _list(store, tz, args, sys.stdout)
    except ReportError as exc:
        print(f"dr-agent report: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()


# -- helpers ---------------------------------------------------------------------------


def _tz_of(body: dict[str, Any], tz: ZoneInfo | None) -> ZoneInfo:
    return tz or ZoneInfo(body.get("timezone") or "UTC")


def _num(v: Any, nd: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        return f"{v:,.{nd}f}"
    return str(v)


def _table(rows: list[list[str]], head: list[str], out: TextIO, right: set[int] | None = None) -> None:
    right = right if right is not None else set(range(1, len(head)))
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        cells = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        out.write("  ".join(cells).rstrip() + "\n")


def _csv(rows: list[dict[str, Any]], out: TextIO) -> None:
    if not rows:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    out.write(buf.getvalue())


def _find(store: Any, event_id: str | None) -> dict[str, Any]:
    if not event_id or event_id == "latest":
        latest = store.settlements(1)
        if not latest:
            raise ReportError("no settlements yet")
        return dict(latest[0])
    body = store.settlement(event_id)
    if body is None:
        known = ", ".join(s["event_id"] for s in store.settlements(10)) or "none"
        raise ReportError(f"no settlement for event {event_id!r} (latest: {known})")
    return dict(body)


# -- the list ---------------------------------------------------------------------------

LIST_FIELDS = [
    ("event_id", "event"),
    ("date", "date"),
    ("program", "program"),
    ("baseline_method", "baseline"),
    ("baseline_kw", "baseline kW"),
    ("measured_kw", "metered kW"),
    ("verified_reduction_kw", "verified kW"),
    ("verified_reduction_pct_of_peak", "% peak"),
    ("committed_kw", "committed kW"),
    ("compliance", "compliance"),
    ("in_band_fraction", "in band"),
    ("estimated_incentive_cny", "incentive CNY"),
    ("quality", "data"),
]


def _row(s: dict[str, Any], tz: ZoneInfo | None) -> dict[str, Any]:
    z = _tz_of(s, tz)
    t0 = datetime.fromtimestamp(float(s["start"]), z)
    t1 = datetime.fromtimestamp(float(s["end"]), z)
    return {
        "event_id": s["event_id"],
        "date": f"{t0:%Y-%m-%d %H:%M}-{t1:%H:%M}",
        "program": s.get("program", ""),
        "baseline_method": s.get("baseline_method", ""),
        "baseline_kw": s.get("baseline_kw"),
        "measured_kw": s.get("measured_kw"),
        "verified_reduction_kw": s.get("verified_reduction_kw"),
        "verified_reduction_pct_of_peak": s.get("verified_reduction_pct_of_peak"),
        "committed_kw": s.get("committed_kw"),
        "compliance": s.get("compliance"),
        "in_band_fraction": s.get("in_band_fraction"),
        "estimated_incentive_cny": s.get("estimated_incentive_cny"),
        "quality": (s.get("data_quality") or {}).get("status", "-"),
    }


def _list(store: Any, tz: ZoneInfo | None, args: argparse.Namespace, out: TextIO) -> int:
    bodies = store.settlements(args.limit)
    rows = [_row(s, tz) for s in bodies]
    if args.format == "json":
        from agent.settlement.books import published

        out.write(json.dumps([published(s) for s in bodies], indent=2) + "\n")
    elif args.format == "csv":
        _csv(rows, out)
    else:
        if not rows:
            out.write("no settlements yet\n")
            return 0
        pct = {"compliance", "in_band_fraction"}
        cells = [
            [
                f"{r[k] * 100:.0f} %"
                if k in pct and r[k] is not None
                else _num(r[k])
                if isinstance(r[k], float)
                else str(r[k] if r[k] is not None else "-")
                for k, _h in LIST_FIELDS
            ]
            for r in rows
        ]
        _table(cells, [h for _k, h in LIST_FIELDS], out, right=set(range(4, len(LIST_FIELDS) - 1)))
    return 0


# -- one event ---------------------------------------------------------------------------

BASELINE_FIELDS = [
    "method",
    "official",
    "available",
    "mean_kw",
    "energy_kwh",
    "verified_reduction_kw",
    "days_used",
    "reason",
]


def _baseline_rows(body: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for m, b in (body.get("baselines") or {}).items():
        rows.append(
            {
                "method": m,
                "official": bool(b.get("official")),
                "available": bool(b.get("available")),
                "mean_kw": b.get("mean_kw"),
                "energy_kwh": b.get("energy_kwh"),
                "verified_reduction_kw": b.get("verified_reduction_kw"),
                "days_used": " ".join(b.get("days_used") or []),
                "reason": b.get("reason") or "; ".join(b.get("notes") or []),
            }
        )
    return rows


def _chart(store: Any, cfg: Any, z: ZoneInfo, body: dict[str, Any], png: str) -> None:
    from agent.cli.report_chart import ChartsUnavailable, render
    from agent.settlement.books import local_day_bounds
    from agent.settlement.history import load_series

    meter = cfg.site.meter if cfg is not None else body.get("meter")
    if not meter:
        raise ReportError("which device is the site meter? give -c SITE.yaml")
    d0, d1 = local_day_bounds(z, datetime.fromtimestamp(float(body["start"]), z).date())
    try:
        path = render(body, load_series(store, meter, d0, d1), z, png, site=body.get("site_id", ""))
    except ChartsUnavailable as exc:
        raise ReportError(str(exc)) from None
    sys.stdout.flush()
    print(f"wrote {path}", file=sys.stderr)


def _event(store: Any, cfg: Any, tz: ZoneInfo | None, args: argparse.Namespace, out: TextIO) -> int:
    body = _find(store, args.event_id)
    z = _tz_of(body, tz)
    if args.png:
        _chart(store, cfg, z, body, args.png)
        if not args.event_id:
            return 0
    if args.format == "json":
        out.write(json.dumps(body, indent=2) + "\n")
        return 0
    rows = _baseline_rows(body)
    if args.format == "csv":
        _csv(rows, out)
        return 0
    r = _row(body, tz)
    dq = body.get("data_quality") or {}
    lines = [
        f"event        {body['event_id']}  ({body.get('program', '?')}{', test' if body.get('test_event') else ''})",
        f"window       {r['date']} {z.key}  ({float(body['duration_s']) / 60:.0f} min)",
        f"baseline     {_num(body.get('baseline_kw'))} kW  ({body.get('baseline_method')}; official: {body.get('official_baseline', body.get('baseline_method'))})",
        f"metered      {_num(body.get('measured_kw'))} kW  ({_num(body.get('measured_kwh'))} kWh)",
        f"verified     {_num(body.get('verified_reduction_kw'))} kW = {_num(body.get('verified_reduction_pct_of_peak'), 2)} % of peak"
        f"  (band {body.get('band_kw', ['-', '-'])[0]}-{body.get('band_kw', ['-', '-'])[1]} kW)",
        f"committed    {_num(body.get('committed_kw'))} kW, compliance {_num((body.get('compliance') or 0) * 100, 0)} %, "
        f"in band {_num(float(body.get('in_band_fraction', 0)) * 100, 0)} % of minutes",
        f"incentive    {_num(body.get('estimated_incentive_cny'), 2)} CNY  ({_num(body.get('incentive_cny_per_kw'), 0)} CNY/kW"
        f"{'; ' + body['incentive_rule'] if body.get('incentive_rule') else ''})",
        f"data         {dq.get('status', '-')}: meter coverage {_num(float(dq.get('meter_coverage', body.get('data_coverage', 0))) * 100, 1)} %, "
        f"{dq.get('gap_count', '-')} gap(s), longest {_num(dq.get('longest_gap_s'), 0)} s"
        f"{', meter went stale' if dq.get('meter_stale') else ''}",
    ]
    for n in body.get("notes") or []:
        lines.append(f"note         {n}")
    out.write("\n".join(lines) + "\n\n")
    if rows:
        head = ["method", "", "mean kW", "kWh", "verified kW", "days used / why not"]
        cells = []
        for b in rows:
            days = b["days_used"].split()
            why = f"{len(days)} day(s) {days[0]}..{days[-1]}" if len(days) > 1 else (days[0] if days else "")
            cells.append(
                [
                    b["method"],
                    "official" if b["official"] else "",
                    _num(b["mean_kw"]),
                    _num(b["energy_kwh"]),
                    _num(b["verified_reduction_kw"]),
                    why if b["available"] else f"unavailable: {b['reason']}",
                ]
            )
        _table(cells, head, out, right={2, 3, 4})
    return 0


# -- the year ------------------------------------------------------------------------------


def _year(store: Any, cfg: Any, tz: ZoneInfo | None, args: argparse.Namespace, out: TextIO) -> int:
    from agent.settlement.books import year_books

    now = time.time()
    settlements = store.settlements(100000)
    z = tz or (ZoneInfo(settlements[0].get("timezone") or "UTC") if settlements else ZoneInfo("UTC"))
    year = args.year or datetime.fromtimestamp(now, z).year
    books = year_books(cfg.contract if cfg is not None else None, z, year, now, store.events(), settlements)
    if args.format == "json":
        out.write(json.dumps(books, indent=2) + "\n")
        return 0
    if args.format == "csv":
        _csv([{"date": d, **v} for d, v in books["days"].items()], out)
        return 0
    out.write(f"{year}  ({z.key})\n\n")
    progs = books.get("programs") or {}
    money = books["money"]
    names = sorted(set(progs) | set(money["programs"]))
    cells = []
    for p in names:
        led = progs.get(p, {})
        mon = money["programs"].get(p, {})
        cells.append(
            [
                p,
                str(led.get("events", mon.get("events_settled", 0))),
                str(led.get("planned", "-")),
                _num(led.get("hours"), 2),
                str(led.get("days", "-")),
                _num(mon.get("verified_kw_sum")),
                _num(mon.get("verified_kwh")),
                _num(mon.get("estimated_incentive_cny"), 2),
            ]
        )
    t = money["total"]
    cells.append(
        [
            "all",
            str(sum(int(c[1]) for c in cells)),
            "",
            "",
            "",
            _num(t["verified_kw_sum"]),
            _num(t["verified_kwh"]),
            _num(t["estimated_incentive_cny"], 2),
        ]
    )
    _table(
        cells,
        [
            "program",
            "events",
            "planned",
            "hours",
            "days",
            "verified kW (sum)",
            "verified kWh",
            "incentive CNY",
        ],
        out,
    )
    out.write("\n")
    part = books.get("participation")
    if part:
        out.write(
            f"participation  {part['responses']} responses ({part['planned']} planned), minimum {part['minimum'] or '-'}, "
            f"default below {part['default_below'] or '-'}: {part['status']}\n"
        )
        if part.get("warning"):
            out.write(f"warning        {part['warning']}\n")
    if "participation_factor" in money:
        out.write(
            f"incentive      {money['estimated_incentive_after_participation_cny']:,.2f} CNY after participation "
            f"(x{money['participation_factor']:.2f}: {money['participation_rule']})"
            f"{'; ' + money['note'] if money.get('note') else ''}\n"
        )
    period = books.get("period")
    if period:
        out.write(
            f"contract       {period['start']}..{period['end']}: {period['responses']} responses, minimum "
            f"{period['minimum'] or '-'} ({period['elapsed_fraction'] * 100:.0f} % elapsed)\n"
        )
        if period.get("warning"):
            out.write(f"warning        {period['warning']}\n")
    if books["days"]:
        out.write("\n")
        _table(
            [
                [d, str(v["events"]), _num(v["hours"], 2), _num(v["verified_kwh"])]
                for d, v in books["days"].items()
            ],
            ["day", "events", "hours", "verified kWh"],
            out,
        )
    return 0
