"""SIGTERM to `dr-agent run` mid-event restores every touched device, read back over Modbus.

On both event loops the agent can run on: asyncio (a default install) and uvloop (the speed
extra, taken when installed), chosen with DR_AGENT_LOOP."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.platform.clock import ScaledClock
from agent.platform.store import Store
from tests.conftest import Mosquitto, serve_plant, site_config, stop_run
from tests.helpers import Observer, agent_command, event_payload, write_config
from tests.integration.test_event_end_to_end import controllable_state

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_sigterm_mid_event_restores_devices_and_says_stopped(
    mosquitto: Mosquitto, tmp_path: Path, loop: str
) -> None:
    cfg = site_config(mosquitto.port, tmp_path)
    path = write_config(cfg, tmp_path / "site.yaml")
    tz = ZoneInfo(cfg.site.timezone)
    clock = ScaledClock(30.0, origin_sim=datetime(2026, 7, 1, 11, 0, tzinfo=tz).timestamp())
    plant, plant_task = await serve_plant(cfg, clock)
    before = controllable_state(plant)
    proc = await asyncio.create_subprocess_exec(
        *agent_command(path, clock.spec()),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "DR_AGENT_LOOP": loop},
    )
    try:
        async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root) as obs:
            await obs.wait_online(20)
            await obs.publish("in/event", event_payload("term-1", clock.now() + 60, 3600))
            await obs.wait_for(lambda t, b: t.endswith("/out/event/term-1") and b["state"] == "active", 20)
            # Wait until several devices are shed (read from the simulators' registers).
            for _ in range(100):
                shed = {k for k, v in controllable_state(plant).items() if abs(v - before[k]) > 1e-6}
                if len(shed) >= 3:
                    break
                await asyncio.sleep(0.1)
            assert len(shed) >= 3, "the agent did not shed"
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(proc.wait(), 30)
            await obs.wait_for(lambda t, b: t.endswith("/status") and b.get("state") == "stopped", 5)
    finally:
        await stop_run(proc, plant, plant_task)
    err = (await proc.stderr.read()).decode() if proc.stderr else ""
    assert rc == 0, err[-2000:]
    assert f"loop={loop}" in err, "the agent did not say it ran on the loop asked for"
    after = controllable_state(plant)
    for key in shed:
        assert after[key] == pytest.approx(before[key]), f"{key} left at {after[key]}, was {before[key]}"
    # The revert journal is closed, and the audit says what was done.
    store = Store(tmp_path / "agent.sqlite")
    try:
        assert store.journal_open() == []
        restored = [row for row in store.audit_log(100) if row[3].startswith("restored")]
        assert {row[2] for row in restored} >= {k[0] for k in shed}
    finally:
        store.close()
