"""Meter change -> the live report that carries it, through the real `dr-agent run`.

The bench site (bench/_site.py, simulators in this process, Mosquitto) runs an event; the
simulated site load then steps by +/- `--step-kw` now and then. Measured from the moment the
meter's registers show the new load to the first live report (`…/out/report`) whose
`measured_kw` has moved by at least half the step: the report interval, the poll, the
load filter (`control.filter_s`) and the outbox together.

    python bench/report_latency.py [--changes 5] [--report-interval 2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _site


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import aiomqtt

    with tempfile.TemporaryDirectory(prefix="dr-agent-bench-") as tmp_s:
        tmp = Path(tmp_s)
        bport, broker = await _site.start_broker(tmp)
        site = _site.build_site(
            tmp,
            bport,
            args.devices,
            max(1, args.devices // 20),
            overrides={"control": {"report_interval_s": args.report_interval}},
        )
        await site.serve()
        plant = site.plant
        assert plant is not None
        offset = [0.0]
        base_kw = plant.base.kw
        plant.base.kw = lambda now: base_kw(now) + offset[0]  # type: ignore[method-assign]
        changed: dict[str, float] = {}
        step = plant.step

        def stepped(now: float) -> None:
            before = plant.site_kw()
            step(now)
            if "want" in changed and "t" not in changed and abs(plant.site_kw() - before) > args.step_kw / 2:
                changed["t"] = time.perf_counter()

        plant.step = stepped  # type: ignore[method-assign]
        agent = _site.start_agent(site, tmp / "agent.log")
        latencies: list[float] = []
        reports: list[tuple[float, float]] = []
        try:
            async with aiomqtt.Client("127.0.0.1", bport, identifier="bench-provider") as client:
                await client.subscribe("bench/site/#", qos=1)
                await _site.wait_online(client, "bench/site")

                async def listen() -> None:
                    async for m in client.messages:
                        if str(m.topic) == "bench/site/out/report":
                            body = json.loads(bytes(m.payload))
                            if body.get("measured_kw") is not None:
                                reports.append((time.perf_counter(), float(body["measured_kw"])))

                listener = asyncio.create_task(listen())
                await asyncio.sleep(3)
                ev = _site.event("report-latency", site.clock)
                ev["duration_s"] = 3600
                await client.publish("bench/site/in/event", json.dumps(ev), qos=1)
                rng = random.Random(1)
                await asyncio.sleep(2 * args.report_interval)
                for i in range(args.changes):
                    # Settle first: the filtered load has caught up with the last step (two reports
                    # in a row within 2 kW), then a random part of a report interval.
                    await _site.until(
                        lambda: len(reports) >= 2 and abs(reports[-1][1] - reports[-2][1]) < 2.0,
                        90,
                        args.report_interval,
                    )
                    await asyncio.sleep(args.report_interval * rng.uniform(0.0, 1.0))
                    level = reports[-1][1] if reports else None
                    changed.clear()
                    changed["want"] = 1
                    offset[0] += args.step_kw if i % 2 == 0 else -args.step_kw
                    sign = 1 if i % 2 == 0 else -1
                    deadline = time.perf_counter() + 10 * args.report_interval + 30
                    got = None
                    while time.perf_counter() < deadline and got is None:
                        await asyncio.sleep(0.05)
                        t = changed.get("t")
                        if t is None or level is None:
                            continue
                        for ts, kw in reports:
                            if ts > t and sign * (kw - level) >= args.step_kw / 2:
                                got = (ts - t) * 1000
                                break
                    if got is not None:
                        latencies.append(got)
                listener.cancel()
        finally:
            _site.stop_agent(agent)
            await site.stop()
            await _site.stop_broker(broker)
    return {
        "devices": args.devices,
        "report_interval_s": args.report_interval,
        "filter_s": site.cfg.control.filter_s,
        "changes": args.changes,
        "measured": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(_site.pct(latencies, 0.99), 1) if latencies else None,
        "max_ms": round(max(latencies), 1) if latencies else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=50, help="devices on the site (default 50)")
    ap.add_argument("--changes", type=int, default=5, help="load steps measured (default 5)")
    ap.add_argument("--step-kw", type=float, default=80.0, help="size of each load step, kW (default 80)")
    ap.add_argument(
        "--report-interval", type=float, default=2.0, help="control.report_interval_s (default 2)"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    r = asyncio.run(run(ap.parse_args()))
    if ap.parse_args().json:
        print(json.dumps(r))
        return 0
    print(
        f"meter load step -> first live report carrying half of it, {r['devices']} devices,"
        f" report every {r['report_interval_s']:g} s, filter {r['filter_s']:g} s"
    )
    print(
        f"  p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms"
        f" ({r['measured']} of {r['changes']} steps)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
