"""A rehearsal with the real daemon: `dr-agent sim` serves the site, `dr-agent run` runs against it.

`dr-agent sim` is started as a process on the demo site (time compressed 60x,
the simulated day at 10:30); the `dr-agent run` command it prints is run
as printed against a real Mosquitto; an event is sent over MQTT. A device
is read back over Modbus while the event is active (its shed value) and after
the end (its original value), and the settlement arrives on MQTT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import yaml

from agent.config.load import load_site_config
from agent.platform.clock import ScaledClock
from agent.runtime.daemon import build_devices
from tests.conftest import Mosquitto
from tests.helpers import Observer, dr_agent, event_payload

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SITE = REPO / "config" / "demo-site.yaml"


def open_log(path: Path) -> BinaryIO:
    return path.open("wb")


async def read_level(cfg: Any, device: str, role: str) -> float | None:
    """One read-only poll of a device over Modbus TCP, as a technician's tool would."""
    transports, devices = build_devices(cfg)
    dev = devices[device]
    dev.read_only = True
    try:
        if not await dev.poll():
            return None
        value = dev.reading(role)
        return None if value is None else float(value)
    finally:
        for t in transports.values():
            await t.close()


async def wait_level(cfg: Any, device: str, role: str, want: float, timeout: float) -> float | None:
    """Poll until the device reads `want` (or the time is up); the last value read."""
    seen = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                seen = await read_level(cfg, device, role)
                if seen is not None and abs(seen - want) < 1e-6:
                    return seen
                await asyncio.sleep(0.2)
    return seen


@pytest.mark.timeout(600)  # limits for a loaded machine; it takes about 30 s
async def test_rehearse_an_event_against_the_simulated_site(mosquitto: Mosquitto, tmp_path: Path) -> None:
    overlay = tmp_path / "rehearsal.yaml"
    sim = await asyncio.create_subprocess_exec(
        *dr_agent(),
        "sim",
        "-c",
        str(SITE),
        "--overlay",
        str(overlay),
        "--mqtt",
        f"127.0.0.1:{mosquitto.port}",
        "--speed",
        "60",
        "--at",
        "10:30",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    agent: asyncio.subprocess.Process | None = None
    log = open_log(tmp_path / "agent.log")  # a file, not a pipe: a full pipe would stall the agent
    banner: list[str] = []
    try:
        assert sim.stdout is not None
        # The banner ends with the command to run; take it as printed.
        async with asyncio.timeout(30):
            while not (banner and banner[-1].startswith("  dr-agent run -c")):
                line = (await sim.stdout.readline()).decode()
                assert line, f"dr-agent sim exited early: {banner}"
                banner.append(line.rstrip("\n"))
        command = shlex.split(banner[-1])
        assert command[:4] == ["dr-agent", "run", "-c", str(overlay)] and command[4] == "--clock"
        assert any("site-meter (unit 1, meter)" in line for line in banner), banner
        clock = ScaledClock.from_spec(command[5])

        cfg, _ = load_site_config(overlay)
        assert cfg.mqtt.port == mosquitto.port and cfg.storage.path == str(tmp_path / "rehearsal.sqlite")
        original = await read_level(cfg, "lights-warehouse", "level_pct")
        assert original == 100.0

        agent = await asyncio.create_subprocess_exec(*dr_agent(), *command[1:], stdout=log, stderr=log)
        async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root) as obs:
            await obs.wait_online(60)
            start = clock.now() + 180  # 3 simulated minutes of meter history for the baseline
            await obs.publish("in/event", event_payload("rehearsal-1", start, 300, cfg.site.timezone))
            resp = await obs.wait_for(lambda t, b: t.endswith("/out/response"), 30)
            assert resp["opt"] == "in", resp
            await obs.wait_for(
                lambda t, b: t.endswith("/out/event/rehearsal-1") and b["state"] == "active", 60
            )

            # Shed: the strategy's first step dims the warehouse to 50 %, read back over Modbus.
            assert await wait_level(cfg, "lights-warehouse", "level_pct", 50.0, 60) == 50.0

            settlement = await obs.wait_for(lambda t, b: t.endswith("/out/settlement/rehearsal-1"), 180)
            assert settlement["event_id"] == "rehearsal-1" and settlement["actuations"] > 0, settlement
            assert settlement["verified_reduction_kw"] > 0, settlement  # (band keeping: tests/integration)

            # Restored: back at exactly the value it had.
            assert await wait_level(cfg, "lights-warehouse", "level_pct", original, 60) == original
    finally:
        # Never leave a process behind: one that does not stop on SIGTERM is killed (and the test fails).
        if agent is not None:
            if agent.returncode is None:
                agent.terminate()
            try:
                await asyncio.wait_for(agent.wait(), 60)
            except TimeoutError:
                agent.kill()
                await agent.wait()
        log.close()
        if sim.returncode is None:
            sim.terminate()
        try:
            out, err = await asyncio.wait_for(sim.communicate(), 60)
        except TimeoutError:
            sim.kill()
            out, err = await sim.communicate()
        print("agent log (tail):", (tmp_path / "agent.log").read_text()[-4000:])  # shown if the test fails
    assert agent is not None and agent.returncode == 0, (tmp_path / "agent.log").read_text()[-3000:]
    assert sim.returncode == 0, err.decode()
    # The simulator printed what the agent did to the plant: the shed and the restore.
    printed = out.decode()
    assert (
        "write lights-warehouse level_pct = 50" in printed
        and "write lights-warehouse level_pct = 100" in printed
    )
    assert "dr-agent sim: stopped" in printed


async def test_an_overlay_beside_a_conf_d_is_refused(tmp_path: Path) -> None:
    # The loader merges <dir>/conf.d over a config: a fragment there could point the rehearsal at
    # the real broker, so sim will not write its config into such a folder.
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "50-broker.yaml").write_text("mqtt: {host: broker.example.cn}\n")
    proc = await asyncio.create_subprocess_exec(
        *dr_agent(),
        "sim",
        "-c",
        str(SITE),
        "--overlay",
        str(tmp_path / "config.yaml"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "conf.d would be merged over the rehearsal config" in err.decode() and out == b""
    assert not (tmp_path / "config.yaml").exists()


def test_rehearsal_config_of_a_site_with_strategy_files_loads_anywhere(tmp_path: Path) -> None:
    from agent.cli.cmd_sim import rehearsal_config

    site = REPO / "strategies" / "examples" / "office.yaml"
    cfg, _ = load_site_config(site)
    ports = {ep.name: 20000 + i for i, ep in enumerate(cfg.modbus.endpoints)}
    data = rehearsal_config(site, ports, host="127.0.0.1", db=tmp_path / "r.sqlite", mqtt=("127.0.0.1", 1884))
    path = tmp_path / "elsewhere" / "r.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    rcfg, _ = load_site_config(path)
    assert [s.name for s in rcfg.strategies] == [s.name for s in cfg.strategies]
    assert {(e.protocol, e.host, e.port) for e in rcfg.modbus.endpoints} == {
        ("tcp", "127.0.0.1", p) for p in ports.values()
    }
    assert (rcfg.mqtt.host, rcfg.mqtt.port, rcfg.mqtt.tls) == ("127.0.0.1", 1884, None)
    assert rcfg.storage.path == str(tmp_path / "r.sqlite") and rcfg.metrics.port == 0
    # Everything else is the site's own.
    assert rcfg.contract == cfg.contract and rcfg.control == cfg.control and rcfg.devices == cfg.devices


@pytest.mark.parametrize(
    ("now", "at", "expected", "note"),
    [
        ("11:20", None, "11:20", ""),
        ("23:31", None, "09:40", "20 min before the contract's allowed hours 10:00-15:00 (now, 23:31"),
        ("23:31", "14:00", "14:00", ""),
    ],
)
def test_where_the_simulated_day_starts(now: str, at: str | None, expected: str, note: str) -> None:
    from datetime import date, datetime, time
    from zoneinfo import ZoneInfo

    from agent.cli.cmd_sim import sim_origin

    cfg, _ = load_site_config(SITE)
    tz = ZoneInfo(cfg.site.timezone)
    origin, said = sim_origin(cfg, at, datetime.combine(date(2026, 7, 1), time.fromisoformat(now), tz))
    assert f"{origin:%H:%M}" == expected and origin.date() == date(2026, 7, 1)
    assert (note in said) if note else said == ""


def sim_args(overlay: Path, site: Path = SITE) -> argparse.Namespace:
    return argparse.Namespace(
        config=str(site),
        overlay=str(overlay),
        host="127.0.0.1",
        port=0,
        mqtt="127.0.0.1:1883",
        keep_mqtt=False,
        at=None,
        speed=1.0,
        seed=1,
    )


def test_sim_never_overwrites_a_config_or_the_site_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.cli.cmd_sim import HEADER, prepare

    # The site's own config as the overlay: refused, untouched.
    site = tmp_path / "site.yaml"
    site.write_text(SITE.read_text())
    with pytest.raises(SystemExit, match="exists and is not a rehearsal config"):
        prepare(sim_args(site, site))
    assert site.read_text() == SITE.read_text()
    # A database that would be the site's: refused.
    monkeypatch.setenv("DR_AGENT_STATE_DIR", str(tmp_path))
    cfg, _ = load_site_config(site)
    clash = tmp_path / Path(cfg.storage.path).with_suffix(".yaml").name
    with pytest.raises(SystemExit, match="would be the site's own"):
        prepare(sim_args(clash, site))
    # An earlier rehearsal config is replaced.
    earlier = tmp_path / "rehearsal.yaml"
    earlier.write_text(f"{HEADER} an earlier run\n")
    assert prepare(sim_args(earlier, site)).overlay == earlier
