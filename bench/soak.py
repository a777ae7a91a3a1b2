"""Soak: a simulated week of events, cancellations, modifications and faults against `dr-agent run`.

One `dr-agent run` process (the agent of this tree) on a scaled clock runs the
demo site for `--days` simulated days, against the shipped simulators over
Modbus TCP on loopback (the `bms` endpoint behind a fault-injecting proxy,
tests/faults/proxy.py) and a real, persistent Mosquitto. From a seed it plans,
inside the contract's hours and its per-day limits (below), many events a day,
some modified (target, or an earlier end) and some cancelled (before or while
they run), one event a day the contract must refuse, and faults at random:

- the broker SIGKILLed and restarted after 30 s to 20 min (and once in the run for 2-3 hours);
- the `bms` endpoint stalled, answering exceptions, garbage or truncated frames, or cutting
  off a write after the device applied it, for 3-20 min;
- the site meter spiking to 10x, reading zero, or going stale, for 1-5 min.

It samples the agent's RSS, open file descriptors (/proc/PID/fd), threads,
asyncio tasks (from its state file) and database size all along. At the end:
every accepted event has its responses, its final state and (if it ran) its
settlement on MQTT for exactly its window; the live reports' `seq` runs 1..n
without a gap; before every event and at the end every device reads back over
Modbus at its value from before the run; no revert-journal row is left open.

    python bench/soak.py                 # 7 days at 1200x: about 9 min wall
    python bench/soak.py --quick         # 2 days at 1400x: about 2.5 min wall
    python bench/soak.py --json          # one JSON object instead of the table
    python bench/soak.py --days 7 --speed 1200 --seed 1

The default compression (1200x: a simulated day in 72 s of wall time) is what
a loaded 2-core machine sustains with the cadence below (poll and control
every 30 simulated seconds, a live report a minute); the soak proves
correctness and resource use over many events and faults, not control quality.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _site
import aiomqtt
import yaml

from agent.config.load import load_site_config
from agent.platform.clock import ScaledClock
from agent.runtime.devices import build_devices
from drivers.sim.models import MeterModel
from drivers.sim.plant import SimEndpoint, SimulatedPlant
from drivers.sim.server import free_port
from tests.faults.proxy import ModbusFaultProxy

REPO = _site.REPO
TZ = "Asia/Shanghai"
SHED_ROLES = ("setpoint_c", "level_pct", "current_limit_a", "power_setpoint_kw")
#: The soak's contract: Jiangsu's hours and band, more events a day than Jiangsu allows (a soak wants many).
PROGRAMS = {
    "contracted": {"max_events_per_day": 6, "max_hours_per_day": 4},
    "realtime": {"max_events_per_day": 3, "max_event_duration_s": 1800},
}
WINDOW = (10 * 3600, 15 * 3600)  # allowed hours, seconds after local midnight
RECOVERY_S = 600
#: Simulated seconds: the run starts at 08:00 of day 0 (the agent is up long before 10:00); warm-up is
#: day 0's events (to 16:00).
START_OF_DAY_S = 8 * 3600
WARM_UP_S = 8 * 3600


# -- the site ------------------------------------------------------------------------------


def write_config(tmp: Path, broker_port: int, plant_ports: dict[str, int], proxy_port: int) -> Path:
    """The demo site with the soak's contract and cadence; the agent reaches `bms` through the proxy."""
    raw = yaml.safe_load((REPO / "config" / "demo-site.yaml").read_text())
    raw["mqtt"].update(host="127.0.0.1", port=broker_port, topic_root=f"soak/{os.getpid()}")
    for ep in raw["modbus"]["endpoints"]:
        ep["port"] = proxy_port if ep["name"] == "bms" else plant_ports[ep["name"]]
        ep["timeout_s"] = 0.15  # wall seconds: a silent unit costs minutes of simulated time, not hours
    raw["modbus"]["poll_interval_s"] = 30
    raw["control"].update(period_s=30, report_interval_s=60, settle_s=60, filter_s=60, meter_stale_s=180)
    raw["contract"]["programs"] = PROGRAMS
    for st in raw["strategies"]:
        st["restore"] = {"step_interval_s": 30, "rebound_cap_factor": 2.0, "rebound_window_s": 300}
    raw["storage"] = {"path": str(tmp / "agent.sqlite")}
    raw["metrics"] = {"port": 0}
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Broker:
    """Mosquitto with persistence (sessions and queued QoS 1 messages survive a restart)."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        data = tmp / "mosq-data"
        data.mkdir()
        self.conf = tmp / "mosquitto.conf"
        # As root, Mosquitto drops to its own user, which cannot write here: no persistence at all.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{user}persistence true\n"
            f"persistence_location {data}/\nautosave_interval 1\nlog_dest none\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else "mosquitto"
        self.proc = subprocess.Popen(
            [exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        import socket

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


class Provider:
    """The provider side: a persistent MQTT session that reconnects by itself and records everything."""

    def __init__(self, port: int, root: str) -> None:
        self.port, self.root = port, root
        self.messages: list[tuple[str, dict[str, Any], float]] = []  # topic, body, sim time received
        self.connected = asyncio.Event()
        self.client: aiomqtt.Client | None = None
        self.task: asyncio.Task[None] | None = None
        self.clock: ScaledClock | None = None

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, identifier="soak-provider", clean_session=False, timeout=5
                ) as c:
                    self.client = c
                    await c.subscribe(f"{self.root}/#", qos=1)
                    self.connected.set()
                    async for m in c.messages:
                        raw = m.payload if isinstance(m.payload, (bytes, str)) else b""
                        try:
                            body = json.loads(raw)
                        except ValueError:
                            body = {"_raw": str(raw)}
                        now = self.clock.now() if self.clock else 0.0
                        self.messages.append(
                            (str(m.topic), body if isinstance(body, dict) else {"_v": body}, now)
                        )
            except aiomqtt.MqttError:
                pass
            finally:
                self.client = None
                self.connected.clear()
            await asyncio.sleep(0.05)

    async def publish(self, suffix: str, body: dict[str, Any]) -> None:
        """Publish (QoS 1), waiting out a broker outage: returns once the broker acknowledged."""
        while True:
            await self.connected.wait()
            c = self.client
            try:
                assert c is not None
                await c.publish(f"{self.root}/{suffix}", json.dumps(body), qos=1)
                return
            except (aiomqtt.MqttError, AssertionError):
                await asyncio.sleep(0.05)

    def on(self, suffix: str) -> list[dict[str, Any]]:
        t = f"{self.root}/{suffix}"
        return [b for topic, b, _ in self.messages if topic == t]


def meter_fault(plant: SimulatedPlant, kind: str) -> Callable[[], None]:
    """Start a meter fault (as tests/faults/test_meter.py does); returns its undo."""
    m = plant.models[plant.meter_name]
    assert isinstance(m, MeterModel)
    if kind == "stale":
        bank = plant.banks[plant.meter_name]
        bank.offline = True
        return lambda: setattr(bank, "offline", False)
    factor = 10.0 if kind == "spike" else 0.0
    real = m.show_total

    def show(now: float, total_kw: float, dt: float) -> None:
        real(now, total_kw * factor, dt)

    m.show_total = show  # type: ignore[method-assign]
    return lambda: setattr(m, "show_total", real)


# -- the plan ------------------------------------------------------------------------------


@dataclass
class Planned:
    event_id: str
    program: str
    start: float
    duration: float
    pct: float
    send_at: float
    refuse: str | None = None  # the opt-out code the contract must answer with
    modify_at: float | None = None
    modify_end: float | None = None  # a modification may end it earlier
    cancel_at: float | None = None
    # What happened (simulated time the provider's publish was acknowledged).
    sent: float | None = None
    modified: float | None = None
    cancelled: float | None = None


@dataclass
class Fault:
    kind: str  # broker | modbus:<mode> | meter:<kind>
    at: float
    lasts: float
    done: bool = False


def plan(
    rng: random.Random, t0: float, ready: float, days: int, tz: ZoneInfo
) -> tuple[list[Planned], list[Fault]]:
    """Events and faults from `ready` (the agent online and subscribed) to the end of day `days`."""
    midnight0 = datetime.fromtimestamp(t0, tz).replace(hour=0, minute=0, second=0, microsecond=0)
    end = t0 + days * 86400
    faults: list[Fault] = []
    for d in range(days):
        mid = (midnight0 + timedelta(days=d)).timestamp()
        day_lo, day_hi = max(ready + 300, mid), min(end - 3600, mid + 86400)

        def when(in_window: float, mid: float = mid, lo: float = day_lo, hi: float = day_hi) -> float:
            if rng.random() < in_window:
                return mid + rng.uniform(WINDOW[0] - 600, WINDOW[1])
            return rng.uniform(lo, hi)

        faults += [Fault("broker", when(0.6), rng.uniform(30, 1200)) for _ in range(3)]
        for _ in range(2):
            mode = rng.choice(["stall", "exception", "garbage", "truncated", "drop_write"])
            faults.append(Fault(f"modbus:{mode}", when(0.7), rng.uniform(180, 1200)))
        faults.append(
            Fault(f"meter:{rng.choice(['spike', 'zero', 'stale'])}", when(0.9), rng.uniform(60, 300))
        )
    if days >= 2:  # one outage of hours, across an event window
        mid = (midnight0 + timedelta(days=1)).timestamp()
        faults.append(
            Fault("broker", mid + rng.uniform(WINDOW[0], WINDOW[0] + 3600), rng.uniform(7200, 10800))
        )
    faults = [f for f in faults if ready + 300 <= f.at and f.at + f.lasts < end - 3600]
    outages = [(f.at - 120, f.at + f.lasts + 120) for f in faults if f.kind == "broker"]

    def free(t: float) -> bool:
        return all(not (a <= t <= b) for a, b in outages)

    def pick(lo: float, hi: float) -> float | None:
        for _ in range(30):
            t = rng.uniform(lo, hi)
            if lo < hi and free(t):
                return t
        return None

    events: list[Planned] = []
    for d in range(days):
        mid = (midnight0 + timedelta(days=d)).timestamp()
        t = mid + WINDOW[0] + 60 * rng.randint(0, 15)
        used = {"contracted": [0, 0.0], "realtime": [0, 0.0]}
        k = 0
        while True:
            program = "realtime" if rng.random() < 0.35 else "contracted"
            lim = PROGRAMS[program]
            if used[program][0] >= lim["max_events_per_day"]:
                program = "contracted" if program == "realtime" else "realtime"
                lim = PROGRAMS[program]
            duration = 60.0 * rng.choice([10, 15, 20, 30] + ([45, 60] if program == "contracted" else []))
            if used[program][0] >= lim["max_events_per_day"] or t + duration > mid + WINDOW[1]:
                break
            if used[program][1] + duration > lim.get("max_hours_per_day", 24) * 3600:
                break
            if t < ready + 1800:
                t += 1800
                continue
            used[program][0] += 1
            used[program][1] += duration
            send = pick(max(ready + 60, t - rng.uniform(900, 6 * 3600)), t - 600)
            if send is not None:
                p = Planned(f"d{d}-{k}", program, t, duration, float(rng.randint(5, 15)), send)
                r = rng.random()
                if r < 0.2:  # a modification: before the start, or while it runs
                    p.modify_at = pick(send + 60, t + duration - 900)
                    if p.modify_at is not None and rng.random() < 0.5:
                        p.modify_end = max(p.modify_at + 600, t + duration * rng.uniform(0.5, 0.9))
                        p.modify_end = min(p.modify_end, t + duration)
                elif r < 0.32:  # a cancellation: never within 3 min of the start (either outcome is right)
                    if rng.random() < 0.5:
                        c = pick(t + 240, t + duration - 300)  # while it runs: settled over what ran
                    else:
                        c = pick(send + 60, t - 240)
                    if c is not None:
                        p.cancel_at = c
                events.append(p)
                k += 1
            t += duration + 60 * rng.randint(15, 30)
        # One the contract must refuse: outside the allowed hours.
        bad = mid + WINDOW[1] + 60 * rng.randint(30, 120)
        send = pick(max(ready + 60, bad - 4 * 3600), bad - 600)
        if send is not None and bad + 1800 < end - 3600:
            events.append(
                Planned(f"d{d}-x", "contracted", bad, 1200, 10, send, refuse="outside_allowed_hours")
            )
    return events, sorted(faults, key=lambda f: f.at)


def event_body(
    p: Planned, number: int, tz: ZoneInfo, *, end: float | None = None, status: str = "far"
) -> dict[str, Any]:
    duration = (end if end is not None else p.start + p.duration) - p.start
    return {
        "event_id": p.event_id,
        "modification_number": number,
        "status": status,
        "program": p.program,
        "start": datetime.fromtimestamp(p.start, tz).isoformat(),
        "duration_s": round(duration),
        "recovery_s": RECOVERY_S,
        "target": {"reduce_pct_of_peak": p.pct},
    }


# -- measuring -----------------------------------------------------------------------------


@dataclass
class Sample:
    sim: float
    rss_mb: float
    fds: int
    threads: int
    tasks: int | None
    db_mb: float


def sample(pid: int, db: Path, state: Path, sim: float) -> Sample | None:
    try:
        rss_kb = threads = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    size = sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    tasks = None
    with contextlib.suppress(OSError, ValueError):
        tasks = json.loads(state.read_text()).get("tasks")
    return Sample(sim, rss_kb / 1024, fds, threads, tasks, size / 2**20)


async def read_back(cfg_path: Path, plant_ports: dict[str, int]) -> dict[tuple[str, str], float | None]:
    """Every controllable point, read over Modbus TCP from the simulators (not through the proxy)."""
    cfg, _ = load_site_config(cfg_path)
    eps = [e.model_copy(update={"port": plant_ports[e.name], "timeout_s": 1.0}) for e in cfg.modbus.endpoints]
    cfg = cfg.model_copy(update={"modbus": cfg.modbus.model_copy(update={"endpoints": eps})})
    transports, devices = build_devices(cfg)
    out: dict[tuple[str, str], float | None] = {}
    try:
        for name, dev in devices.items():
            ok = await dev.poll()
            for role in SHED_ROLES:
                if dev.point_for(role) is not None and dev._role_point.get(role) is not None:
                    out[(name, role)] = dev.reading(role) if ok else None
    finally:
        for t in transports.values():
            with contextlib.suppress(Exception):
                await t.close()
    return out


def open_journal(db: Path) -> set[str]:
    """`device.role` of every open revert-journal row: what the agent still has to put back."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return {
            f"{d}.{r}" for d, r in conn.execute("SELECT device, role FROM journal WHERE restored_ts IS NULL")
        }
    finally:
        conn.close()


def differs(
    before: dict[tuple[str, str], float | None], now: dict[tuple[str, str], float | None]
) -> list[str]:
    bad = []
    for k, v in before.items():
        w = now.get(k)
        if v is None or w is None or not math.isclose(v, w, rel_tol=1e-6, abs_tol=1e-6):
            bad.append(f"{k[0]}.{k[1]}={w} (was {v})")
    return bad


# -- the run -------------------------------------------------------------------------------


async def soak(
    days: int, speed: float, seed: int, tmp: Path, progress: Callable[[str], None]
) -> dict[str, Any]:
    tz = ZoneInfo(TZ)
    rng = random.Random(seed)
    wall0 = time.monotonic()
    broker = Broker(tmp)
    broker.start()
    plant_ports = {n: free_port() for n in ("main-panel", "bms", "carpark")}
    while len(set(plant_ports.values())) < 3:
        plant_ports = {n: free_port() for n in plant_ports}
    proxy = ModbusFaultProxy(plant_ports["bms"], seed=seed)
    proxy_port = await proxy.start()
    cfg_path = write_config(tmp, broker.port, plant_ports, proxy_port)
    cfg, _ = load_site_config(cfg_path)
    t0 = datetime(2026, 7, 6, tzinfo=tz).timestamp() + START_OF_DAY_S  # a Monday
    clock = ScaledClock(speed, origin_sim=t0)
    plant = SimulatedPlant.build(
        cfg.devices, peak_kw=cfg.contract.peak_kw, meter_name=cfg.site.meter, seed=seed
    )
    await plant.serve([SimEndpoint(n, "127.0.0.1", p) for n, p in plant_ports.items()])
    plant_task = asyncio.create_task(plant.run(clock, period_s=10.0))
    before = await read_back(cfg_path, plant_ports)
    provider = Provider(broker.port, cfg.topic_root)
    provider.clock = clock
    provider.task = asyncio.create_task(provider.run())
    await asyncio.wait_for(provider.connected.wait(), 10)
    await asyncio.sleep(
        2.5
    )  # the broker autosaves the provider's session (1 s): a SIGKILL must not forget it

    log_path = tmp / "agent.log"
    env = _site.agent_env()
    cmd = [sys.executable, "-m", "agent.cli", "run", "-c", str(cfg_path), "--clock", clock.spec()]
    cmd += ["--log-format", "json", "--log-level", "warning"]
    procs: list[subprocess.Popen[bytes]] = []
    log_f = log_path.open("ab")

    def start_agent() -> subprocess.Popen[bytes]:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_f, env=env, cwd=REPO)
        procs.append(p)
        return p

    agent = start_agent()
    online = time.monotonic() + 30
    while not any(b.get("state") == "online" for b in provider.on("status")):
        if time.monotonic() > online or agent.poll() is not None:
            raise RuntimeError(f"the agent did not come online: see {log_path}")
        await asyncio.sleep(0.05)
    events, faults = plan(rng, t0, clock.now(), days, tz)
    db = Path(cfg.storage.path)
    state_file = db.with_name(db.stem + ".state.json")
    samples: list[Sample] = []
    restore_checks: list[tuple[float, list[str]]] = []
    shed_seen: list[int] = []  # points shed half-way through each event
    still_restoring: list[float] = []  # restore checks that found the previous event still restoring
    crashes: list[int] = []
    active: dict[str, Callable[[], None]] = {}  # faults in progress -> undo
    injected: dict[str, int] = {}
    end = t0 + days * 86400

    async def at(t: float) -> None:
        await asyncio.sleep(max(0.0, (t - clock.now()) / speed))

    async def sampler() -> None:
        while True:
            nonlocal agent
            if agent.poll() is not None:  # the agent died: a finding; start it again and go on
                crashes.append(agent.returncode or 0)
                progress(f"agent exited rc={agent.returncode} at {datetime.fromtimestamp(clock.now(), tz)}")
                agent = start_agent()
            if (s := sample(agent.pid, db, state_file, clock.now())) is not None:
                samples.append(s)
            await asyncio.sleep(1.0)

    async def run_event(p: Planned) -> None:
        await at(p.send_at)
        await provider.publish("in/event", event_body(p, 0, tz))
        p.sent = clock.now()
        if p.modify_at is not None:
            await at(p.modify_at)
            body = event_body(p, 1, tz, end=p.modify_end)
            body["target"] = {"reduce_pct_of_peak": float(rng.randint(5, 18))}
            await provider.publish("in/event", body)
            p.modified = clock.now()
        if p.cancel_at is not None:
            await at(p.cancel_at)
            await provider.publish("in/event", event_body(p, 1, tz, status="cancelled"))
            p.cancelled = clock.now()

    async def check_shedding(p: Planned) -> None:
        """Half-way through: some device really shed (read from the simulators' registers)."""
        await at(p.start + p.duration / 2)
        if p.cancelled is None and p.modified is None:
            now = {k: float(plant.banks[k[0]].get(k[1])) for k in before if plant.banks[k[0]].has(k[1])}
            shed_seen.append(sum(1 for k, v in now.items() if not math.isclose(v, before[k] or 0.0)))

    async def check_restored(t: float) -> None:
        """Before an event starts (no Modbus fault on): every device the agent holds restored (no open
        journal row) reads its value from before the run. One still restoring is counted, not failed:
        the restore is paced (stagger, HVAC walk-back) and may run past the recovery window."""
        await at(t)
        if any(k.startswith("modbus") for k in active):
            return
        # The journal first: the agent writes the device, then closes its row; read the other way
        # round, a restore landing between the two reads would look like a row closed too early.
        held = open_journal(db)
        differ = differs(before, await read_back(cfg_path, plant_ports))
        restore_checks.append((t, [d for d in differ if d.split("=")[0] not in held]))
        if any(d.split("=")[0] in held for d in differ):
            still_restoring.append(t)

    async def run_fault(f: Fault) -> None:
        await at(f.at)
        kind, _, mode = f.kind.partition(":")
        if kind in active:  # one of a kind at a time
            return
        injected[f.kind] = injected.get(f.kind, 0) + 1
        if kind == "broker":
            broker.kill()
            active[kind] = broker.start
        elif kind == "modbus":
            proxy.set(mode, drop_writes=3)  # type: ignore[arg-type]
            active[kind] = lambda: proxy.set("pass")
        else:
            active[kind] = meter_fault(plant, mode)
        await at(f.at + f.lasts)
        active.pop(kind)()
        f.done = True

    sampler_task = asyncio.create_task(sampler())
    jobs = [asyncio.create_task(run_event(p)) for p in events]
    jobs += [asyncio.create_task(run_fault(f)) for f in faults]
    jobs += [asyncio.create_task(check_restored(p.start - 240)) for p in events if p.refuse is None]
    jobs += [asyncio.create_task(check_shedding(p)) for p in events if p.refuse is None]

    async def ticker() -> None:
        day = 0
        while True:
            await at(t0 + (day + 1) * 86400 - START_OF_DAY_S)
            day += 1
            s = samples[-1] if samples else None
            progress(
                f"day {day}/{days} at {time.monotonic() - wall0:.0f} s wall: "
                + (f"RSS {s.rss_mb:.1f} MB, {s.fds} fds, {s.tasks} tasks, db {s.db_mb:.1f} MB" if s else "")
            )

    tick = asyncio.create_task(ticker())
    try:
        await at(end)
        for j in jobs:  # every job is due before the end (faults end an hour before it)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(j, 10)
        for undo in list(active.values()):
            undo()
        # Drain: the provider has every settlement it is owed and the agent's outbox is empty.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                st = json.loads(state_file.read_text())
                if st["mqtt"]["connected"] and st["mqtt"]["outbox_pending"] == 0:
                    break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        final = differs(before, await read_back(cfg_path, plant_ports))  # while it runs: no restore-on-stop
        sim_end = clock.now()
        sampler_task.cancel()
        cpu_s = _site.proc_stats(agent.pid)[1]
        agent.terminate()
        rc = agent.wait(60)
    finally:
        tick.cancel()
        sampler_task.cancel()
        for j in jobs:
            j.cancel()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        log_f.close()
        await asyncio.sleep(1)  # the provider takes what the agent said on its way out
        provider.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await provider.task
        await proxy.stop()
        plant_task.cancel()
        await plant.stop()
        broker.stop()

    return judge(
        events,
        faults,
        provider,
        db,
        samples,
        restore_checks,
        final,
        crashes,
        rc,
        injected,
        days=days,
        speed=speed,
        seed=seed,
        t0=t0,
        sim_end=sim_end,
        wall_s=time.monotonic() - wall0,
        log=log_path,
        shed_seen=shed_seen,
        cpu_s=cpu_s,
        still_restoring=len(still_restoring),
        clock=clock,
    )


def judge(
    events: list[Planned],
    faults: list[Fault],
    provider: Provider,
    db: Path,
    samples: list[Sample],
    restore_checks: list[tuple[float, list[str]]],
    final: list[str],
    crashes: list[int],
    rc: int,
    injected: dict[str, int],
    **run: Any,
) -> dict[str, Any]:
    problems: list[str] = []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        stored = {r[0]: r[1] for r in conn.execute("SELECT event_id, state FROM events")}
        row = conn.execute("SELECT value FROM meta WHERE key='report_seq'").fetchone()
        last_seq = int(row[0]) if row else 0
        open_journal = conn.execute("SELECT COUNT(*) FROM journal WHERE restored_ts IS NULL").fetchone()[0]
        settled_db = {r[0] for r in conn.execute("SELECT event_id FROM settlements")}
        last_restore = dict(conn.execute("SELECT event_id, MAX(restored_ts) FROM journal GROUP BY event_id"))
    finally:
        conn.close()

    responses: dict[str, list[dict[str, Any]]] = {}
    for b in provider.on("out/response"):
        responses.setdefault(str(b.get("event_id")), []).append(b)
    settlements: dict[str, dict[str, Any]] = {}
    states: dict[str, list[str]] = {}
    for t, b, _ in provider.messages:
        if "/out/settlement/" in t:
            settlements[t.rsplit("/", 1)[1]] = b
        elif "/out/event/" in t:
            states.setdefault(t.rsplit("/", 1)[1], []).append(str(b.get("state")))
    reports = provider.on("out/report")
    seqs = {int(b["seq"]) for b in reports if "seq" in b}
    missing_seq = sorted(set(range(1, last_seq + 1)) - seqs)
    reports_by_event: dict[str, int] = {}
    for b in reports:
        reports_by_event[str(b.get("event_id"))] = reports_by_event.get(str(b.get("event_id")), 0) + 1

    restore_lag_min: list[float] = []
    accepted = refused = ran = cancelled_before = cancelled_running = modified = 0
    lost_events = lost_settlements = wrong_windows = unexpected = 0
    for p in events:
        rs = responses.get(p.event_id, [])
        first = [r for r in rs if r.get("modification_number") == 0]
        if p.sent is None:
            problems.append(f"{p.event_id}: never sent")
            continue
        if not first:
            lost_events += 1
            problems.append(f"{p.event_id}: no response")
            continue
        if p.refuse is not None:
            if first[0].get("opt") == "out" and first[0].get("code") == p.refuse:
                refused += 1
            else:
                unexpected += 1
                problems.append(f"{p.event_id}: expected opt-out {p.refuse}, got {first[0]}")
            continue
        if first[0].get("opt") != "in":
            unexpected += 1
            problems.append(f"{p.event_id}: refused: {first[0].get('code')} {first[0].get('reason')}")
            continue
        accepted += 1
        end = p.start + p.duration
        if p.modified is not None:
            modified += 1
            if not any(r.get("modification_number") == 1 for r in rs):
                lost_events += 1
                problems.append(f"{p.event_id}: no response to the modification")
            if p.modify_end is not None and p.modified < p.modify_end:
                end = p.modify_end
        final_state = states.get(p.event_id, [None])[-1]
        if stored.get(p.event_id) is None:
            lost_events += 1
            problems.append(f"{p.event_id}: not in the database")
        want_settlement = True
        if p.cancelled is not None and p.cancelled < end:
            if final_state != "cancelled" or stored.get(p.event_id) != "cancelled":
                lost_events += 1
                problems.append(
                    f"{p.event_id}: cancelled, final state {final_state}/{stored.get(p.event_id)}"
                )
            if p.cancelled < p.start:
                cancelled_before += 1
                want_settlement = False
                if p.event_id in settlements:
                    problems.append(f"{p.event_id}: cancelled before its start, yet settled")
            else:
                cancelled_running += 1
                end = p.cancelled  # settled over the part that ran (the agent's time of receipt)
        elif final_state != "completed" or stored.get(p.event_id) != "completed":
            lost_events += 1
            problems.append(
                f"{p.event_id}: final state {final_state}/{stored.get(p.event_id)}, not completed"
            )
        if not want_settlement:
            continue
        ran += 1
        if (last := last_restore.get(p.event_id)) is not None:
            # The journal is stamped in wall time; the event in the agent's (simulated) time.
            clock = run["clock"]
            restore_lag_min.append((clock.origin_sim + (last - clock.origin_wall) * clock.speed - end) / 60)
        s = settlements.get(p.event_id)
        if s is None or p.event_id not in settled_db:
            lost_settlements += 1
            problems.append(
                f"{p.event_id}: no settlement (mqtt {s is not None}, db {p.event_id in settled_db})"
            )
            continue
        # A cancellation lands when the agent receives it: a few simulated seconds after the publish.
        tol = 0.5 if p.cancelled is None or p.cancelled >= p.start + p.duration else 120.0
        if abs(float(s["start"]) - p.start) > 0.5 or abs(float(s["end"]) - end) > tol:
            wrong_windows += 1
            problems.append(f"{p.event_id}: settled [{s['start']}, {s['end']}], want [{p.start}, {end}]")
        if reports_by_event.get(p.event_id, 0) == 0:
            problems.append(f"{p.event_id}: ran without a live report")
    if missing_seq:
        problems.append(f"report seq missing: {missing_seq[:20]}{'...' if len(missing_seq) > 20 else ''}")
    if open_journal:
        problems.append(f"{open_journal} revert-journal rows left open")
    between = [(when, bad) for when, bad in restore_checks if bad]
    for when, bad in between[:5]:
        problems.append(
            f"before the event at {datetime.fromtimestamp(when + 240, ZoneInfo(TZ)):%a %H:%M}: {bad}"
        )
    if final:
        problems.append(f"left shed at the end: {final}")
    if crashes:
        problems.append(f"agent exited {len(crashes)} times during the run: {crashes}")
    if rc != 0:
        problems.append(f"agent exit status {rc} on SIGTERM")

    warm = run["t0"] + WARM_UP_S
    after = [s for s in samples if s.sim >= warm]
    span = 2 * 3600  # median of each end's first/last two simulated hours: one sample is noise

    def med(xs: list[float]) -> float:
        return statistics.median(xs) if xs else float("nan")

    rss_w = med([s.rss_mb for s in after if s.sim < warm + span])
    rss_e = med([s.rss_mb for s in after if s.sim > after[-1].sim - span]) if after else float("nan")
    fds_w = med([s.fds for s in after if s.sim < warm + span])
    fds_e = med([s.fds for s in after if s.sim > after[-1].sim - span]) if after else float("nan")
    tasks = [s.tasks for s in after if s.tasks is not None]
    db_mb = samples[-1].db_mb if samples else float("nan")
    per_day = []
    for d in range(run["days"]):
        day_end = run["t0"] + (d + 1) * 86400
        ss = [s for s in samples if s.sim <= day_end]
        if ss:
            last = ss[-1]
            per_day.append(
                {
                    "day": d + 1,
                    "events": sum(
                        1 for p in events if p.refuse is None and day_end - 86400 < p.start <= day_end
                    ),
                    "faults": sum(1 for f in faults if f.done and day_end - 86400 < f.at <= day_end),
                    "rss_mb": round(last.rss_mb, 1),
                    "fds": last.fds,
                    "threads": last.threads,
                    "tasks": last.tasks,
                    "db_mb": round(last.db_mb, 2),
                }
            )
    return {
        "days": run["days"],
        "speed": run["speed"],
        "seed": run["seed"],
        "wall_s": round(run["wall_s"], 1),
        "simulated_h": round((run["sim_end"] - run["t0"]) / 3600, 1),
        "events": sum(1 for p in events if p.sent is not None),
        "accepted": accepted,
        "refused_as_planned": refused,
        "ran": ran,
        "modified": modified,
        "cancelled_before_start": cancelled_before,
        "cancelled_running": cancelled_running,
        "unexpected_responses": unexpected,
        "lost_events": lost_events,
        "lost_reports": len(missing_seq),
        "reports": len(seqs),
        "lost_settlements": lost_settlements,
        "settlement_window_wrong": wrong_windows,
        "restore_checks": len(restore_checks),
        "restore_checks_failed": len(between),
        "restore_checks_still_restoring": run["still_restoring"],
        "restore_min_after_end_median": round(statistics.median(restore_lag_min), 1)
        if restore_lag_min
        else None,
        "restore_min_after_end_max": round(max(restore_lag_min), 1) if restore_lag_min else None,
        "restores_past_recovery_window": sum(1 for m in restore_lag_min if m > RECOVERY_S / 60),
        "devices_not_restored": len(final),
        "journal_open": open_journal,
        "faults_injected": sum(injected.values()),
        "faults": dict(sorted(injected.items())),
        "events_seen_shedding": sum(1 for n in run["shed_seen"] if n > 0),
        "events_checked_shedding": len(run["shed_seen"]),
        "agent_cpu_pct": round(run["cpu_s"] / run["wall_s"] * 100, 1),
        "agent_crashes": len(crashes),
        "agent_exit": rc,
        "rss_mb_after_warmup": round(rss_w, 1),
        "rss_mb_end": round(rss_e, 1),
        "rss_mb_max": round(max((s.rss_mb for s in samples), default=float("nan")), 1),
        "rss_growth_pct": round((rss_e - rss_w) / rss_w * 100, 2) if rss_w else None,
        "fd_after_warmup": fds_w,
        "fd_end": fds_e,
        "fd_growth": fds_e - fds_w,
        "tasks_min": min(tasks, default=None),
        "tasks_max": max(tasks, default=None),
        "threads_max": max((s.threads for s in samples), default=None),
        "db_mb_end": round(db_mb, 2),
        "per_day": per_day,
        "problems": problems,
        "log": str(run["log"]),
    }


def table(r: dict[str, Any]) -> str:
    out = [
        f"soak: {r['days']} simulated days at {r['speed']:g}x, seed {r['seed']}: {r['wall_s']:.0f} s wall",
        "",
        f"events sent {r['events']}: accepted {r['accepted']}, refused as planned {r['refused_as_planned']}, "
        f"ran {r['ran']}, modified {r['modified']}, cancelled {r['cancelled_before_start']} before start "
        f"and {r['cancelled_running']} running",
        f"faults injected {r['faults_injected']}: " + ", ".join(f"{k} {v}" for k, v in r["faults"].items()),
        f"lost: events {r['lost_events']}, reports {r['lost_reports']} (of {r['reports']}), "
        f"settlements {r['lost_settlements']}; settlement windows wrong {r['settlement_window_wrong']}",
        f"shedding seen half-way through {r['events_seen_shedding']}/{r['events_checked_shedding']} "
        "unmodified events (registers read from the simulators)",
        f"restored: {r['restore_checks'] - r['restore_checks_failed']}/{r['restore_checks']} checks before events, "
        f"{r['devices_not_restored']} points not restored at the end, {r['journal_open']} journal rows open",
        f"restore: last device back {r['restore_min_after_end_median']} min after the end (median), "
        f"{r['restore_min_after_end_max']} max; {r['restores_past_recovery_window']} past the "
        f"{RECOVERY_S // 60} min recovery window; {r['restore_checks_still_restoring']} checks found one "
        "still restoring",
        f"agent: {r['agent_crashes']} crashes, exit {r['agent_exit']}, CPU {r['agent_cpu_pct']} % of one core; RSS {r['rss_mb_after_warmup']} MB after "
        f"warm-up -> {r['rss_mb_end']} MB ({r['rss_growth_pct']:+.1f} %), max {r['rss_mb_max']} MB; fds "
        f"{r['fd_after_warmup']:g} -> {r['fd_end']:g}; tasks {r['tasks_min']}-{r['tasks_max']}; "
        f"db {r['db_mb_end']} MB",
        "",
        f"{'day':>3} {'events':>6} {'faults':>6} {'RSS MB':>7} {'fds':>4} {'threads':>7} {'tasks':>5} {'db MB':>6}",
    ]
    for d in r["per_day"]:
        out.append(
            f"{d['day']:>3} {d['events']:>6} {d['faults']:>6} {d['rss_mb']:>7} {d['fds']:>4} "
            f"{d['threads']:>7} {d['tasks']!s:>5} {d['db_mb']:>6}"
        )
    out.append("")
    out += [f"PROBLEM: {p}" for p in r["problems"]] or ["nothing lost, everything restored"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=None, help="simulated days (default 7; --quick: 2)")
    ap.add_argument(
        "--speed", type=float, default=None, help="time compression (default 1200; --quick: 1400)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="2 days at 1400x, about 2.5 min")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument(
        "--keep", action="store_true", help="keep the run's directory (config, database, agent log)"
    )
    args = ap.parse_args(argv)
    days = args.days or (2 if args.quick else 7)
    speed = args.speed or (1400.0 if args.quick else 1200.0)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="dr-soak-"))
    result = asyncio.run(soak(days, speed, args.seed, tmp, progress))
    if args.keep:
        progress(f"kept {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        result.pop("log")
    print(json.dumps(result) if args.json else table(result))
    ok = not result["problems"] and result["rss_growth_pct"] is not None and result["rss_growth_pct"] < 10
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
