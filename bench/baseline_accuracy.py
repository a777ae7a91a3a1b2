"""Accuracy of the baseline methods on metered load, under a protocol that does not flatter them.

Pseudo-events: every ``--every``-th working day after a warm-up whose metered windows are complete,
at two windows (10:00-12:00 and 14:00-16:00 local). Nothing was curtailed, so the right baseline
is the meter. Errors are hourly (CalTRACK is hourly). Per dataset and window:

* ``methods``: every rule's CV(RMSE) and NMBE (+ = baseline above the meter = over-credit);
* ``default_method``: fixed in advance, not picked here: the agent's configured default
  (``ContractConfig.official_baseline``'s default);
* ``online_selected``: per event, the rule with the lowest RMSE over the *earlier* events of that
  dataset and window only, scored on events after a burn-in of ``BURN_IN`` events;
* ``caltrack_f``: OpenEEmeter's CalTRACK hourly DR model fed °F (its bins are °F), fitted per event
  day on the 90 days up to the day before (the same cut-off as the rules: data to D-1);
* ``caltrack_f_adjusted``: the same prediction with the same day-of adjustment as ``caiso_10in10``
  (actual / predicted over [start - 4 h, start - 1 h), capped to 1 ± 0.2);
* ``paired_diff_ci``: CV(RMSE) of the online choice minus each CalTRACK row on the same events,
  with a 95 % interval from a week-block bootstrap (ISO weeks resampled with replacement).

Datasets (``pip install -e '.[bench]'``, all read offline; provenance in docs/baselines.md):
``uk-sample-{0,1,2}`` and ``il-hourly`` from eemeter 4.1.1's samples, ``taylor`` from pmdarima.

Usage: ``python bench/baseline_accuracy.py [--json] [--datasets NAME ...] [--every N]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import statistics
import sys
import time as _time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import cache
from pathlib import Path
from typing import Any

# One BLAS thread per process: the pool already uses every core (a CalTRACK fit took 15 s instead
# of 1 s with BLAS threads fighting over 2 loaded cores).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.config.calendar import Calendar
from agent.config.model import ContractConfig
from agent.settlement.baseline import METHODS, EventWindow, LoadSeries

WINDOWS = {"10-12": (time(10), time(12)), "14-16": (time(14), time(16))}
CALTRACK_FIT_DAYS = 90
BURN_IN = 10  # events before the online choice is scored
ADJ_HOURS, ADJ_CAP = (4, 1), 0.20  # caiso_10in10's day-of adjustment, reused for CalTRACK
DEFAULT_METHOD: str = ContractConfig.model_fields["official_baseline"].default

_UK = (
    "2012-01-02 2012-04-06 2012-04-09 2012-05-07 2012-06-04 2012-06-05 2012-08-27 "
    "2012-12-25 2012-12-26 2013-01-01 2013-03-29 2013-04-01 2013-05-06 2013-05-27 "
    "2013-08-26 2013-12-25 2013-12-26 2014-01-01 2014-04-18 2014-04-21 2014-05-05 "
    "2014-05-26 2014-08-25 2014-12-25 2014-12-26 2020-01-01 2020-04-10 2020-04-13 "
    "2020-05-08 2020-05-25 2020-08-31 2020-12-25 2020-12-28 2021-01-01 2021-04-02 "
    "2021-04-05 2021-05-03 2021-05-31 2021-08-30 2021-12-27 2021-12-28 2022-01-03 "
    "2022-04-15 2022-04-18 2022-05-02 2022-06-02 2022-06-03 2022-08-29 2022-09-19 "
    "2022-12-26 2022-12-27 2000-05-29 2000-08-28"
)
# US federal holidays observed, 2015-2018 (the Illinois sample's span).
_US = (
    "2015-11-26 2015-12-25 2016-01-01 2016-01-18 2016-02-15 2016-05-30 2016-07-04 2016-09-05 "
    "2016-11-24 2016-12-26 2017-01-02 2017-01-16 2017-02-20 2017-05-29 2017-07-04 2017-09-04 "
    "2017-11-23 2017-12-25 2018-01-01 2018-01-15"
)
CAL_UK = Calendar(tz="Europe/London", holidays=frozenset(date.fromisoformat(d) for d in _UK.split()))
CAL_US = Calendar(tz="America/Chicago", holidays=frozenset(date.fromisoformat(d) for d in _US.split()))
UK_SAMPLES = {f"uk-sample-{i}": f"uk-electricity-hdd-only-hourly-sample-{i}" for i in range(3)}
DATASETS = [*UK_SAMPLES, "il-hourly", "taylor"]


@dataclass
class Dataset:
    name: str
    series: LoadSeries
    temperature_c: LoadSeries | None
    calendar: Calendar
    warmup_days: int
    note: str


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)


def _to_series(s: Any, step_s: int) -> LoadSeries:
    """A pandas Series on a UTC DatetimeIndex -> LoadSeries, gaps (NaN, missing rows) as None."""
    import pandas as pd

    s = s.sort_index()
    s = s[~s.index.duplicated()]
    full = pd.date_range(s.index[0], s.index[-1], freq=f"{step_s}s")
    s = s.reindex(full)
    vals = [None if (v is None or math.isnan(v)) else float(v) for v in s.to_numpy()]
    return LoadSeries(full[0].timestamp(), step_s, vals)


@cache
def _raw(name: str) -> tuple[Any, Any]:
    """(load, temperature °F or None) as pandas Series on a UTC index."""
    _quiet()
    import pandas as pd

    if name == "taylor":
        from pmdarima.datasets import load_taylor

        y = load_taylor()
        idx = pd.date_range("2000-06-05", periods=len(y), freq="30min", tz="Europe/London")
        return pd.Series(y, index=idx.tz_convert("UTC"), name="observed"), None
    from eemeter.eemeter.samples.load import load_sample

    if name == "il-hourly":
        meter, temp_f, _ = load_sample("il-electricity-cdd-hdd-hourly", tempF=True)
    else:
        meter, temp_c, _ = load_sample(UK_SAMPLES[name], tempF=False)
        temp_f = temp_c * 9 / 5 + 32  # CalTRACK's temperature bins are in °F
    load = meter["value"].rename("observed")
    temp_f = temp_f.rename("temperature")
    lo, hi = max(load.index[0], temp_f.index[0]), min(load.index[-1], temp_f.index[-1])
    return load[lo:hi], temp_f[lo:hi]


@cache
def load_dataset(name: str) -> Dataset:
    load, temp_f = _raw(name)
    if name == "taylor":
        return Dataset(
            name, _to_series(load, 1800), None, CAL_UK, 28, "half-hourly MW, no temperature; 28-day warm-up"
        )
    temp_c = _to_series((temp_f - 32) * 5 / 9, 3600)
    cal = CAL_US if name == "il-hourly" else CAL_UK
    return Dataset(name, _to_series(load, 3600), temp_c, cal, CALTRACK_FIT_DAYS, "hourly kWh (= mean kW)")


def event_days(ds: Dataset, every: int) -> list[date]:
    """Every `every`-th working day after the warm-up whose windows and adjustment hours are complete."""
    cal = ds.calendar
    first = cal.local_date(ds.series.start) + timedelta(days=ds.warmup_days)
    last = cal.local_date(ds.series.end - 1) - timedelta(days=1)
    out = []
    d = first
    while d <= last:
        if cal.is_working_day(d):
            a = cal.at(d, time(6))
            if all(v is not None for v in ds.series.window(a, cal.at(d, time(16)))):
                out.append(d)
        d += timedelta(days=1)
    return out[::every]


def _hourly(values: Sequence[float], step_s: int) -> list[float]:
    k = 3600 // step_s
    return [sum(values[i : i + k]) / k for i in range(0, len(values), k)]


def _window(cal: Calendar, d: date, w: tuple[time, time]) -> EventWindow:
    z = cal.zone
    return EventWindow(
        datetime.combine(d, w[0], tzinfo=z),
        datetime.combine(d, w[1], tzinfo=z),
        notice_date=d - timedelta(days=1),
    )


def run_ours(name: str, days: list[date]) -> dict[str, Any]:
    """window -> day -> {"actual": hourly, "adj_actual": mean kW of the adjustment hours, method: hourly | None}."""
    _quiet()
    ds = load_dataset(name)
    out: dict[str, Any] = {wl: {} for wl in WINDOWS}
    for d in days:
        for wl, w in WINDOWS.items():
            ev = _window(ds.calendar, d, w)
            actual = ds.series.window(ev.start_ts, ev.end_ts)
            adj, _ = ds.series.mean_kw(ev.start_ts - ADJ_HOURS[0] * 3600, ev.start_ts - ADJ_HOURS[1] * 3600)
            row: dict[str, Any] = {
                "actual": _hourly([float(v or 0.0) for v in actual], ds.series.step_s),
                "adj_actual": adj,
            }
            for m, fn in METHODS.items():
                kwargs: dict[str, Any] = {}
                if m == "regression" and ds.temperature_c is not None:
                    kwargs["temperature"] = ds.temperature_c
                r = fn(ds.series, ev, ds.calendar, **kwargs)
                row[m] = _hourly(r.curve_kw, ds.series.step_s) if r.available else None
            out[wl][d.isoformat()] = row
    return out


def run_caltrack(name: str, days: list[date]) -> dict[str, Any]:
    """day -> local hour -> CalTRACK prediction (kW) for day D, fitted on the 90 days before D."""
    _quiet()
    import pandas as pd
    from eemeter.drmeter import CaltrackDRBaselineData, CaltrackDRModel, CaltrackDRReportingData

    ds = load_dataset(name)
    load, temp = _raw(name)
    load = load.resample("h").mean()
    if temp is None:
        # No weather in the dataset: a constant leaves CalTRACK its time-of-week model only.
        temp = pd.Series(59.0, index=load.index, name="temperature")
    hour = pd.Timedelta(hours=1)
    out: dict[str, Any] = {}
    for d in days:
        cut = pd.Timestamp(ds.calendar.at(d, time(0)), unit="s", tz="UTC")
        nxt = pd.Timestamp(ds.calendar.at(d + timedelta(days=1), time(0)), unit="s", tz="UTC")
        fit_start = max(load.index[0], cut - pd.Timedelta(days=CALTRACK_FIT_DAYS))
        try:
            bd = CaltrackDRBaselineData.from_series(
                load[fit_start : cut - hour], temp[fit_start : cut - hour], True
            )
            model = CaltrackDRModel().fit(bd)
            rd = CaltrackDRReportingData.from_series(load[cut : nxt - hour], temp[cut : nxt - hour], True)
            pred = model.predict(rd)["predicted"]
        except Exception as exc:  # a failed fit leaves the day unavailable, not the bench
            print(f"caltrack {name} {d}: {exc!r}", file=sys.stderr)
            continue
        by_hour: dict[int, float] = {}
        for ts, v in pred.items():
            if math.isfinite(v):
                by_hour[datetime.fromtimestamp(ts.timestamp(), ds.calendar.zone).hour] = float(v)
        out[d.isoformat()] = by_hour
    return out


def _cv_nmbe(pairs: Sequence[tuple[list[float], list[float]]]) -> tuple[float, float]:
    errs = [b - a for base, act in pairs for b, a in zip(base, act, strict=True)]
    acts = [a for _, act in pairs for a in act]
    mean_act = statistics.fmean(acts)
    return math.sqrt(statistics.fmean(e * e for e in errs)) / mean_act, statistics.fmean(errs) / mean_act


def _score(curves: dict[str, list[float]], actual: dict[str, list[float]], days: list[str]) -> dict[str, Any]:
    cv, nm = _cv_nmbe([(curves[d], actual[d]) for d in days])
    return {"cv_rmse": cv, "nmbe": nm, "n": len(days)}


def paired_ci(
    a: dict[str, list[float]],
    b: dict[str, list[float]],
    actual: dict[str, list[float]],
    days: list[str],
    draws: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """CV(RMSE) of `a` minus that of `b` on the same days, with a week-block bootstrap 95 % interval."""
    weeks: dict[tuple[int, int], list[str]] = {}
    for d in days:
        weeks.setdefault(date.fromisoformat(d).isocalendar()[:2], []).append(d)
    blocks = list(weeks.values())
    rng = random.Random(seed)

    def diff(ds: list[str]) -> float:
        return _cv_nmbe([(a[d], actual[d]) for d in ds])[0] - _cv_nmbe([(b[d], actual[d]) for d in ds])[0]

    boots = sorted(diff([d for _ in blocks for d in rng.choice(blocks)]) for _ in range(draws))
    return {
        "diff": diff(days),
        "lo": boots[round(0.025 * (draws - 1))],
        "hi": boots[round(0.975 * (draws - 1))],
        "weeks": len(blocks),
    }


def analyse(ours: dict[str, Any], caltrack: dict[str, Any]) -> dict[str, Any]:
    """Per window: methods, default, online choice, CalTRACK rows and paired intervals."""
    res: dict[str, Any] = {
        k: {}
        for k in (
            "methods",
            "default_method",
            "online_selected",
            "caltrack_f",
            "caltrack_f_adjusted",
            "paired_diff_ci",
        )
    }
    for wl, (w0, w1) in WINDOWS.items():
        rows = ours[wl]
        hours = list(range(w0.hour, w1.hour))
        actual = {d: r["actual"] for d, r in rows.items()}
        ct: dict[str, list[float]] = {}
        ct_adj: dict[str, list[float]] = {}
        for d, r in rows.items():
            p = caltrack.get(d)
            if p is None or not all(h in p for h in hours):
                continue
            ct[d] = [p[h] for h in hours]
            adj_h = list(range(w0.hour - ADJ_HOURS[0], w0.hour - ADJ_HOURS[1]))
            if r["adj_actual"] is not None and all(h in p for h in adj_h):
                base = statistics.fmean(p[h] for h in adj_h)
                ratio = r["adj_actual"] / base if base > 0 else 1.0
                ratio = min(max(ratio, 1 - ADJ_CAP), 1 + ADJ_CAP)
                ct_adj[d] = [v * ratio for v in ct[d]]
        # Every method and both CalTRACK rows on the same days: where all gave a baseline.
        common = sorted(d for d in rows if d in ct_adj and all(rows[d][m] is not None for m in METHODS))
        curves = {m: {d: rows[d][m] for d in common} for m in METHODS}
        res["methods"][wl] = {m: _score(curves[m], actual, common) for m in METHODS}
        # Online: choose by RMSE over the earlier events only.
        online: dict[str, list[float]] = {}
        choices: dict[str, int] = {}
        sq = {m: 0.0 for m in METHODS}
        for i, d in enumerate(common):
            if i >= BURN_IN:
                best = min(METHODS, key=lambda m: (sq[m], m))
                online[d] = curves[best][d]
                choices[best] = choices.get(best, 0) + 1
            for m in METHODS:
                sq[m] += sum((b - a) ** 2 for b, a in zip(curves[m][d], actual[d], strict=True))
        scored = [d for d in common if d in online]
        if len(scored) < 2:
            continue
        res["default_method"][wl] = {"name": DEFAULT_METHOD, **_score(curves[DEFAULT_METHOD], actual, scored)}
        res["online_selected"][wl] = {**_score(online, actual, scored), "choices": choices}
        res["caltrack_f"][wl] = _score(ct, actual, scored)
        res["caltrack_f_adjusted"][wl] = _score(ct_adj, actual, scored)
        res["paired_diff_ci"][wl] = {
            "online_minus_caltrack_f": paired_ci(online, ct, actual, scored),
            "online_minus_caltrack_f_adjusted": paired_ci(online, ct_adj, actual, scored),
        }
    return res


def _chunks(xs: list[date], n: int) -> list[list[date]]:
    return [xs[i::n] for i in range(n)] if xs else []


def evaluate(names: list[str], workers: int, every: int | None) -> dict[str, Any]:
    result: dict[str, Any] = {"datasets": {}, "info": {}}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        jobs: dict[str, tuple[list[Any], list[Any]]] = {}
        for n in names:
            days = event_days(load_dataset(n), every or (1 if n == "taylor" else 4))
            parts = _chunks(days, 4)
            jobs[n] = (
                [pool.submit(run_ours, n, p) for p in parts],
                [pool.submit(run_caltrack, n, p) for p in parts],
            )
        for n in names:
            ours: dict[str, Any] = {wl: {} for wl in WINDOWS}
            for f in jobs[n][0]:
                for wl, rows in f.result().items():
                    ours[wl].update(rows)
            ct: dict[str, Any] = {}
            for f in jobs[n][1]:
                ct.update(f.result())
            for wl in ours:
                ours[wl] = dict(sorted(ours[wl].items()))
            result["datasets"][n] = analyse(ours, ct)
            ds = load_dataset(n)
            result["info"][n] = {
                "event_days": len(next(iter(ours.values()))),
                "note": ds.note,
                "timezone": ds.calendar.tz,
            }
    return result


def _p(v: float | None) -> str:
    return "      -" if v is None else f"{v * 100:6.1f}%"


def print_table(result: dict[str, Any]) -> None:
    for name, r in result["datasets"].items():
        info = result["info"][name]
        for wl in WINDOWS:
            if wl not in r["methods"]:
                continue
            n = next(iter(r["methods"][wl].values()))["n"]
            on = r["online_selected"].get(wl)
            print(
                f"\n{name} {wl} local ({info['note']}): {n} pseudo-events scored by every row "
                f"(of {info['event_days']}); online/default/CalTRACK on the {on['n'] if on else 0} after "
                f"{BURN_IN} burn-in"
            )
            print(f"{'row':22} {'CV(RMSE)':>8} {'NMBE':>8}")
            for m, s in sorted(r["methods"][wl].items(), key=lambda ms: ms[1]["cv_rmse"]):
                print(f"{m:22} {_p(s['cv_rmse']):>8} {_p(s['nmbe']):>8}")
            if on is None:
                continue
            d = r["default_method"][wl]
            print(
                f"{'default (' + d['name'] + ')':22} {_p(d['cv_rmse']):>8} {_p(d['nmbe']):>8}   later events"
            )
            ch = ", ".join(f"{k} {v}" for k, v in sorted(on["choices"].items(), key=lambda kv: -kv[1]))
            print(f"{'online_selected':22} {_p(on['cv_rmse']):>8} {_p(on['nmbe']):>8}   chose {ch}")
            for row in ("caltrack_f", "caltrack_f_adjusted"):
                s = r[row][wl]
                print(f"{row:22} {_p(s['cv_rmse']):>8} {_p(s['nmbe']):>8}   later events")
            for k, ci in r["paired_diff_ci"][wl].items():
                print(
                    f"  {k}: {ci['diff'] * 100:+.1f} pp [{ci['lo'] * 100:+.1f}, {ci['hi'] * 100:+.1f}] "
                    f"(95 % CI, {ci['weeks']} week blocks)"
                )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    ap.add_argument("--datasets", nargs="*", default=DATASETS, choices=DATASETS)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument(
        "--every",
        type=int,
        default=None,
        help="score every N-th eligible working day (default 4, Taylor 1: a CalTRACK fit per event day)",
    )
    args = ap.parse_args(argv)
    _quiet()
    t0 = _time.monotonic()
    result = evaluate(list(args.datasets), args.workers, args.every)
    result["elapsed_s"] = round(_time.monotonic() - t0, 1)
    result["protocol"] = {
        "windows": list(WINDOWS),
        "every": args.every,
        "burn_in": BURN_IN,
        "default_method": DEFAULT_METHOD,
        "caltrack_fit_days": CALTRACK_FIT_DAYS,
    }
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print_table(result)
        print(f"\nelapsed {result['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
