"""Shared fixtures: a real Mosquitto on a free loopback port, the simulated site on real Modbus TCP.

Every test gets its own broker port, its own Modbus ports, its own topic root
and its own SQLite file, so no test depends on another and they may run in
any order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from agent.config.load import load_site_config
from agent.config.model import SiteConfig
from drivers.sim.plant import SimEndpoint, SimulatedPlant
from drivers.sim.server import free_port

if TYPE_CHECKING:
    from collections.abc import Mapping

    from agent.control.actuator import Actuator
    from agent.platform.clock import ManualClock
    from agent.platform.store import AsyncStore
    from agent.runtime.daemon import Agent
    from drivers.device import Device

    #: The site's config, its simulated plant, the agent's devices, an actuator and its store.
    Rig = tuple[SiteConfig, Any, Mapping[str, Device], Actuator, AsyncStore]

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "config" / "demo-site.yaml"

# The dev venv has uvloop (the speed extra); the agents the tests start run on asyncio, as a
# default install does, unless a test asks for uvloop (tests/e2e/test_run_sigterm.py).
os.environ.setdefault("DR_AGENT_LOOP", "asyncio")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """asyncio's loop for every async test; a test or module marked `each_loop` runs on uvloop
    (the speed extra) as well, once per loop."""
    if item.get_closest_marker("each_loop") is None:
        return {"asyncio": asyncio.new_event_loop}
    import uvloop

    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if not found:
        pytest.fail("Mosquitto is not installed: run ./dev test (it installs it) or apt-get install mosquitto")
    return found


@dataclass
class Mosquitto:
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    conf: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def start(self) -> None:
        """(Re)start on the same port and config, e.g. after an outage test stopped it."""
        self.proc = _spawn_mosquitto(self.conf, self.port)


def _spawn_mosquitto(conf: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return proc
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"mosquitto exited: {err}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start listening")


def start_mosquitto(tmp: Path, extra_conf: str = "", port: int | None = None) -> Mosquitto:
    """A Mosquitto on 127.0.0.1:<free port>, anonymous unless `extra_conf` says otherwise."""
    port = port or free_port()
    conf = tmp / f"mosquitto-{port}.conf"
    body = f"listener {port} 127.0.0.1\n" + (extra_conf or "allow_anonymous true\n")
    body += "persistence false\nlog_dest stderr\nlog_type error\n"
    conf.write_text(body)
    return Mosquitto("127.0.0.1", port, _spawn_mosquitto(conf, port), conf)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = start_mosquitto(tmp_path)
    yield broker
    broker.stop()


def site_config(broker_port: int, tmp: Path, *, topic_root: str | None = None, base: Path = DEMO_CONFIG) -> SiteConfig:
    """The demo site on free ports, a private topic root and a private database."""
    cfg, _ = load_site_config(base)
    endpoints = [e.model_copy(update={"host": "127.0.0.1", "port": free_port()}) for e in cfg.modbus.endpoints]
    root = topic_root or f"test/{os.getpid()}/{time.monotonic_ns()}"
    return cfg.model_copy(
        update={
            "mqtt": cfg.mqtt.model_copy(update={"host": "127.0.0.1", "port": broker_port, "topic_root": root}),
            "modbus": cfg.modbus.model_copy(update={"endpoints": endpoints}),
            "storage": cfg.storage.model_copy(update={"path": str(tmp / "agent.sqlite")}),
            "metrics": cfg.metrics.model_copy(update={"port": 0}),
        }
    )


@contextlib.asynccontextmanager
async def agent_on_plant(tmp: Path) -> AsyncIterator[tuple[SiteConfig, ManualClock, SimulatedPlant, Agent]]:
    """The demo site's plant served over Modbus TCP and an in-process Agent on a manual clock at
    11:00 local time (no loop running: the test drives `handle_event` and `control_cycle`)."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from agent.platform.clock import ManualClock
    from agent.runtime.daemon import Agent

    cfg = site_config(1883, tmp)
    clock = ManualClock(datetime(2026, 7, 1, 11, 0, tzinfo=ZoneInfo(cfg.site.timezone)).timestamp())
    plant, task = await serve_plant(cfg, clock)
    agent = Agent(cfg, clock, metrics=False)
    try:
        yield cfg, clock, plant, agent
    finally:
        for t in agent.transports.values():
            await t.close()
        await agent.store.close()
        task.cancel()
        await plant.stop()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """The demo site's plant over Modbus TCP, the agent's devices polled once, an Actuator on a
    real SQLite file; closed and stopped after the test."""
    from agent.control.actuator import Actuator
    from agent.platform.clock import SystemClock
    from agent.platform.store import AsyncStore, Store
    from agent.runtime.daemon import build_devices

    cfg = site_config(1883, tmp_path)
    plant, task = await serve_plant(cfg, SystemClock())
    store = AsyncStore(Store(tmp_path / "agent.sqlite"))
    transports, devices = build_devices(cfg)
    for d in devices.values():
        await d.poll()
    try:
        yield cfg, plant, devices, Actuator(devices, store), store
    finally:
        for t in transports.values():
            await t.close()
        await store.close()
        task.cancel()
        await plant.stop()


async def stop_run(proc: asyncio.subprocess.Process, plant: SimulatedPlant, plant_task: asyncio.Task[None]) -> None:
    """A `dr-agent run` test's teardown: kill the process if it is still up, stop the plant."""
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    plant_task.cancel()
    await plant.stop()


async def polled(agent: Agent, clock: ManualClock, n: int = 3) -> None:
    """`n` polls of every endpoint a second apart: the meter is known and its filter settled."""
    for _ in range(n):
        await agent.poll_all()
        clock.advance(1)


async def serve_plant(cfg: SiteConfig, clock: object, seed: int = 1) -> tuple[SimulatedPlant, asyncio.Task[None]]:
    """Build the plant for `cfg`, serve every endpoint over Modbus TCP, and run its physics on `clock`."""
    plant = SimulatedPlant.build(cfg.devices, peak_kw=cfg.contract.peak_kw, meter_name=cfg.site.meter, seed=seed)
    await plant.serve([SimEndpoint(e.name, e.host or "127.0.0.1", e.port) for e in cfg.modbus.endpoints])
    task = asyncio.create_task(plant.run(clock), name="plant")  # type: ignore[arg-type]
    return plant, task
