"""What the daemon sets on the interpreter as it turns READY: start-up's objects frozen out of
the garbage collector's full passes, and a switch interval short enough that a thread running
Python (the store's thread settling an event) hands the interpreter back to the event loop
within SWITCH_INTERVAL_S, not Python's 5 ms (`bench/thread_contention.py`). The agent's own
READY step, its MQTT link a stand-in that has connected."""

from __future__ import annotations

import asyncio
import gc
import sys
from pathlib import Path
from types import SimpleNamespace

from agent.platform.clock import ManualClock
from agent.runtime.daemon import SWITCH_INTERVAL_S, Agent
from drivers.sim.server import free_port
from tests.conftest import site_config

PYTHON_DEFAULT_S = 0.005


async def test_ready_freezes_start_up_and_shortens_the_switch_interval(tmp_path: Path) -> None:
    agent = Agent(site_config(free_port(), tmp_path), ManualClock(), metrics=False)
    connected = asyncio.Event()
    connected.set()
    agent.mqtt = SimpleNamespace(ever_connected=connected, connected=connected)  # type: ignore[assignment]
    agent.polled_once.set()
    # As a fresh process starts (an agent run earlier by this test process may have set them).
    sys.setswitchinterval(PYTHON_DEFAULT_S)
    gc.unfreeze()
    try:
        await agent._ready_when_up()
        assert sys.getswitchinterval() == SWITCH_INTERVAL_S
        assert gc.get_freeze_count() > 0
    finally:
        sys.setswitchinterval(PYTHON_DEFAULT_S)
        gc.unfreeze()
        await agent.store.close()
