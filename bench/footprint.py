"""The `dr-agent run` process's footprint: start-up, memory and CPU, idle and during an event.

For each site size (bench/_site.py: a site meter and lighting zones, 20 per endpoint, polled
at 1 Hz), simulators in this process and Mosquitto, then `dr-agent run` with NOTIFY_SOCKET
pointing at a socket of ours:

- start-up: from starting the process to its READY=1 (devices polled, broker answered);
- idle: RSS at the end of and CPU share over an idle window;
- event: an event whose first stage sheds, RSS (the highest sample) and CPU over a window.

    python bench/footprint.py [--sizes 10,100,1000] [--idle-s 20] [--event-s 20] [--json]

It replaces bench/agent_footprint.py; the event's reaction time is bench/shed_latency.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _site

PER_ENDPOINT = 20


async def window(pid: int, seconds: float) -> tuple[float, float]:
    """(highest RSS MiB, CPU % of one core) over `seconds`, sampled each second."""
    _, cpu0 = _site.proc_stats(pid)
    t0 = time.monotonic()
    peak = 0.0
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(min(1.0, seconds - (time.monotonic() - t0)))
        rss, _ = _site.proc_stats(pid)
        peak = max(peak, rss)
    _, cpu1 = _site.proc_stats(pid)
    return peak, (cpu1 - cpu0) / (time.monotonic() - t0) * 100


async def one_size(devices: int, idle_s: float, event_s: float) -> dict[str, Any]:
    import aiomqtt

    endpoints = max(1, devices // PER_ENDPOINT)
    with tempfile.TemporaryDirectory(prefix="dr-agent-bench-") as tmp_s:
        tmp = Path(tmp_s)
        bport, broker = await _site.start_broker(tmp)
        site = _site.build_site(tmp, bport, devices, endpoints)
        await site.serve()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(tmp / "notify"))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        t_start = time.perf_counter()
        agent = _site.start_agent(site, tmp / "agent.log", {"NOTIFY_SOCKET": str(tmp / "notify")})
        out: dict[str, Any] = {"devices": devices, "endpoints": site.endpoints}
        try:
            async with asyncio.timeout(60):
                while True:
                    msg = await loop.sock_recv(sock, 4096)
                    if b"READY=1" in msg:
                        out["startup_s"] = round(time.perf_counter() - t_start, 2)
                        break
            async with aiomqtt.Client("127.0.0.1", bport, identifier="bench-provider") as client:
                await asyncio.sleep(5)  # past start-up: caches warm, first flushes done
                rss, cpu = await window(agent.pid, idle_s)
                out["idle_rss_mb"] = round(_site.proc_stats(agent.pid)[0], 1)
                out["idle_cpu_pct"] = round(cpu, 2)
                ev = _site.event(f"footprint-{devices}", site.clock)
                await client.publish("bench/site/in/event", json.dumps(ev), qos=1)
                rss, cpu = await window(agent.pid, event_s)
                out["event_rss_mb"] = round(rss, 1)
                out["event_cpu_pct"] = round(cpu, 2)
                out["zones_shed"] = sum(1 for n in site.first if site.level(n) == _site.SHED_LEVEL)
                out["first_stage"] = len(site.first)
        except TimeoutError:
            print((tmp / "agent.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            sock.close()
            _site.stop_agent(agent)
            await site.stop()
            await _site.stop_broker(broker)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,100,1000", help="devices per site, comma separated")
    ap.add_argument("--idle-s", type=float, default=20.0, help="idle window, s (default 20)")
    ap.add_argument("--event-s", type=float, default=20.0, help="window during the event, s (default 20)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    sizes = [asyncio.run(one_size(int(n), args.idle_s, args.event_s)) for n in args.sizes.split(",")]
    by_n = {s["devices"]: s for s in sizes}
    first = sizes[0]
    result = {
        "idle_rss_mb": by_n.get(10, first)["idle_rss_mb"],
        "rss_mb_100dev": by_n[100]["event_rss_mb"] if 100 in by_n else None,
        "cpu_pct_1000dev": by_n[1000]["event_cpu_pct"] if 1000 in by_n else None,
        "startup_s": by_n.get(100, first)["startup_s"],
        "sizes": sizes,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print("dr-agent run, devices polled at 1 Hz (RSS MiB, CPU % of one core)")
    print(
        f"{'devices':>8} {'endpoints':>9} {'start-up s':>10} {'idle RSS':>9} {'idle CPU':>9}"
        f" {'event RSS':>10} {'event CPU':>10} {'shed':>7}"
    )
    for s in sizes:
        print(
            f"{s['devices']:>8} {s['endpoints']:>9} {s['startup_s']:>10.2f} {s['idle_rss_mb']:>9.1f}"
            f" {s['idle_cpu_pct']:>9.2f} {s['event_rss_mb']:>10.1f} {s['event_cpu_pct']:>10.2f}"
            f" {s['zones_shed']:>3}/{s['first_stage']:<3}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
