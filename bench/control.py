"""Control benchmark: the production control loop against a naive one on a fixed, seeded scenario set.

    python bench/control.py            # a table per scenario, the aggregate, and the targets checked
    python bench/control.py --json     # one JSON object
    python bench/control.py --only factory-steps --timeline out.csv

Every scenario (bench/scenarios/*.yaml) is one simulated day at a factory,
an office or a warehouse: a load profile, noise, process steps, device
failures, meter outages, target changes and one DR event. Each runs twice
through `agent.cli.simulate.simulate_event` — the real Agent with a manual clock
over loopback transports — once with the production `Controller` ("ours")
and once with `NaiveController` ("naive": everything shed in strategy order
at the start, everything released at the end). The figures come from the
event's settlement (`control` block), i.e. the same numbers an operator sees.
See docs/control.md for the definitions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.cli.simulate import SimResult, simulate_event
from agent.config.load import load_site_config
from agent.control.controller import Controller, Decision, EventControl
from agent.events.model import DrEvent
from agent.runtime.daemon import Agent
from drivers.sim.plant import SimulatedPlant
from drivers.sim.scenario import Disturbances, Scenario, load_scenario

SCENARIOS = REPO / "bench" / "scenarios"

#: The issue's "done when" targets.
TARGETS = {
    "median_time_to_band_s": 60.0,
    "in_band_fraction": 0.97,
    "limit_violations": 0,
    "rebound_peak_pct": 5.0,
}


class NaiveController(Controller):
    """The baseline to beat: shed every step in strategy order at the start, release all at the end."""

    async def cycle(
        self,
        ev: EventControl,
        now: float,
        load_kw: float | None,
        peak_kw: float,
        raw_kw: float | None = None,
    ) -> Decision:
        self._peak = peak_kw
        self.run = self.last = ev
        self.observe(ev, now, raw_kw if raw_kw is not None else load_kw)
        if ev.actuations == 0 and not ev.active:
            for st in self.candidates(ev, now):
                await self._add(ev, st, now, load_kw)
            return Decision("add", "naive: everything at once")
        return Decision("hold", "naive: holding")

    async def restore_next(
        self, ev: EventControl, now: float, load_kw: float | None, recovery_deadline: float
    ) -> bool:
        for a in list(reversed(ev.active)):
            await self._release(ev, a, now, "event ended")
        return True


def scenario_files(only: list[str] | None = None) -> list[Path]:
    files = sorted(SCENARIOS.glob("*.yaml"))
    if only:
        files = [f for f in files if any(o in f.stem for o in only)]
    return files


def event_for(sc: Scenario, tz: ZoneInfo) -> DrEvent:
    e = sc.event
    return DrEvent.model_validate(
        {
            "event_id": f"bench-{sc.name}",
            "modification_number": 0,
            "status": "far",
            "program": e.program,
            "priority": 1,
            # Events carry RFC 3339 times, as on the wire.
            "start": datetime.fromtimestamp(sc.ts(e.start, tz), tz).isoformat(),
            "duration_s": e.duration_s,
            "ramp_up_s": e.ramp_up_s,
            "target": {"reduce_pct_of_peak": e.target_pct},
        }
    )


def run_one(path: str, variant: str, timeline: bool = False) -> dict[str, Any]:
    """Simulate one scenario with one controller; returns its figures (picklable, for the pool)."""
    sc = load_scenario(path)
    cfg, _w = load_site_config(sc.site_path())
    # The benchmark's database lives in a temp dir; keep prometheus and MQTT out of it.
    tz = ZoneInfo(cfg.site.timezone)
    peak = cfg.contract.peak_kw
    plant = sc.build_plant(list(cfg.devices), peak_kw=peak, meter_name=cfg.site.meter, tz=tz)
    disturb = Disturbances(sc, plant, cfg.site.meter, tz)
    changes = sorted((sc.ts(c.at, tz), peak * c.target_pct / 100) for c in sc.target_changes)

    def on_tick(now: float, agent: Agent, p: SimulatedPlant) -> None:
        disturb(now)
        while changes and changes[0][0] <= now:
            _t, kw = changes.pop(0)
            rec = agent.running()
            if rec is not None and rec.control is not None:
                rec.control.committed_kw = kw  # the harness's stand-in for a provider's modification

    factory = (
        (lambda a: NaiveController(a.cfg.control, a.devices, a.actuator, a.tz))
        if variant == "naive"
        else None
    )
    t0 = time.perf_counter()
    res: SimResult = asyncio.run(
        simulate_event(cfg, event_for(sc, tz), plant=plant, on_tick=on_tick, controller=factory, tail_s=7200)
    )
    wall = time.perf_counter() - t0
    s = res.settlement or {}
    c = s.get("control") or {}
    out: dict[str, Any] = {
        "scenario": sc.name,
        "variant": variant,
        "settled": bool(s),
        "duration_s": sc.event.duration_s,
        "time_to_band_s": c.get("time_to_band_s"),
        "in_band_fraction": c.get("in_band_fraction"),
        "tracking_error_pct": c.get("tracking_error_pct"),
        "overshoot_pct": c.get("overshoot_pct"),
        "above_band_fraction": c.get("above_band_fraction"),
        "actuations": c.get("actuations"),
        "rebound_peak_pct": c.get("rebound_peak_pct"),
        "degraded_s": c.get("degraded_s"),
        "limit_violations": res.limit_violations,
        "violations": res.violations[:5],
        "settlement_in_band_fraction": s.get("in_band_fraction"),
        "verified_pct_of_peak": s.get("verified_reduction_pct_of_peak"),
        "wall_s": round(wall, 2),
    }
    if timeline:
        out["timeline"] = [
            (
                t.get("ts"),
                t.get("site_kw_raw"),
                t.get("realized_kw"),
                t.get("phase"),
                len(t.get("active_steps") or []),
            )
            for t in res.timeline
        ]
    return out


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median time to band (never = the event's length), mean in-band fraction, total violations, worst rebound."""
    # Never in band counts as the whole event (a censored value), so the median stays a number.
    ttb = [r["time_to_band_s"] if r["time_to_band_s"] is not None else r["duration_s"] for r in rows]
    ib = [r["in_band_fraction"] or 0.0 for r in rows]
    rb = [r["rebound_peak_pct"] for r in rows if r["rebound_peak_pct"] is not None]
    err = [r["tracking_error_pct"] for r in rows if r["tracking_error_pct"] is not None]
    med = statistics.median(ttb) if ttb else math.inf
    return {
        "median_time_to_band_s": None if math.isinf(med) else round(med, 1),
        "never_in_band": sum(r["time_to_band_s"] is None for r in rows),
        "in_band_fraction": round(statistics.fmean(ib), 4) if ib else 0.0,
        "min_in_band_fraction": round(min(ib), 4) if ib else 0.0,
        "limit_violations": sum(r["limit_violations"] for r in rows),
        "rebound_peak_pct": round(max(rb), 3) if rb else None,
        "median_rebound_peak_pct": round(statistics.median(rb), 3) if rb else None,
        "tracking_error_pct": round(statistics.fmean(err), 3) if err else None,
        "max_overshoot_pct": round(max((r["overshoot_pct"] or 0.0) for r in rows), 3) if rows else None,
        "actuations": sum(r["actuations"] or 0 for r in rows),
        "unsettled": sum(not r["settled"] for r in rows),
    }


def check(ours: dict[str, Any], naive: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """Each target of the issue, met or not, with the figures."""

    def ttb(a: dict[str, Any]) -> float:
        return math.inf if a["median_time_to_band_s"] is None else a["median_time_to_band_s"]

    def rb(a: dict[str, Any]) -> float:
        return math.inf if a["rebound_peak_pct"] is None else a["rebound_peak_pct"]

    return [
        (
            "median time to band <= 60 s, better than naive",
            ttb(ours) <= TARGETS["median_time_to_band_s"] and ttb(ours) < ttb(naive),
            f"{ttb(ours):g} s vs {ttb(naive):g} s",
        ),
        (
            "in-band fraction >= 0.97, better than naive",
            ours["in_band_fraction"] >= TARGETS["in_band_fraction"]
            and ours["in_band_fraction"] > naive["in_band_fraction"],
            f"{ours['in_band_fraction']:.4f} vs {naive['in_band_fraction']:.4f}",
        ),
        (
            "zero comfort/safety limit violations, no more than naive",
            ours["limit_violations"] == 0 and ours["limit_violations"] <= naive["limit_violations"],
            f"{ours['limit_violations']} vs {naive['limit_violations']}",
        ),
        (
            "rebound peak <= 5 % of peak (worst scenario), better than naive",
            rb(ours) <= TARGETS["rebound_peak_pct"] and rb(ours) < rb(naive),
            f"{rb(ours):g} % vs {rb(naive):g} %",
        ),
    ]


def _fmt(v: Any, spec: str = "g") -> str:
    if v is None:
        return "-"
    return format(v, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--only", nargs="*", help="run scenarios whose name contains one of these")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel simulations")
    ap.add_argument("--variant", choices=["ours", "naive", "both"], default="both")
    ap.add_argument("--timeline", help="with one scenario: write its timeline (ours) as CSV here")
    args = ap.parse_args(argv)
    files = scenario_files(args.only)
    if not files:
        print("no scenarios matched", file=sys.stderr)
        return 2
    variants = ["ours", "naive"] if args.variant == "both" else [args.variant]
    jobs = [(str(f), v) for f in files for v in variants]
    t0 = time.perf_counter()
    if args.timeline:
        row = run_one(str(files[0]), variants[0], timeline=True)
        with open(args.timeline, "w", encoding="utf-8") as fh:
            fh.write("ts,site_kw,realized_kw,phase,active_steps\n")
            for t in row.pop("timeline"):
                fh.write(",".join("" if x is None else str(x) for x in t) + "\n")
        rows = [row]
    elif args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            rows = list(pool.map(run_one, *zip(*jobs, strict=True)))
    else:
        rows = [run_one(p, v) for p, v in jobs]
    wall = time.perf_counter() - t0
    by = {v: [r for r in rows if r["variant"] == v] for v in variants}
    agg = {v: aggregate(rs) for v, rs in by.items()}
    result: dict[str, Any] = {"scenarios": len(files), **agg, "wall_s": round(wall, 1)}
    if "ours" in agg and "naive" in agg:
        checks = check(agg["ours"], agg["naive"])
        result["targets_met"] = all(ok for _n, ok, _d in checks)
        result["checks"] = [{"target": n, "met": ok, "figures": d} for n, ok, d in checks]
    result["per_scenario"] = rows
    if args.json:
        print(json.dumps(result))
        return 0
    head = f"{'scenario':28} {'ctl':5} {'t_band':>7} {'in_band':>7} {'err%':>6} {'over%':>6} {'act':>4} {'rebound%':>8} {'viol':>4} {'degr_s':>6}"
    print(head)
    print("-" * len(head))
    for r in sorted(rows, key=lambda r: (r["scenario"], r["variant"] != "ours")):
        print(
            f"{r['scenario']:28} {r['variant']:5} {_fmt(r['time_to_band_s']):>7} {_fmt(r['in_band_fraction'], '.3f'):>7} "
            f"{_fmt(r['tracking_error_pct'], '.2f'):>6} {_fmt(r['overshoot_pct'], '.2f'):>6} {_fmt(r['actuations']):>4} "
            f"{_fmt(r['rebound_peak_pct'], '.2f'):>8} {r['limit_violations']:>4} {_fmt(r['degraded_s']):>6}"
        )
    print()
    for v, a in agg.items():
        print(
            f"{v:5}: median time to band {_fmt(a['median_time_to_band_s'])} s (never {a['never_in_band']}), "
            f"in band {a['in_band_fraction']:.4f} (min {a['min_in_band_fraction']:.3f}), "
            f"tracking error {_fmt(a['tracking_error_pct'])} %, max overshoot {_fmt(a['max_overshoot_pct'])} %, "
            f"worst rebound {_fmt(a['rebound_peak_pct'])} % (median {_fmt(a['median_rebound_peak_pct'])}), "
            f"violations {a['limit_violations']}, actuations {a['actuations']}"
        )
    if "checks" in result:
        print()
        for c in result["checks"]:
            print(f"[{'PASS' if c['met'] else 'FAIL'}] {c['target']}: {c['figures']}")
    print(f"\n{len(files)} scenarios x {len(variants)} controllers in {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
