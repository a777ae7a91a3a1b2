"""Event -> first-stage writes: the real `dr-agent run` against a minimal reference program.

For each site size (devices over endpoints, bench/_site.py: a fifth of the zones form the
strategy's first stage), in one run: simulators in this process, Mosquitto, `dr-agent run`,
and a reference program (an aiomqtt subscriber + one pymodbus client per endpoint that, on an
event, writes the same registers of the same simulators: endpoints in parallel, one request at
a time on each, and publishes an opt-in). Events alternate between the two. Measured from the
publish of an event (QoS 1) to:

- first: the first first-stage write reaching a simulator;
- all: the last first-stage write reaching a simulator (every first-stage device written);
- response: the opt-in response arriving back at a subscriber.

Each event is cancelled once measured and the next waits until every zone is back.

    python bench/shed_latency.py [--sizes 10x1,50x10,200x50] [--events 30] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _site

# -- the reference program (a child process) ------------------------------------------------


async def reference(plan_path: str) -> None:
    """Subscribe; on an event write each first-stage register (per endpoint in turn, endpoints in
    parallel) and publish an opt-in; on a cancel write the originals back."""
    import aiomqtt
    from pymodbus.client import AsyncModbusTcpClient

    plan = json.loads(Path(plan_path).read_text())
    by_port: dict[int, list[tuple[int, int]]] = {}
    for port, unit, addr in plan["writes"]:
        by_port.setdefault(port, []).append((unit, addr))
    clients = {p: AsyncModbusTcpClient("127.0.0.1", port=p, timeout=1) for p in by_port}
    for c in clients.values():
        await c.connect()

    async def write(port: int, value: int) -> None:
        for unit, addr in by_port[port]:
            await clients[port].write_register(addr, value, device_id=unit)

    # TCP_NODELAY: without it the opt-in waits for the broker's delayed ACK of the event's PUBACK (40 ms).
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    async with aiomqtt.Client(
        "127.0.0.1", plan["broker_port"], identifier="bench-reference", socket_options=nodelay
    ) as mq:
        await mq.subscribe(plan["topic"], qos=1)
        print("ready", flush=True)
        async for m in mq.messages:
            ev = json.loads(bytes(m.payload))
            cancel = ev.get("status") == "cancelled"
            value = plan["original"] if cancel else plan["shed"]
            resp = json.dumps({"event_id": ev["event_id"], "opt": "out" if cancel else "in"})
            await asyncio.gather(
                *(write(p, value) for p in by_port), mq.publish(plan["response_topic"], resp, qos=1)
            )


# -- the bench ---------------------------------------------------------------------------------


async def one_size(devices: int, endpoints: int, events: int) -> dict[str, Any]:
    import aiomqtt

    with tempfile.TemporaryDirectory(prefix="dr-agent-bench-") as tmp_s:
        tmp = Path(tmp_s)
        bport, broker = await _site.start_broker(tmp)
        site = _site.build_site(tmp, bport, devices, endpoints)
        await site.serve()
        assert site.plant is not None
        original = {n: site.level(n) for n in site.first}
        seen: dict[str, float] = {}
        for name in site.first:

            def hook(key: str, value: Any, name: str = name) -> None:
                if key == "level_pct":
                    seen.setdefault(name, time.perf_counter())

            site.plant.banks[name].on_write = hook
        plan = {
            "broker_port": bport,
            "topic": "ref/in/event",
            "response_topic": "ref/out/response",
            "writes": [[site.where[n][1], site.where[n][2], site.where[n][3]] for n in site.first],
            "shed": _site.SHED_LEVEL,
            "original": int(next(iter(original.values()))),
        }
        (tmp / "plan.json").write_text(json.dumps(plan))
        agent = _site.start_agent(site, tmp / "agent.log")
        ref = subprocess.Popen(
            [sys.executable, __file__, "--reference", str(tmp / "plan.json")],
            stdout=subprocess.PIPE,
            text=True,
        )
        results: dict[str, dict[str, list[float]]] = {
            w: {"first": [], "all": [], "response": []} for w in ("agent", "ref")
        }
        missed = {"agent": 0, "ref": 0}
        responses: dict[str, float] = {}
        try:
            assert ref.stdout is not None
            if ref.stdout.readline().strip() != "ready":
                raise RuntimeError("reference program did not start")
            async with aiomqtt.Client("127.0.0.1", bport, identifier="bench-provider") as client:
                # Not the events' own topics: a copy of each event coming back would sit before
                # the response in the same TCP stream.
                await client.subscribe("bench/site/status", qos=1)
                await client.subscribe("bench/site/out/response", qos=1)
                await client.subscribe("ref/out/#", qos=1)
                await _site.wait_online(client, "bench/site")

                async def listen() -> None:
                    async for m in client.messages:
                        if str(m.topic).endswith("/out/response"):
                            body = json.loads(bytes(m.payload))
                            if body.get("opt") == "in":
                                responses.setdefault(body["event_id"], time.perf_counter())

                def done(eid: str) -> bool:
                    return len(seen) >= len(site.first) and eid in responses

                listener = asyncio.create_task(listen())
                await asyncio.sleep(3)  # a few polls: the meter is fresh, the filter settled
                for i in range(events * 2):
                    who = "agent" if i % 2 == 0 else "ref"
                    topic = "bench/site/in/event" if who == "agent" else "ref/in/event"
                    ev = _site.event(f"shed-{devices}-{i}", site.clock)
                    seen.clear()
                    t0 = time.perf_counter()
                    await client.publish(topic, json.dumps(ev), qos=1)
                    eid = ev["event_id"]
                    await _site.until(functools.partial(done, eid), 5, 0.001)
                    if len(seen) < len(site.first):
                        missed[who] += 1
                    else:
                        r = results[who]
                        r["first"].append((min(seen.values()) - t0) * 1000)
                        r["all"].append((max(seen.values()) - t0) * 1000)
                    if ev["event_id"] in responses:
                        results[who]["response"].append((responses[ev["event_id"]] - t0) * 1000)
                    cancel = {**ev, "modification_number": 1, "status": "cancelled"}
                    await client.publish(topic, json.dumps(cancel), qos=1)
                    await _site.until(lambda: all(site.level(n) == original[n] for n in site.first), 10)
                    await asyncio.sleep(0.3)  # let the loop settle before the next one
                listener.cancel()
        finally:
            ref.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                ref.wait(5)
            _site.stop_agent(agent)
            await site.stop()
            await _site.stop_broker(broker)
    out: dict[str, Any] = {
        "devices": devices,
        "endpoints": site.endpoints,
        "first_stage_writes": len(site.first),
        "events": events,
    }
    for who, r in results.items():
        pre = "" if who == "agent" else "ref_"
        out[f"{pre}missed"] = missed[who]
        for what, vals in r.items():
            for q, name in ((0.5, "p50"), (0.99, "p99"), (1.0, "max")):
                out[f"{pre}{name}_{what}_ms"] = round(_site.pct(vals, q), 2)
    out["ratio_p99_all"] = round(out["p99_all_ms"] / out["ref_p99_all_ms"], 2)
    out["ratio_p50_all"] = round(out["p50_all_ms"] / out["ref_p50_all_ms"], 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10x1,50x10,200x50", help="devices x endpoints, comma separated")
    ap.add_argument("--events", type=int, default=30, help="events per size for each program (default 30)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--reference", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(reference(args.reference))
        return 0
    sizes = []
    for s in args.sizes.split(","):
        d, e = s.lower().split("x")
        sizes.append(asyncio.run(one_size(int(d), int(e), args.events)))
    # The "Done when" figure: 50 devices on 10 endpoints (else the first size).
    main_size = next((s for s in sizes if (s["devices"], s["endpoints"]) == (50, 10)), sizes[0])
    result = {
        "p99_all_ms": main_size["p99_all_ms"],
        "ref_p99_all_ms": main_size["ref_p99_all_ms"],
        "ratio_p99_all": main_size["ratio_p99_all"],
        "sizes": sizes,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print("event published -> first-stage writes at the simulators, ms (agent | reference program)")
    print(
        f"{'devices':>8} {'endpoints':>9} {'writes':>6}  {'first p50/p99/max':>22}  {'all p50/p99/max':>22}"
        f"  {'response p50/p99/max':>22}  {'p99 all ratio':>13}"
    )
    for s in sizes:
        for pre, label in (("", "agent"), ("ref_", "ref")):
            cols = [
                "/".join(f"{s[f'{pre}{q}_{w}_ms']:.1f}" for q in ("p50", "p99", "max"))
                for w in ("first", "all", "response")
            ]
            head = (
                f"{s['devices']:>8} {s['endpoints']:>9} {s['first_stage_writes']:>6}" if not pre else " " * 25
            )
            tail = f"{s['ratio_p99_all']:>13.2f}" if not pre else ""
            print(f"{head}  {label:>5} {cols[0]:>16}  {cols[1]:>22}  {cols[2]:>22}  {tail}")
        if s["missed"] or s["ref_missed"]:
            print(f"{'':>25}  missed: agent {s['missed']}, reference {s['ref_missed']} of {s['events']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
