"""Faults injected into a real `dr-agent run` mid-event (DR_AGENT_FAILPOINTS, agent/platform/failpoints.py).

- One exception in every component (each endpoint's poll, control, the MQTT
  link, flush, report, state file, metrics): each is restarted, the event goes
  on, and after SIGTERM every device reads back restored over Modbus.
- The control path failing for good, with one shed device gone silent: the
  agent restores every device it can reach, audits the one it cannot with that
  device's own fail-safe, exits non-zero, and the retained status on the
  broker is `failed` with the reason, never a stale `online`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.config.model import SiteConfig
from agent.platform.clock import ScaledClock
from agent.platform.store import Store
from tests.conftest import Mosquitto, serve_plant, site_config
from tests.helpers import Observer, agent_command, event_payload, write_config
from tests.integration.test_supervision import changed, read_back

pytestmark = pytest.mark.e2e

COMPONENTS = ("poll", "control", "mqtt", "flush", "report", "state", "metrics")


def state_doc(tmp_path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((tmp_path / "agent.state.json").read_text()))
    except (OSError, ValueError):
        return {}


async def start(
    cfg: SiteConfig, tmp_path: Path, clock: ScaledClock, failpoints: Path
) -> asyncio.subprocess.Process:
    path = write_config(cfg, tmp_path / "site.yaml")
    env = {**os.environ, "DR_AGENT_FAILPOINTS": f"file:{failpoints}"}
    return await asyncio.create_subprocess_exec(
        *agent_command(path, clock.spec()),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def shed_event(
    obs: Observer, clock: ScaledClock, cfg: SiteConfig, before: dict[Any, float]
) -> set[Any]:
    """Send an event and wait until at least three devices read back shed over Modbus."""
    await obs.wait_online(20)
    await obs.publish("in/event", event_payload("fault-1", clock.now() + 60, 3600))
    await obs.wait_for(lambda t, b: t.endswith("/out/event/fault-1") and b["state"] == "active", 20)
    async with asyncio.timeout(30):
        while len(shed := changed(before, await read_back(cfg))) < 3:  # noqa: ASYNC110 - polls Modbus
            await asyncio.sleep(0.2)
    return shed


async def test_a_failure_in_every_component_mid_event_is_restarted_and_the_event_goes_on(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    cfg = site_config(mosquitto.port, tmp_path)
    cfg = cfg.model_copy(update={"metrics": cfg.metrics.model_copy(update={"enabled": True})})
    tz = ZoneInfo(cfg.site.timezone)
    clock = ScaledClock(30.0, origin_sim=datetime(2026, 7, 1, 11, 0, tzinfo=tz).timestamp())
    plant, plant_task = await serve_plant(cfg, clock)
    before = await read_back(cfg)
    armed = tmp_path / "failpoints"
    proc = await start(cfg, tmp_path, clock, armed)
    try:
        async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root) as obs:
            await shed_event(obs, clock, cfg, before)
            seq_at_arming = max((r["seq"] for r in obs.on("out/report")), default=0)
            armed.write_text(";".join(f"{c}:ValueError" for c in COMPONENTS))
            async with asyncio.timeout(45):
                while True:
                    comps = state_doc(tmp_path).get("components", {})
                    restarted = {n.split("[")[0] for n, h in comps.items() if h["restarts"] >= 1}
                    if restarted >= set(COMPONENTS):
                        break
                    assert proc.returncode is None, "the agent died"
                    await asyncio.sleep(0.3)
            # The event went on: fresh live reports, still active, still shed.
            await obs.wait_for(
                lambda t, b: (
                    t.endswith("/out/report")
                    and b.get("event_id") == "fault-1"
                    and b["seq"] > seq_at_arming + 2
                ),
                30,
            )
            assert changed(before, await read_back(cfg)), "the event was dropped"
            port = state_doc(tmp_path)["metrics_port"]
            text = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            )
            assert 'dr_agent_component_restarts_total{component="control"} 1.0' in text
            assert 'dr_agent_component_restarts_total{component="metrics"} 1.0' in text
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(proc.wait(), 30)
            await obs.wait_for(lambda t, b: t.endswith("/status") and b.get("state") == "stopped", 5)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        plant_task.cancel()
    err = (await proc.stderr.read()).decode() if proc.stderr else ""
    try:
        assert rc == 0, err[-3000:]
        assert await read_back(cfg) == pytest.approx(before)
    finally:
        await plant.stop()
    for c in ("control", "report", "flush", "state", "metrics", "mqtt"):
        assert f"component={c}" in err, f"no failure logged for {c}"


async def test_control_failing_for_good_stops_safely_says_failed_and_exits_non_zero(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    cfg = site_config(mosquitto.port, tmp_path)
    tz = ZoneInfo(cfg.site.timezone)
    clock = ScaledClock(30.0, origin_sim=datetime(2026, 7, 1, 11, 0, tzinfo=tz).timestamp())
    plant, plant_task = await serve_plant(cfg, clock)
    before = await read_back(cfg)
    armed = tmp_path / "failpoints"
    proc = await start(cfg, tmp_path, clock, armed)
    try:
        async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root) as obs:
            shed = await shed_event(obs, clock, cfg, before)
            gone = sorted(shed)[0][0]  # one shed device drops off the bus: it cannot be restored
            plant.banks[gone].offline = True
            armed.write_text("control:ValueError@times=0")
            rc = await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        plant_task.cancel()
    err = (await proc.stderr.read()).decode() if proc.stderr else ""
    try:
        assert rc != 0, err[-3000:]
        # A late subscriber sees the retained status: failed, with the reason; never `online`.
        async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root, client_id="late") as late:
            status = await late.wait_for(lambda t, b: t.endswith("/status"), 10)
        assert status["state"] == "failed", status
        assert "control" in status["reason"] and gone in status["reason"], status
        plant.banks[gone].offline = False
        after = await read_back(cfg)
        for key in changed(before, after):
            assert key[0] == gone, f"{key} left at {after[key]}, was {before[key]}"
        for key in shed:
            if key[0] != gone:
                assert after[key] == pytest.approx(before[key])
    finally:
        await plant.stop()
    store = Store(tmp_path / "agent.sqlite")
    try:
        left = [row for row in store.audit_log(200) if row[2] == gone and "left shed" in row[3]]
        assert left and "fail-safe" in left[0][3], store.audit_log(20)
    finally:
        store.close()
    assert "component_given_up" in err
