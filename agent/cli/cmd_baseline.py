"""`dr-agent baseline`: advice on which baseline pays this site fairly, and marking shutdown days.

``advise`` backtests every baseline method on the site's own metering history: every working day
with no DR event becomes a pseudo-event at the contract's hours. Nothing was curtailed on those
days, so the right baseline is the meter; a method's error there is what it would add to or take
from a real event's verified kW. Per method it prints the expected error (CV(RMSE)) and bias
(NMBE), each with a 95 % interval from a week-block bootstrap, and which programme's rule would
pay the site most fairly (docs/baselines.md, "Advice for a site").

``mark-shutdown`` records a day the plant did not run normally in ``conf.d/50-shutdown-days.yaml``
beside the config (``calendar.shutdown_days``): a config fragment rather than a database row,
because it is a fact an operator reviews, diffs and backs up with the site's config, `validate`
checks it, `systemctl reload` applies it like any config change, and it survives a rebuilt
database. Settlements already made are not recomputed.

``fill-sim-history`` writes a month (or ``--days``) of simulated meter history into a database
(the demo's kept one) so that ``advise`` has something to chew on; never for a real site.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import statistics
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, TextIO

from agent.config.calendar import Calendar
from agent.settlement.baseline import METHODS, EventWindow, LoadSeries, compute_all

#: What each method is, in the words of the programme whose rule it is.
RULES = {
    "jiangsu_5day": "Jiangsu contracted DR",
    "realtime_15min": "Jiangsu real-time DR",
    "beijing_5of10": "Beijing",
    "caiso_10in10": "CAISO 10-in-10",
    "pjm_high4of5": "PJM High 4 of 5",
    "linear_trend": "linear extrapolation (CAISO/NYISO/ISO-NE family)",
    "regression": "regression (PJM/LBNL family)",
}
#: A method must give a baseline on this share of the pseudo-events to be recommended.
MIN_AVAILABLE = 0.9
SHUTDOWN_FRAGMENT = "50-shutdown-days.yaml"


@dataclass
class Score:
    """One method's backtest: errors of the window-mean baseline against the meter, per pseudo-event."""

    method: str
    errors_kw: list[float] = field(default_factory=list)
    actual_kw: list[float] = field(default_factory=list)
    days: list[date] = field(default_factory=list)
    unavailable: int = 0
    cv_rmse: float | None = None
    nmbe: float | None = None
    cv_ci: tuple[float, float] | None = None
    nmbe_ci: tuple[float, float] | None = None

    @property
    def n(self) -> int:
        return len(self.errors_kw)

    @property
    def availability(self) -> float:
        total = self.n + self.unavailable
        return self.n / total if total else 0.0

    @property
    def bias_kw(self) -> float | None:
        return statistics.fmean(self.errors_kw) if self.errors_kw else None


def _cv_nmbe(errs: Sequence[float], acts: Sequence[float]) -> tuple[float, float]:
    mean_act = statistics.fmean(acts)
    if mean_act <= 0:
        return math.inf, math.inf
    return math.sqrt(statistics.fmean(e * e for e in errs)) / mean_act, statistics.fmean(errs) / mean_act


def week_block_ci(
    days: Sequence[date],
    errs: Sequence[float],
    acts: Sequence[float],
    *,
    draws: int = 1000,
    seed: int = 0,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """95 % intervals of (CV(RMSE), NMBE) by resampling whole ISO weeks with replacement (days in a
    week share weather and operations, so they are not independent draws)."""
    weeks: dict[tuple[int, int], list[int]] = {}
    for i, d in enumerate(days):
        weeks.setdefault(d.isocalendar()[:2], []).append(i)
    blocks = list(weeks.values())
    rng = random.Random(seed)
    cvs, nmbes = [], []
    for _ in range(draws):
        idx = [i for _ in blocks for i in rng.choice(blocks)]
        cv, nm = _cv_nmbe([errs[i] for i in idx], [acts[i] for i in idx])
        cvs.append(cv)
        nmbes.append(nm)
    cvs.sort()
    nmbes.sort()
    lo, hi = round(0.025 * (draws - 1)), round(0.975 * (draws - 1))
    return (cvs[lo], cvs[hi]), (nmbes[lo], nmbes[hi])


def pseudo_event_days(
    series: LoadSeries, calendar: Calendar, start: time, end: time, excluded: Collection[date]
) -> list[date]:
    """Working days (not event days, not marked shutdowns) whose metered window is complete."""
    first = calendar.local_date(series.start)
    last = calendar.local_date(series.end - 1)
    out = []
    d = first
    while d <= last:
        if calendar.is_working_day(d) and d not in excluded and not calendar.is_shutdown(d):
            a, b = calendar.at(d, start), calendar.at(d, end)
            if a >= series.start and b <= series.end and series.is_aligned(a) and series.is_aligned(b):
                if all(v is not None for v in series.window(a, b)):
                    out.append(d)
        d += timedelta(days=1)
    return out


def backtest(
    series: LoadSeries,
    calendar: Calendar,
    start: time,
    end: time,
    days: Sequence[date],
    *,
    excluded: Collection[date] = frozenset(),
    params: dict[str, dict[str, Any]] | None = None,
    draws: int = 1000,
) -> dict[str, Score]:
    """Every method's errors over pseudo-events at ``start``-``end`` local on ``days``, with
    intervals; ranked best first (recommendable methods by CV(RMSE), then the rest)."""
    scores = {m: Score(m) for m in METHODS}
    tz = calendar.zone
    for d in days:
        w = EventWindow(
            datetime.combine(d, start, tzinfo=tz),
            datetime.combine(d, end, tzinfo=tz),
            notice_date=d - timedelta(days=1),  # day-ahead invitation
        )
        actual, cov = series.mean_kw(w.start_ts, w.end_ts)
        if actual is None or cov < 1.0:
            continue
        results = compute_all(
            series, w, calendar, "realtime_15min", excluded_dates=frozenset(excluded), params=params
        )
        for m, r in results.items():
            s = scores[m]
            if r.available and r.mean_kw is not None:
                s.errors_kw.append(r.mean_kw - actual)
                s.actual_kw.append(actual)
                s.days.append(d)
            else:
                s.unavailable += 1
    for s in scores.values():
        if s.n >= 2:
            s.cv_rmse, s.nmbe = _cv_nmbe(s.errors_kw, s.actual_kw)
            s.cv_ci, s.nmbe_ci = week_block_ci(s.days, s.errors_kw, s.actual_kw, draws=draws)
    return dict(sorted(scores.items(), key=lambda ms: _rank_key(ms[1])))


def _rank_key(s: Score) -> tuple[int, float]:
    ok = s.cv_rmse is not None and s.availability >= MIN_AVAILABLE
    return (0 if ok else 1, s.cv_rmse if s.cv_rmse is not None else math.inf)


def _pct(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v * 100:+.1f}%"


def _ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"[{ci[0] * 100:.1f}, {ci[1] * 100:.1f}]"


def print_advice(
    scores: dict[str, Score], *, official: str | None, header: str, out: TextIO
) -> dict[str, Any]:
    """The table and the verdict; returns the same as a JSON-able dict."""
    print(header, file=out)
    print(
        f"{'method':15} {'rule of':26} {'error CV(RMSE) [95% CI]':>26} {'bias NMBE [95% CI]':>26} "
        f"{'bias kW':>8} {'n':>4} {'n/a':>4}",
        file=out,
    )
    for m, s in scores.items():
        cv = "-" if s.cv_rmse is None else f"{s.cv_rmse * 100:.1f}% {_ci(s.cv_ci)}"
        nm = "-" if s.nmbe is None else f"{_pct(s.nmbe)} {_ci(s.nmbe_ci)}"
        bias = "-" if s.bias_kw is None else f"{s.bias_kw:+.1f}"
        mark = "*" if m == official else " "
        print(
            f"{m + mark:15} {RULES.get(m, '').split(' (')[0][:26]:26} {cv:>26} {nm:>26} {bias:>8} {s.n:>4} {s.unavailable:>4}",
            file=out,
        )
    ranked = [s for s in scores.values() if _rank_key(s)[0] == 0]
    best = ranked[0] if ranked else None
    verdict: dict[str, Any] = {"best": best.method if best else None}
    if best is None:
        print("\nNo method gave a baseline on enough of the pseudo-events: more history is needed.", file=out)
    else:
        print(
            f"\nFairest rule for this site: {best.method} ({RULES.get(best.method, '')}): expected error "
            f"{best.cv_rmse * 100:.1f}% of the window's load, bias {_pct(best.nmbe)} "  # type: ignore[operator]
            f"({'over' if (best.bias_kw or 0) > 0 else 'under'}-credits {abs(best.bias_kw or 0):.1f} kW "
            "per event on average).",
            file=out,
        )
    if official is not None and official in scores:
        o = scores[official]
        verdict["official"] = official
        if o.cv_rmse is not None and o.bias_kw is not None:
            side = "more" if o.bias_kw > 0 else "less"
            print(
                f"The contract settles on {official} (*): on these days it would have verified "
                f"{abs(o.bias_kw):.1f} kW {side} than the site reduced, on average (bias {_pct(o.nmbe)}), "
                f"with a typical error of {o.cv_rmse * 100:.1f}% of the load.",
                file=out,
            )
        else:
            print(f"The contract settles on {official} (*): unavailable on these days.", file=out)
    print(
        "* official. Error and bias: the baseline's mean over the window minus the metered mean, per "
        "pseudo-event; + = the site would be over-credited. Intervals: week-block bootstrap.",
        file=out,
    )
    verdict["methods"] = {
        m: {
            "cv_rmse": s.cv_rmse,
            "cv_rmse_ci": s.cv_ci,
            "nmbe": s.nmbe,
            "nmbe_ci": s.nmbe_ci,
            "bias_kw": s.bias_kw,
            "n": s.n,
            "unavailable": s.unavailable,
        }
        for m, s in scores.items()
    }
    return verdict


# -- the commands ------------------------------------------------------------------------------


class BaselineCmdError(Exception):
    pass


def _hhmm(v: str) -> time:
    try:
        return time.fromisoformat(v)
    except ValueError:
        raise BaselineCmdError(f"{v!r} is not a time of day; write HH:MM") from None


def contract_window(cfg: Any, override: str | None) -> tuple[time, time]:
    """The pseudo-events' hours: ``--window HH:MM-HH:MM``, else the first two hours of the
    contract's allowed hours (Jiangsu: at most 2 h of contracted DR a day), else 14:00-16:00."""
    if override:
        a, sep, b = override.partition("-")
        if not sep:
            raise BaselineCmdError(f"--window {override!r}: write HH:MM-HH:MM")
        start, end = _hhmm(a), _hhmm(b)
    elif cfg.contract.allowed_hours is not None:
        start, stop = (_hhmm(x) for x in cfg.contract.allowed_hours)
        two = (datetime.combine(date(2000, 1, 1), start) + timedelta(hours=2)).time()
        end = min(two, stop)
    else:
        start, end = time(14), time(16)
    if end <= start:
        raise BaselineCmdError(f"window {start:%H:%M}-{end:%H:%M}: the end must be after the start")
    return start, end


def _load(args: argparse.Namespace) -> tuple[Any, Path]:
    from agent.config.load import ConfigError, load_site_config

    try:
        cfg, _ = load_site_config(args.config)
    except ConfigError as exc:
        raise BaselineCmdError("\n".join(exc.lines)) from None
    db = Path(args.db) if getattr(args, "db", None) else cfg.storage.resolved()
    return cfg, db


def run_advise(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    import json

    from agent.platform.store import Store
    from agent.settlement.books import excluded_dates
    from agent.settlement.history import load_series

    cfg, db = _load(args)
    if not db.is_file():
        raise BaselineCmdError(f"{db}: no such database (has the agent run with this config?)")
    start, end = contract_window(cfg, args.window)
    calendar = cfg.calendar.calendar(cfg.site.timezone)
    meter = cfg.site.meter
    store = Store(db)
    try:
        row = store.db.execute(
            "SELECT min(quarter), max(quarter) FROM readings_15m WHERE device=?", (meter,)
        ).fetchone()
        if row is None or row[0] is None:
            raise BaselineCmdError(f"{db}: no readings of the site meter {meter!r}")
        series = load_series(store, meter, row[0] * 900.0, (row[1] + 1) * 900.0, step_s=900)
        excluded = excluded_dates(store, calendar.zone, "")
    finally:
        store.close()
    share = cfg.contract.baseline.normal_day_min_share
    params = {"jiangsu_5day": {"min_day_share": share}, "beijing_5of10": {"min_day_share": share}}
    days = pseudo_event_days(series, calendar, start, end, excluded)
    first_ok = calendar.local_date(series.start) + timedelta(days=args.warmup_days)
    days = [d for d in days if d >= first_ok]
    if args.last_days:
        days = days[-args.last_days :]
    if not days:
        raise BaselineCmdError("no working day with a complete metered window in the history")
    scores = backtest(series, calendar, start, end, days, excluded=excluded, params=params)
    header = (
        f"Baselines backtested on {cfg.site.id}'s own history: {len(days)} pseudo-events "
        f"{start:%H:%M}-{end:%H:%M} on working days {days[0]}..{days[-1]} without a DR event "
        f"(15-min meter means, {calendar.local_date(series.start)}..{calendar.local_date(series.end - 1)}).\n"
        f"Nothing was curtailed on them, so the right baseline is the meter. The first {args.warmup_days} "
        "days are look-back only."
    )
    if args.json:
        import io

        verdict = print_advice(
            scores, official=cfg.contract.official_baseline, header=header, out=io.StringIO()
        )
        print(json.dumps(verdict, default=str, sort_keys=True), file=out)
    else:
        print_advice(scores, official=cfg.contract.official_baseline, header=header, out=out)
    return 0


_DATE_LINE = re.compile(r"^\s*-\s*(\d{4}-\d{2}-\d{2})\s*(?:#\s*(.*))?$")


def run_mark_shutdown(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from agent.config.load import ConfigError, load_site_config

    try:
        day = date.fromisoformat(args.day)
    except ValueError:
        raise BaselineCmdError(f"{args.day!r} is not a date; write YYYY-MM-DD") from None
    cfg, _ = _load(args)
    frag = Path(args.config).parent / "conf.d" / SHUTDOWN_FRAGMENT
    reasons: dict[date, str] = {}
    old_text = frag.read_text(encoding="utf-8") if frag.is_file() else None
    for line in (old_text or "").splitlines():
        m = _DATE_LINE.match(line)
        if m:
            reasons[date.fromisoformat(m.group(1))] = (m.group(2) or "").strip()
    days = set(cfg.calendar.shutdown_days) | {day}
    if day in cfg.calendar.shutdown_days and not args.reason:
        print(f"{day} is already marked as a shutdown day", file=out)
        return 0
    if args.reason:
        reasons[day] = args.reason.replace("\n", " ")
    lines = [
        "# Days the plant did not run normally: no look-back baseline uses them (docs/baselines.md).",
        "# Written by `dr-agent baseline mark-shutdown`; holds the whole list (lists replace whole).",
        "calendar:",
        "  shutdown_days:",
    ]
    for d in sorted(days):
        why = reasons.get(d)
        lines.append(f"    - {d.isoformat()}" + (f"  # {why}" if why else ""))
    frag.parent.mkdir(parents=True, exist_ok=True)
    frag.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        load_site_config(args.config)
    except ConfigError as exc:  # put back what was there: a failed mark changes nothing
        if old_text is None:
            frag.unlink()
        else:
            frag.write_text(old_text, encoding="utf-8")
        raise BaselineCmdError("the config would not validate:\n" + "\n".join(exc.lines)) from None
    print(
        f"marked {day} as a shutdown day in {frag}; apply it with `systemctl reload dr-agent` "
        "(the next settlements skip it; those already made are not recomputed)",
        file=out,
    )
    return 0


def fill_sim_history(cfg: Any, db: Path, days: int, end: datetime, seed: int = 1) -> int:
    """Simulated site-meter history for the `days` days before `end` (1-minute readings).

    The demo plant's daily shape (drivers/sim) scaled per day: working days a level drawn around
    1.0 (sd 6 %) on a slow 0.3 %/day drift, weekends and holidays 45 %, and one working day in
    ten at a third (a partial shutdown). Returns the readings written."""
    from agent.platform.store import Store
    from drivers.sim.plant import SimulatedPlant

    calendar = cfg.calendar.calendar(cfg.site.timezone)
    offset = end.utcoffset()
    plant = SimulatedPlant.build(
        cfg.devices,
        peak_kw=cfg.contract.peak_kw,
        meter_name=cfg.site.meter,
        seed=seed,
        tz_offset_s=offset.total_seconds() if offset is not None else 0.0,
    )
    rng = random.Random(seed)
    t_end = math.floor(end.timestamp() / 60) * 60
    t = t_end - days * 86400
    rows: list[tuple[str, float, float]] = []
    level: dict[date, float] = {}
    store = Store(db)
    n = 0
    try:
        while t < t_end:
            plant.step(t)
            d = calendar.local_date(t)
            if d not in level:
                k = (d - calendar.local_date(t_end - days * 86400)).days
                if not calendar.is_working_day(d):
                    level[d] = 0.45
                elif rng.random() < 0.1:
                    level[d] = 0.33
                else:
                    level[d] = (1.0 + 0.003 * k) * rng.gauss(1.0, 0.06)
            rows.append((cfg.site.meter, float(t), plant.site_kw() * level[d]))
            t += 60
            if len(rows) >= 20000:
                store.add_readings(rows)
                n += len(rows)
                rows = []
        store.add_readings(rows)
        n += len(rows)
    finally:
        store.close()
    return n


def run_fill(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from zoneinfo import ZoneInfo

    cfg, db = _load(args)
    tz = ZoneInfo(cfg.site.timezone)
    end = datetime.fromisoformat(args.end).replace(tzinfo=tz) if args.end else datetime.now(tz)
    n = fill_sim_history(cfg, db, args.days, end)
    print(
        f"wrote {n} simulated meter readings ({args.days} days before {end:%Y-%m-%d %H:%M}) into {db}",
        file=out,
    )
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        rc: int = args.baseline_func(args, sys.stdout)
        return rc
    except BaselineCmdError as exc:
        print(f"dr-agent baseline {args.baseline_cmd}: {exc}", file=sys.stderr)
        return 2


def register(sub: Any) -> None:
    p = sub.add_parser(
        "baseline",
        help="which baseline pays this site fairly (advise); mark a shutdown day",
        description="Baseline advice from the site's own history, and the days no baseline may use.",
    )
    bsub = p.add_subparsers(dest="baseline_cmd", required=True)
    a = bsub.add_parser(
        "advise",
        help="backtest every baseline method on the site's history at the contract's hours",
        description="Every working day without an event becomes a pseudo-event; per method the "
        "expected error and bias with 95%% intervals, and the rule that pays this site most fairly.",
    )
    a.add_argument("-c", "--config", required=True, help="site config YAML")
    a.add_argument("--db", help="SQLite database (default: the config's storage path)")
    a.add_argument("--window", metavar="HH:MM-HH:MM", help="pseudo-event hours (default: the contract's)")
    a.add_argument("--last-days", type=int, default=0, metavar="N", help="only the last N pseudo-events")
    a.add_argument(
        "--warmup-days",
        type=int,
        default=16,
        metavar="N",
        help="history before the first pseudo-event (default 16: Beijing's 10 typical days from D-2)",
    )
    a.add_argument("--json", action="store_true", help="one JSON object")
    a.set_defaults(func=run, baseline_func=run_advise)
    m = bsub.add_parser(
        "mark-shutdown",
        help="mark a day the plant did not run normally (no baseline uses it)",
        description=f"Adds the day to calendar.shutdown_days in conf.d/{SHUTDOWN_FRAGMENT} beside the config.",
    )
    m.add_argument("-c", "--config", required=True, help="site config YAML")
    m.add_argument("day", help="the local date, YYYY-MM-DD")
    m.add_argument("--reason", help="kept as a comment beside the date")
    m.set_defaults(func=run, baseline_func=run_mark_shutdown)
    f = bsub.add_parser(
        "fill-sim-history",
        help="write simulated meter history into a database (demo and docs only, never a real site)",
    )
    f.add_argument("-c", "--config", required=True, help="site config YAML (the demo's)")
    f.add_argument("--db", help="SQLite database (default: the config's storage path)")
    f.add_argument("--days", type=int, default=30, help="days of history (default 30)")
    f.add_argument("--end", help="local end, YYYY-MM-DDTHH:MM (default: now)")
    f.set_defaults(func=run, baseline_func=run_fill)
