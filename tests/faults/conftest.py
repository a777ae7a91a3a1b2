"""The fault suite's shared harness: a site (broker, simulators, config), the agent, and the checks.

Every scenario runs the demo site against a real Mosquitto (persistent, so
the provider-side observer sees every QoS 1 message across a broker restart)
and the shipped simulators over Modbus TCP on loopback, in scaled time. The
agent is either the `dr-agent run` process (scenarios about the process:
SIGKILL, start-up) or an in-process `Agent` (faults injected into its
database or clock). Each scenario ends with the same proof (`Site.check`):
every device restored (read back from the simulators' registers), every
accepted event completed with its settlement delivered, every live report
delivered with `seq` running 1..n without a gap, and no journal entry open.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.config.model import SiteConfig
from agent.platform.clock import Clock, ScaledClock
from agent.platform.store import Store
from agent.runtime.daemon import Agent
from drivers.sim.plant import SimulatedPlant
from tests.conftest import Mosquitto, serve_plant, site_config
from tests.faults.proxy import ModbusFaultProxy
from tests.helpers import agent_command, event_payload, write_config
from tests.integration.test_broker_outage import SessionObserver, persistent_broker, quick_restore
from tests.integration.test_event_end_to_end import controllable_state

pytestmark = pytest.mark.integration

#: Simulated seconds per wall second; high enough for a short suite, low enough for a loaded 2-core box.
SPEED = 40.0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = persistent_broker(tmp_path)
    yield b
    b.stop()


def kill_broker(b: Mosquitto) -> None:
    """SIGKILL, not a clean stop: the broker saves nothing and says goodbye to no one."""
    if b.proc.poll() is None:
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait(5)


@dataclass
class Site:
    cfg: SiteConfig
    clock: ScaledClock
    plant: SimulatedPlant
    tmp: Path
    broker: Mosquitto
    before: dict[tuple[str, str], float]
    proxies: dict[str, ModbusFaultProxy] = field(default_factory=dict)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.tmp / "agent.log"

    @property
    def db_path(self) -> Path:
        return Path(self.cfg.storage.path)

    def at(self, sim_s: float) -> float:
        """Wall seconds for `sim_s` of simulated time."""
        return sim_s / self.clock.speed

    async def sleep(self, sim_s: float) -> None:
        await asyncio.sleep(self.at(sim_s))

    def shed(self) -> set[tuple[str, str]]:
        """(device, role) whose registers differ from before the test, read from the simulators."""
        now = controllable_state(self.plant)
        return {k for k, v in now.items() if abs(v - self.before[k]) > 1e-6}

    async def wait_shed(self, n: int, sim_timeout_s: float = 120.0) -> set[tuple[str, str]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.at(sim_timeout_s) + 5
        while loop.time() < deadline:
            if len(s := self.shed()) >= n:
                return s
            await asyncio.sleep(0.02)
        raise AssertionError(f"the agent did not shed {n} points: {self.shed()}")

    def config_file(self, cfg: SiteConfig | None = None) -> Path:
        return write_config(cfg or self.cfg, self.tmp / "site.yaml")

    async def send_event(
        self, obs: SessionObserver, event_id: str, lead_s: float, duration_s: float, **extra: Any
    ) -> float:
        """Publish an event starting `lead_s` from now; wait for the opt-in. Returns its start."""
        start = self.clock.now() + lead_s
        extra.setdefault("recovery_s", 20)
        await obs.publish(
            "in/event", event_payload(event_id, start, duration_s, tz=self.cfg.site.timezone, **extra)
        )
        resp = await obs.wait_for(
            lambda t, b: t.endswith("/out/response") and b.get("event_id") == event_id, 20
        )
        assert resp["opt"] == "in", resp
        return start

    async def wait_state(self, obs: SessionObserver, event_id: str, state: str, timeout: float = 30) -> dict[str, Any]:
        return await obs.wait_for(
            lambda t, b: t.endswith(f"/out/event/{event_id}") and b.get("state") == state, timeout
        )

    async def settled(self, obs: SessionObserver, event_id: str, timeout: float = 40) -> dict[str, Any]:
        settlement = await obs.wait_for(lambda t, b: t.endswith(f"/out/settlement/{event_id}"), timeout)
        await self.wait_state(obs, event_id, "completed", 10)
        return settlement

    async def wait_restored(self, sim_timeout_s: float = 300.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.at(sim_timeout_s) + 5
        while loop.time() < deadline:
            if not self.shed():
                return
            await asyncio.sleep(0.02)  # polling the simulators' registers: nothing to await on
        raise AssertionError(f"not restored while the agent runs: {sorted(self.shed())}")

    def check(
        self,
        obs: SessionObserver,
        events: dict[str, tuple[float, float]],
        *,
        restored: bool = True,
        first_seq: int = 1,
    ) -> list[int]:
        """The proof every scenario ends with. `events`: event id -> (start, duration).

        Returns the report sequence numbers seen (deduplicated, QoS 1 is at-least-once).
        """
        if restored:
            assert not self.shed(), f"left shed: {sorted(self.shed())}"
            after = controllable_state(self.plant)
            for key, value in self.before.items():
                assert after[key] == pytest.approx(value), f"{key} left at {after[key]}, was {value}"
        for event_id, (start, duration) in events.items():
            s = [b for t, b in obs.messages if t.endswith(f"/out/settlement/{event_id}")]
            assert s, f"no settlement for {event_id}"
            assert s[-1]["start"] == pytest.approx(start), (event_id, s[-1]["start"], start)
            assert s[-1]["end"] == pytest.approx(start + duration), (event_id, s[-1]["end"], start + duration)
        store = Store(self.db_path)
        try:
            assert store.journal_open() == [], "journal entries left open"
            kept = {e["event_id"]: e for e in store.events()}
            for event_id in events:
                assert event_id in kept, f"accepted event {event_id} lost from the database"
                assert kept[event_id]["state"] == "completed", kept[event_id]["state"]
                assert store.settlement(event_id) is not None
            last = int(store.meta_get("report_seq") or 0)
        finally:
            store.close()
        seqs = sorted({int(b["seq"]) for b in obs.on("out/report")})
        assert seqs, "no live report delivered"
        assert seqs == list(range(first_seq, last + 1)), f"reports missing: want {first_seq}..{last}, got {seqs}"
        return seqs


@contextlib.asynccontextmanager
async def open_site(
    broker: Mosquitto,
    tmp: Path,
    *,
    speed: float = SPEED,
    origin: datetime | None = None,
    proxy: tuple[str, ...] = (),
    tweak: Callable[[SiteConfig], SiteConfig] | None = None,
) -> AsyncIterator[Site]:
    """The demo site with a brisk restore, its simulators served and running on a scaled clock.

    `proxy` names endpoints to put a ModbusFaultProxy in front of (the agent's config points at it).
    """
    cfg = quick_restore(site_config(broker.port, tmp))
    if tweak is not None:
        cfg = tweak(cfg)
    tz = ZoneInfo(cfg.site.timezone)
    clock = ScaledClock(speed, origin_sim=(origin or datetime(2026, 7, 1, 11, 0, tzinfo=tz)).timestamp())
    plant, plant_task = await serve_plant(cfg, clock)
    proxies: dict[str, ModbusFaultProxy] = {}
    try:
        if proxy:
            endpoints = []
            for ep in cfg.modbus.endpoints:
                if ep.name in proxy:
                    p = proxies[ep.name] = ModbusFaultProxy(ep.port)
                    ep = ep.model_copy(update={"port": await p.start()})
                endpoints.append(ep)
            cfg = cfg.model_copy(update={"modbus": cfg.modbus.model_copy(update={"endpoints": endpoints})})
        yield Site(cfg, clock, plant, tmp, broker, controllable_state(plant), proxies)
    finally:
        for p in proxies.values():
            await p.stop()
        plant_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await plant_task
        await plant.stop()


@contextlib.asynccontextmanager
async def observer(site: Site, name: str = "fault-observer") -> AsyncIterator[SessionObserver]:
    async with SessionObserver(site.broker.host, site.broker.port, site.cfg.topic_root, name) as obs:
        obs.connected_at = asyncio.get_running_loop().time()  # type: ignore[attr-defined]
        yield obs


async def session_saved(obs: SessionObserver) -> None:
    """Wait until the broker has saved the observer's session (autosave every second): a broker
    SIGKILLed before that forgets the subscription, and what the agent publishes after the restart
    would reach nobody until the observer subscribed again, which is the test's loss, not the agent's."""
    left = obs.connected_at + 2.5 - asyncio.get_running_loop().time()  # type: ignore[attr-defined]
    await asyncio.sleep(max(0.0, left))


@contextlib.asynccontextmanager
async def agent_in_process(site: Site, clock: Clock | None = None) -> AsyncIterator[Agent]:
    """An in-process Agent on the site's clock (or `clock`); stopped with SIGTERM's path on exit."""
    agent = Agent(site.cfg, clock or site.clock, metrics=False)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop), name="agent")
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


class AgentProcess:
    """`dr-agent run` on the site's config and clock; stderr (JSON logs) appended to site.log."""

    def __init__(self, site: Site, config: Path | None = None) -> None:
        self.site = site
        self.config = config or site.config_file()
        self.procs: list[asyncio.subprocess.Process] = []

    @property
    def proc(self) -> asyncio.subprocess.Process:
        return self.procs[-1]

    async def start(self, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
        import os

        with self.site.log.open("ab") as log:
            p = await asyncio.create_subprocess_exec(
                *agent_command(self.config, self.site.clock.spec()),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, **(env or {})},
            )
        self.procs.append(p)
        return p

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(self.proc.wait(), 10) == -signal.SIGKILL

    async def stop(self) -> int:
        """SIGTERM and wait: the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 30)

    async def close(self) -> None:
        for p in self.procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(p.wait(), 20)
                except TimeoutError:
                    p.kill()
                    await p.wait()

    def log_text(self) -> str:
        return self.site.log.read_text(errors="replace") if self.site.log.exists() else ""


def fast_timeouts(cfg: SiteConfig) -> SiteConfig:
    """Modbus timeouts of 0.15 s (wall): a silent unit is found out in seconds of a compressed run."""
    endpoints = [e.model_copy(update={"timeout_s": 0.15}) for e in cfg.modbus.endpoints]
    return cfg.model_copy(update={"modbus": cfg.modbus.model_copy(update={"endpoints": endpoints})})


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str = "") -> None:
    """Poll `predicate` (state read from simulators or the agent: nothing to await on) until true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


async def online(obs: SessionObserver, n: int = 1, timeout: float = 20) -> None:
    """Wait until the agent said `online` at least `n` times (n > 1 after a restart)."""
    await obs.wait_for(
        lambda t, b: (
            t.endswith("/status") and len([1 for t2, b2 in obs.messages if t2 == t and b2.get("state") == "online"]) >= n
        ),
        timeout,
    )
