"""What the metering history costs on disk: database growth, bytes written, history kept.

Runs the daemon's own flush path (`Agent.flush_once`: readings buffered in memory, written in
batches, retention and the disk budget applied) on a real SQLite file, on an injected clock,
for `--hours` simulated hours of readings at 1 Hz from N devices: a site meter (noisy, every
second) and N-1 loads (each noisy around a level that steps now and then). No Modbus: the
readings are generated. Measured:

- db growth per day: pages in use (page_count - freelist_count) after the run, scaled to a day;
- writes per day: bytes this process wrote to the database and its WAL (/proc/self/io wchar,
  the write() calls before the page cache: an upper bound on what reaches the eMMC), scaled;
- a year: extrapolated from the measured bytes per row of each table (dbstat) and each table's
  retention under the budget (say which: extrapolated, not simulated), with the days of
  history each table keeps, and the largest the database gets.

    python bench/storage.py [--devices 10,100,1000] [--hours 2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _site

DAY = 86400.0


def wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def table_bytes(db: Any) -> dict[str, int]:
    return {
        name: int(size) for name, size in db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")
    }


async def one_size(devices: int, hours: float, seed: int) -> dict[str, Any]:
    from agent.platform.clock import ManualClock
    from agent.runtime import daemon
    from agent.runtime.daemon import Agent

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="dr-agent-bench-") as tmp_s:
        tmp = Path(tmp_s)
        site = _site.build_site(tmp, 1883, devices, max(1, devices // 20))
        t0 = site.clock.origin_sim - 11 * 3600  # local midnight
        clock = ManualClock(t0)
        agent = Agent(site.cfg, clock, metrics=False)
        meter = site.cfg.site.meter
        rated = {d.name: d.rated_kw or 10.0 for d in site.cfg.devices}
        level = {n: rng.uniform(0.2, 1.0) * rated[n] for n in rated}
        budget = getattr(site.cfg.storage, "max_mb", None)
        flush_s = getattr(daemon, "FLUSH_INTERVAL_S", 2.0)
        w0, c0 = wchar(), time.process_time()
        # At most 3.6 M readings a size (1,000 devices: one hour), so the bench stays under 5 minutes.
        hours = min(hours, 1000.0 / devices)
        steps = int(hours * 3600)
        flush_every = int(flush_s)
        for s in range(steps):
            now = t0 + s
            for n in rated:
                if n == meter:
                    kw = 500 + 50 * rng.random()
                else:
                    if rng.random() < 1 / 600:  # a load changes level every 10 minutes or so
                        level[n] = rng.uniform(0.2, 1.0) * rated[n]
                    kw = level[n] * (1 + rng.gauss(0, 0.002))  # a steady load's ripple
                agent.pending.rows.append((n, now, round(kw, 3)))
            if (s + 1) % flush_every == 0:
                clock.advance(now + 1 - clock.now())
                if hasattr(agent, "flush_once"):
                    await agent.flush_once(now + 1)
                else:  # the flush loop as it was: every 2 s, retention once an hour
                    await agent.flush()
                    if s % 3600 == 0:
                        from agent.settlement.history import Pruner

                        await agent.store.call(
                            Pruner().run, agent.store.sync, site.cfg.storage, list(rated), meter, now
                        )
        if hasattr(agent, "flush_once"):
            await agent.flush(final=True)  # the minutes still open, as a stop writes them
        if hasattr(agent.store.sync, "rollup_quarters"):
            # Other devices' quarters, as the hourly prune folds them (one fold an hour simulated).
            await agent.store.call(agent.store.sync.rollup_quarters, t0 + steps)
        cpu = time.process_time() - c0
        written = wchar() - w0
        db = agent.store.sync.db
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = db.execute("PRAGMA page_size").fetchone()[0]
        pages = (
            db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        )
        used = pages * page
        tables = table_bytes(db)
        rows: dict[str, dict[str, int]] = {}
        for t in ("readings", "readings_1m", "readings_15m"):
            total = db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            m = db.execute(f"SELECT COUNT(*) FROM {t} WHERE device=?", (meter,)).fetchone()[0]
            if t == "readings_1m" and "readings_1m_others" in tables:  # other devices' minutes, time first
                total += db.execute("SELECT COUNT(*) FROM readings_1m_others").fetchone()[0]
                tables[t] += tables.pop("readings_1m_others")
            rows[t] = {"meter": m, "others": total - m}
        await agent.store.close()
    scale = 24 / hours
    # Bytes a row costs in each table (its B-tree, indexes of WITHOUT ROWID tables included).
    per_row = {t: tables.get(t, 0) / max(1, r["meter"] + r["others"]) for t, r in rows.items()}
    st = site.cfg.storage
    if hasattr(st, "max_mb"):
        from agent.settlement.history import plan_retention

        plan = plan_retention(st, devices - 1)
        keep = {
            ("readings", "meter"): plan.raw_s / DAY,
            ("readings", "others"): plan.device_raw_s / DAY,
            ("readings_1m", "meter"): plan.meter_minute_days,
            ("readings_1m", "others"): plan.device_minute_days,
            ("readings_15m", "meter"): max(plan.meter_minute_days, plan.quarter_days),
            ("readings_15m", "others"): plan.quarter_days,
        }
    else:
        keep = {
            ("readings", "meter"): st.raw_retention_s / DAY,
            ("readings", "others"): st.raw_retention_s / DAY,
            ("readings_1m", "meter"): st.meter_minute_retention_days,
            ("readings_1m", "others"): st.device_minute_retention_days,
            ("readings_15m", "meter"): st.quarter_hour_retention_days,
            ("readings_15m", "others"): st.quarter_hour_retention_days,
        }
    # A year, extrapolated from the measured day: each table grows by its bytes a day until its
    # retention stops it; the largest the database gets over 365 days.
    other = sum(b for t, b in tables.items() if t not in rows)

    def size_at(day: float) -> float:
        return other + sum(
            rows[t][who] * scale * per_row[t] * min(day, days) for (t, who), days in keep.items()
        )

    max_db = max(size_at(d) for d in range(1, 366))
    out = {
        "devices": devices,
        "hours_simulated": hours,
        "flush_interval_s": flush_s,
        "rows_per_day": {t: {k: round(v * scale) for k, v in r.items()} for t, r in rows.items()},
        "mb_per_day": round(used * scale / 2**20, 1),
        "write_mb_per_day": round(written * scale / 2**20, 1),
        "cpu_s_per_day": round(cpu * scale, 1),
        "bytes_per_row": {t: round(b, 1) for t, b in per_row.items()},
        "retention_days": {f"{t}/{who}": round(d, 2) for (t, who), d in keep.items()},
        "year": "extrapolated from the measured day and the retention planned for the budget",
        "max_db_mb": round(max_db / 2**20, 1),
        "budget_mb": budget,
    }
    if budget:
        out["within_budget"] = max_db <= budget * 2**20
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default="10,100,1000", help="devices per site, comma separated")
    ap.add_argument(
        "--hours", type=float, default=2.0, help="simulated hours at 1 Hz (default 2; 1,000 devices: 1)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    sizes = [asyncio.run(one_size(int(n), args.hours, args.seed)) for n in args.devices.split(",")]
    by_n = {s["devices"]: s for s in sizes}
    ref = by_n.get(100, sizes[0])
    result = {
        "mb_per_day_100dev": ref["mb_per_day"],
        "write_mb_per_day_100dev": ref["write_mb_per_day"],
        "budget_mb": ref["budget_mb"],
        "max_db_mb": ref["max_db_mb"],
        "sizes": sizes,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"readings at 1 Hz, {args.hours:g} simulated h scaled to a day; year: {ref['year']}")
    print(
        f"{'devices':>8} {'db MB/day':>10} {'writes MB/day':>14} {'max db MB':>10} {'budget MB':>10}  rows/day"
    )
    for s in sizes:
        print(
            f"{s['devices']:>8} {s['mb_per_day']:>10} {s['write_mb_per_day']:>14} {s['max_db_mb']:>10}"
            f" {s['budget_mb']!s:>10}  {s['rows_per_day']}"
        )
    _ = os
    return 0


if __name__ == "__main__":
    sys.exit(main())
