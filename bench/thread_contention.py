"""The event loop's latency while another thread of the agent runs Python.

The agent's SQLite calls run on the store's thread, and some of them are Python for tens of
milliseconds: a settlement works out its baselines from the stored readings, the year to date
walks every stored event. Python runs one thread at a time: each time the event loop waits on
a socket it hands the interpreter over, and takes it back only when the other thread gives it
up, at the latest after the interpreter's switch interval (5 ms unless set). An event's first
stage waits on its sockets some twenty times.

Here, in one process: ten loopback connections to an echo server (a child process), and an
"event" that makes two round trips on each at once (a read and a write on each of ten
endpoints). Measured: the event's duration, idle, then while a second thread works out the
real-time baseline (`agent.settlement.baseline.realtime_baseline`, the settlement's
arithmetic) over and over, with Python's default switch interval and with the agent's
(`agent.runtime.daemon.SWITCH_INTERVAL_S`, set once it is READY); and how many baselines that
thread worked out per second meanwhile (what the shorter interval costs it).

    python bench/thread_contention.py [--events 200] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ECHO = """
import selectors, socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(16)
print(srv.getsockname()[1], flush=True)
sel = selectors.DefaultSelector(); sel.register(srv, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is srv:
            c, _ = srv.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sel.register(c, selectors.EVENT_READ)
        else:
            data = key.fileobj.recv(256)
            if not data:
                sel.unregister(key.fileobj); key.fileobj.close()
            else:
                key.fileobj.sendall(data)
"""

ENDPOINTS = 10
FRAME = b"\x00\x01\x00\x00\x00\x06\x01\x03\x00\x64\x00\x01"  # a Modbus TCP read, 12 bytes


def _baselines(stop: threading.Event, done: list[int]) -> None:
    """A settlement's arithmetic, over and over: the real-time baseline of two hours of 1 s polls."""
    from agent.settlement.baseline import realtime_baseline

    t0 = 1_800_000_000.0
    samples = [(t0 + i, 500.0 + (i % 17)) for i in range(7200)]
    while not stop.is_set():
        realtime_baseline(samples, t0 + 7200, 7200.0)
        done[0] += 1


async def _measure(events: int, busy: bool, interval_s: float) -> dict[str, Any]:
    echo = subprocess.Popen([sys.executable, "-c", ECHO], stdout=subprocess.PIPE, text=True)
    assert echo.stdout is not None
    port = int(echo.stdout.readline())
    links = []
    for _ in range(ENDPOINTS):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        links.append((r, w))

    async def two_round_trips(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for _ in range(2):
            w.write(FRAME)
            await r.readexactly(len(FRAME))

    before = sys.getswitchinterval()
    sys.setswitchinterval(interval_s)
    stop = threading.Event()
    done = [0]
    worker = threading.Thread(target=_baselines, args=(stop, done), daemon=True)
    took: list[float] = []
    try:
        if busy:
            worker.start()
            await asyncio.sleep(0.2)
        start, count0 = time.perf_counter(), done[0]
        for _ in range(events):
            t0 = time.perf_counter()
            await asyncio.gather(*(two_round_trips(r, w) for r, w in links))
            took.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.005)  # events apart; the other thread runs on meanwhile
        per_s = (done[0] - count0) / (time.perf_counter() - start)
    finally:
        stop.set()
        if busy:
            worker.join()
        sys.setswitchinterval(before)
        for _, w in links:
            w.close()
        echo.kill()
        echo.wait()
    took.sort()

    def pct(q: float) -> float:
        return round(took[min(len(took) - 1, int(q * len(took)))], 2)

    return {
        "busy_thread": busy,
        "switch_interval_ms": round(interval_s * 1000, 3),
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": round(took[-1], 2),
        "baselines_per_s": round(per_s, 1) if busy else None,
    }


def main() -> int:
    from agent.runtime.daemon import SWITCH_INTERVAL_S

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200, help="events per case (default 200)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    default = sys.getswitchinterval()
    cases = [(False, default), (True, default), (True, SWITCH_INTERVAL_S)]
    rows = [asyncio.run(_measure(args.events, busy, iv)) for busy, iv in cases]
    result = {
        "idle_p99_ms": rows[0]["p99_ms"],
        "busy_default_p99_ms": rows[1]["p99_ms"],
        "busy_agent_p99_ms": rows[2]["p99_ms"],
        "cases": rows,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"an event's 20 round trips on {ENDPOINTS} endpoints, ms; another thread working out baselines")
    print(f"{'other thread':>12} {'switch':>8} {'p50':>7} {'p99':>7} {'max':>7} {'baselines/s':>12}")
    for r in rows:
        per_s = "-" if r["baselines_per_s"] is None else f"{r['baselines_per_s']:.1f}"
        print(
            f"{'busy' if r['busy_thread'] else 'idle':>12} {r['switch_interval_ms']:>6.1f}ms {r['p50_ms']:>7.2f}"
            f" {r['p99_ms']:>7.2f} {r['max_ms']:>7.2f} {per_s:>12}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
