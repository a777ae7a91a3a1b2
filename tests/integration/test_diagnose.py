"""`dr-agent diagnose` against the demo site on real parts: Mosquitto, Modbus TCP simulators, SQLite.

Green when everything is up (the agent running beside it); then each fault a
technician meets on site, one at a time, shows the right ✘ and hint: the
broker stopped, a wrong password, a device off the bus, a nearly full disk.
`--test-shed` writes one device through the revert journal and restores it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from agent.cli.diagnose import ClockFacts, Options, diagnose, exit_code, render, shed_test
from agent.config.model import SiteConfig
from agent.platform.clock import ScaledClock
from agent.platform.store import Store
from agent.runtime.daemon import Agent
from agent.runtime.statefile import read_state, state_path
from tests.conftest import REPO, Mosquitto, serve_plant, site_config, start_mosquitto

pytestmark = pytest.mark.integration


def write_config(cfg: SiteConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False))
    return path


def synced(cfg: SiteConfig) -> ClockFacts:
    # The CI box's own clock state is not the site's; the clock check has its own unit tests.
    return ClockFacts(cfg.site.timezone, True, "test", 0.001)


def by_name(checks: list) -> dict:  # type: ignore[type-arg]
    return {c.name: c for c in checks}


def clock_at_1030(cfg: SiteConfig) -> ScaledClock:
    tz = ZoneInfo(cfg.site.timezone)
    return ScaledClock(60.0, origin_sim=datetime(2026, 7, 1, 10, 30, tzinfo=tz).timestamp())


async def test_all_green_with_the_agent_running(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = site_config(mosquitto.port, tmp_path)
    path = write_config(cfg, tmp_path / "config.yaml")
    clock = clock_at_1030(cfg)
    plant, plant_task = await serve_plant(cfg, clock)
    agent = Agent(cfg, clock)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        async with asyncio.timeout(10):
            while (read_state(state_path(cfg)) or {}).get("state") != "running":  # noqa: ASYNC110 (a file, no event)
                await asyncio.sleep(0.1)
        checks = await diagnose(cfg, Options(config_path=str(path), clock_probe=lambda: synced(cfg)))
        text = render(checks)
        assert exit_code(checks) == 0, text
        names = by_name(checks)
        for must in (
            "config",
            "clock.timezone",
            "clock.sync",
            "disk",
            "mqtt.connect",
            "mqtt.auth",
            "mqtt.topics",
        ):
            assert names[must].status == "ok", text
        for ep in cfg.modbus.endpoints:
            assert names[f"modbus.{ep.name}"].status == "ok", text
        for d in cfg.devices:
            assert names[f"device.{d.name}"].status == "ok", text
        assert "kW" in names["device.site-meter"].detail
        assert "not shed" in names["device.chiller-1"].detail
        assert names["service"].status == "ok" and "running" in names["service"].detail
        assert "broker says online" in names["service"].detail
        assert names["metrics"].status == "ok"
        (tmp_path / "diagnose-green.txt").write_text(text)

        # The CLI, as tooling calls it: one JSON object, the exit code inside it and as the process's.
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "agent.cli", "diagnose", "-c", str(path), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        body = json.loads(proc.stdout)
        assert body["exit_code"] == proc.returncode
        assert {"name", "status", "detail", "hint"} <= set(body["checks"][0])
        # Only the box's own clock may differ from the in-process run.
        not_ok = {c["name"] for c in body["checks"] if c["status"] != "ok"}
        assert not_ok <= {"clock.timezone", "clock.sync"}, proc.stdout
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        plant_task.cancel()
        await plant.stop()


async def test_broker_stopped(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = site_config(mosquitto.port, tmp_path)
    mosquitto.stop()
    checks, _ = await _run(cfg, tmp_path)
    c = by_name(checks)["mqtt.connect"]
    assert c.status == "fail" and str(mosquitto.port) in c.detail
    assert "broker running" in c.hint
    assert "mqtt.auth" not in by_name(checks)  # nothing further is tried on a dead port
    assert exit_code(checks) == 2


async def test_wrong_password_is_named_and_never_printed(tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    subprocess.run(  # noqa: ASYNC221 (set-up, before anything runs)
        ["mosquitto_passwd", "-b", "-c", str(pw), "site-7", "right-horse"], check=True, capture_output=True
    )
    pw.chmod(0o600)
    broker = start_mosquitto(tmp_path, f"allow_anonymous false\npassword_file {pw}\nuser root\n")
    try:
        cfg = site_config(broker.port, tmp_path)
        cfg = cfg.model_copy(
            update={
                "mqtt": cfg.mqtt.model_copy(update={"username": "site-7", "password_env": "DIAG_TEST_PW"})
            }
        )
        os.environ["DIAG_TEST_PW"] = "wrong-battery-staple"
        try:
            checks, text = await _run(cfg, tmp_path)
            auth = by_name(checks)["mqtt.auth"]
            assert auth.status == "fail", text
            assert "password" in auth.hint and "credentials/mqtt-password" in auth.hint
            assert by_name(checks)["mqtt.connect"].status == "ok"
            assert "wrong-battery-staple" not in text
            assert "wrong-battery-staple" not in json.dumps([c.__dict__ for c in checks], default=str)

            os.environ["DIAG_TEST_PW"] = "right-horse"
            checks, text = await _run(cfg, tmp_path)
            assert by_name(checks)["mqtt.auth"].status == "ok", text
            assert by_name(checks)["mqtt.topics"].status == "ok", text
            assert "right-horse" not in text
        finally:
            del os.environ["DIAG_TEST_PW"]
    finally:
        broker.stop()


async def test_device_off_the_bus(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = site_config(mosquitto.port, tmp_path)
    clock = clock_at_1030(cfg)
    plant, plant_task = await serve_plant(cfg, clock)
    try:
        await plant.servers["carpark"].stop()  # the car park's converter loses power
        checks, text = await _run(cfg, tmp_path)
    finally:
        plant_task.cancel()
        await plant.stop()
    names = by_name(checks)
    assert names["modbus.carpark"].status == "fail", text
    assert "nc -vz" in names["modbus.carpark"].hint
    for d in ("ev-1", "ev-2", "ev-3", "ev-4"):
        assert names[f"device.{d}"].status == "fail" and "carpark" in names[f"device.{d}"].detail
    # The rest of the site still reads, with values.
    assert names["modbus.bms"].status == "ok"
    assert (
        names["device.chiller-1"].status == "ok"
        and "degC" in names["device.chiller-1"].detail
        and "kW" in names["device.chiller-1"].detail
    )
    assert exit_code(checks) == 2


async def test_disk_nearly_full(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = site_config(mosquitto.port, tmp_path)
    import shutil

    free_mb = shutil.disk_usage(tmp_path).free / 1e6
    checks, text = await _run(cfg, tmp_path, min_free_mb=free_mb + 500)
    disk = by_name(checks)["disk"]
    assert disk.status == "fail" and "free" in disk.detail, text
    assert "free space" in disk.hint
    checks, _ = await _run(cfg, tmp_path, min_free_mb=free_mb * 0.75)
    assert by_name(checks)["disk"].status == "warn"
    checks, _ = await _run(cfg, tmp_path, min_free_mb=1)
    assert by_name(checks)["disk"].status == "ok"


async def _run(cfg: SiteConfig, tmp: Path, **opts: float) -> tuple[list, str]:  # type: ignore[type-arg]
    path = write_config(cfg, tmp / "config.yaml")
    checks = await diagnose(
        cfg, Options(config_path=str(path), clock_probe=lambda: synced(cfg), timeout_s=2.0, **opts)
    )
    return checks, render(checks)


async def test_test_shed_writes_reads_back_and_restores(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = site_config(mosquitto.port, tmp_path)
    Store(cfg.storage.resolved()).close()  # the agent ran here once
    clock = clock_at_1030(cfg)
    plant, plant_task = await serve_plant(cfg, clock)
    try:
        before = float(plant.banks["lights-warehouse"].get("level_pct"))
        asked: list[str] = []
        refused = await shed_test(cfg, "lights-warehouse", 0.2, lambda q: asked.append(q) or False)
        assert refused[0].status == "warn" and "nothing was written" in refused[0].detail
        assert "level_pct" in asked[0] and "restore" in asked[0]
        assert float(plant.banks["lights-warehouse"].get("level_pct")) == before

        seen: list[float] = []

        async def watch() -> None:
            while True:
                seen.append(float(plant.banks["lights-warehouse"].get("level_pct")))
                await asyncio.sleep(0.05)

        w = asyncio.create_task(watch())
        checks = await shed_test(cfg, "lights-warehouse", 0.5, lambda q: True)
        w.cancel()
    finally:
        plant_task.cancel()
        await plant.stop()
    names = by_name(checks)
    assert [c.status for c in checks] == ["ok", "ok", "ok"], render(checks)
    assert min(seen) == 50.0  # the strategy's level, seen on the device
    assert float(plant.banks["lights-warehouse"].get("level_pct")) == before
    assert f"back to {before:g}" in names["test-shed.lights-warehouse.restore"].detail.replace(".0", "")
    s = Store(cfg.storage.resolved())
    assert s.journal_open() == []  # closed: nothing for the daemon to restore
    assert any("diagnose test-shed" in what for _ts, _e, _d, what in s.audit_log())
    s.close()
