"""`dr-agent status` and `dr-agent diagnose` beside a running `dr-agent run`, mid-event and after a stop."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.platform.clock import ScaledClock
from agent.runtime.statefile import read_state, state_path
from tests.conftest import Mosquitto, serve_plant, site_config, stop_run
from tests.helpers import Observer, agent_command, dr_agent, event_payload, write_config

pytestmark = pytest.mark.e2e


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [*dr_agent(), *args], capture_output=True, text=True, timeout=60
    )


async def test_status_and_diagnose_follow_the_running_agent(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = site_config(mosquitto.port, tmp_path)
    path = write_config(cfg, tmp_path / "site.yaml")
    tz = ZoneInfo(cfg.site.timezone)
    clock = ScaledClock(30.0, origin_sim=datetime(2026, 7, 1, 11, 0, tzinfo=tz).timestamp())
    plant, plant_task = await serve_plant(cfg, clock)

    proc = await asyncio.create_subprocess_exec(
        *agent_command(path, clock.spec()),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root) as obs:
            await obs.wait_online(20)
            await obs.publish("in/event", event_payload("st-1", clock.now() + 60, 3600))
            await obs.wait_for(lambda t, b: t.endswith("/out/report") and b.get("active_steps"), 20)
            async with asyncio.timeout(10):  # the next state-file write (every 2 s)
                while not ((read_state(state_path(cfg)) or {}).get("live") or {}).get("active_steps"):  # noqa: ASYNC110
                    await asyncio.sleep(0.1)

            # As a technician would, all at once beside the running agent.
            st, human, diag = await asyncio.gather(
                cli("status", "-c", str(path), "--json"),
                cli("status", "-c", str(path)),
                cli("diagnose", "-c", str(path), "--json"),
            )
            assert st.returncode == 0, st.stdout + st.stderr
            body = json.loads(st.stdout)
            assert body["liveness"] == "running"
            live = body["state"]["live"]
            assert live["event_id"] == "st-1" and live["active_steps"]
            assert live["committed_kw"] == pytest.approx(100.0)
            assert live["band_kw"] == [50.0, 200.0]
            shed_devices = [d["name"] for d in body["state"]["devices"] if d["shed"]]
            assert shed_devices, body["state"]["devices"]

            assert human.returncode == 0
            for text in (
                "running",
                "st-1",
                "target 100.0 kW",
                "band 50-200 kW",
                "steps:",
                "SHED",
                "site-meter",
            ):
                assert text in human.stdout, human.stdout

            checks = {c["name"]: c for c in json.loads(diag.stdout)["checks"]}
            assert checks["service"]["status"] == "ok" and "running" in checks["service"]["detail"]
            assert checks["mqtt.topics"]["status"] == "ok"
            d = shed_devices[0]
            assert "SHED" in checks[f"device.{d}"]["detail"] and "st-1" in checks[f"device.{d}"]["detail"]

            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        await stop_run(proc, plant, plant_task)

    stopped, diag = await asyncio.gather(
        cli("status", "-c", str(path)), cli("diagnose", "-c", str(path), "--json")
    )
    assert stopped.returncode == 3 and "stopped cleanly" in stopped.stdout, stopped.stdout
    body = json.loads(diag.stdout)
    checks = {c["name"]: c for c in body["checks"]}
    assert checks["service"]["status"] == "fail" and "systemctl start dr-agent" in checks["service"]["hint"]
    assert "st-1" in checks["events"]["detail"]
    assert body["exit_code"] == diag.returncode == 2
