"""What the daemon sets on the interpreter once it is READY: start-up's objects frozen out of the
garbage collector's full passes, and a switch interval short enough that a thread running
Python (the store's thread settling an event) hands the interpreter back to the event loop
within SWITCH_INTERVAL_S, not Python's 5 ms (`bench/thread_contention.py`). A real agent, a
real Mosquitto, simulators over Modbus TCP."""

from __future__ import annotations

import asyncio
import gc
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from agent.platform.clock import ScaledClock
from agent.runtime.daemon import SWITCH_INTERVAL_S, Agent
from tests.conftest import Mosquitto, serve_plant, site_config
from tests.helpers import Observer

PYTHON_DEFAULT_S = 0.005


async def test_a_ready_agent_freezes_start_up_and_shortens_the_switch_interval(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    cfg = site_config(mosquitto.port, tmp_path)
    tz = ZoneInfo(cfg.site.timezone)
    clock = ScaledClock(30.0, origin_sim=datetime(2026, 7, 1, 11, 0, tzinfo=tz).timestamp())
    plant, plant_task = await serve_plant(cfg, clock)
    # As a fresh process starts (an earlier agent of this test process may have set them).
    sys.setswitchinterval(PYTHON_DEFAULT_S)
    gc.unfreeze()
    agent = Agent(cfg, clock)
    stop = asyncio.Event()
    agent_task = asyncio.create_task(agent.run(stop))
    try:
        async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root) as obs:
            await obs.wait_online()
            for _ in range(100):  # READY comes once the devices were polled and the broker answered
                if sys.getswitchinterval() != PYTHON_DEFAULT_S:
                    break
                await asyncio.sleep(0.05)
            assert sys.getswitchinterval() == SWITCH_INTERVAL_S
            assert gc.get_freeze_count() > 0
    finally:
        stop.set()
        await asyncio.wait_for(agent_task, 15)
        plant_task.cancel()
        await plant.stop()
        sys.setswitchinterval(PYTHON_DEFAULT_S)
        gc.unfreeze()
