"""No shed that cannot be undone, and the operator's way to close a row that could not be.

The demo site's simulated plant over real Modbus TCP, a real SQLite journal
and the real `dr-agent` process for the commands:
- an Intesis DK-AC whose DIP switch is at degC x1 (24 degC reads 2.4): the
  agent refuses to shed it, diagnose shows ✘ with the scale hint, and no
  journal row is left open;
- a row whose restore the device refuses shows ✘ in diagnose and status, and
  `dr-agent restore` closes it by writing (read back over Modbus) or, with
  --fixed-by-hand, without writing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.cli.diagnose import check_modbus, shed_test
from agent.config.model import SiteConfig
from agent.platform.store import Store
from drivers.sim.plant import SimEndpoint, SimulatedPlant
from tests.conftest import REPO, site_config
from tests.helpers import dr_agent, write_config

pytestmark = pytest.mark.integration

AC = "ahu-office"  # intesis_dk_ac in the demo site


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[SiteConfig, SimulatedPlant, Path]]:
    """The demo site's devices served over Modbus TCP, frozen (no physics), and its config on disk."""
    cfg = site_config(1, tmp_path)  # no broker needed: nothing here talks MQTT
    plant = SimulatedPlant.build(cfg.devices, peak_kw=cfg.contract.peak_kw, meter_name=cfg.site.meter, seed=1)
    await plant.serve([SimEndpoint(e.name, e.host or "127.0.0.1", e.port) for e in cfg.modbus.endpoints])
    Store(cfg.storage.resolved()).close()  # the database exists, as after the agent's first start
    path = write_config(cfg, tmp_path / "config.yaml")
    try:
        yield cfg, plant, path
    finally:
        await plant.stop()


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [*dr_agent(), *args], capture_output=True, text=True, timeout=120, cwd=REPO
    )


def open_rows(cfg: SiteConfig) -> list[object]:
    s = Store(cfg.storage.resolved())
    try:
        return list(s.journal_open())
    finally:
        s.close()


async def test_dk_ac_at_degc_x1_is_never_shed(site: tuple[SiteConfig, SimulatedPlant, Path]) -> None:
    cfg, plant, _ = site
    bank = plant.banks[AC]
    bank.set_raw("setpoint", 24)  # 24 degC at degC x1; the profile expects x10
    bank.set_raw("room_temperature", 24)

    checks = await shed_test(cfg, AC, 0.1, lambda _q: True, timeout_s=1.0)
    assert [c.status for c in checks] == ["fail"], checks
    assert "refusing to shed" in checks[0].detail and "outside plausible range" in checks[0].detail
    assert "DIP switch / register 7" in checks[0].hint
    assert bank.get_raw("setpoint") == 24  # nothing was written
    assert open_rows(cfg) == []

    by_name = {c.name: c for c in await check_modbus(cfg, [], None, 1.0)}
    c = by_name[f"device.{AC}"]
    assert c.status == "fail", c
    assert "rejected" in c.detail and "setpoint" in c.detail
    assert "check the unit's scale: DIP switch / register 7" in c.hint


async def test_unrestorable_row_is_surfaced_and_closed_by_the_operator(
    site: tuple[SiteConfig, SimulatedPlant, Path],
) -> None:
    cfg, plant, path = site
    bank = plant.banks[AC]
    bank.set("setpoint", 26.0)  # shed to 26 by an event...
    s = Store(cfg.storage.resolved())
    # ...whose original (2.4, read at a wrong scale before ranges existed) the profile refuses to write back.
    s.journal_record(AC, "setpoint_c", 2.4, 26.0, "ev-old", "hvac/ahu-office")
    s.close()

    by_name = {c.name: c for c in await check_modbus(cfg, open_rows(cfg), None, 1.0)}  # type: ignore[arg-type]
    c = by_name[f"device.{AC}"]
    assert c.status == "fail" and "NOT restored" in c.detail, c
    assert f"dr-agent restore -c CONFIG --device {AC}" in c.hint

    st = await cli("status", "-c", str(path), "--json")
    body = json.loads(st.stdout)
    assert [(r["device"], r["event_id"]) for r in body["unrestored"]] == [(AC, "ev-old")]
    st = await cli("status", "-c", str(path))
    assert f"NOT restored: {AC} setpoint_c 2.4 -> 26.0" in st.stdout

    # Writing 2.4 back is refused by the device's range: the row stays open, nothing written.
    r = await cli("restore", "-c", str(path), "--device", AC, "--yes")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "failed" in r.stderr and "--fixed-by-hand" in r.stderr
    assert bank.get("setpoint") == pytest.approx(26.0)
    assert len(open_rows(cfg)) == 1

    # Without a terminal and without --yes nothing happens.
    r = await cli("restore", "-c", str(path), "--device", AC, "--fixed-by-hand")
    assert r.returncode == 1 and len(open_rows(cfg)) == 1
    assert "refusing to act without a terminal to confirm on; pass --yes" in r.stderr

    r = await cli("restore", "-c", str(path), "--device", AC, "--fixed-by-hand", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert open_rows(cfg) == []
    assert bank.get("setpoint") == pytest.approx(26.0)  # fixed by hand: the command wrote nothing


async def test_restore_command_writes_the_exact_original_back(
    site: tuple[SiteConfig, SimulatedPlant, Path],
) -> None:
    cfg, plant, path = site
    bank = plant.banks[AC]
    bank.set_raw("setpoint", 215)  # 21.5 degC before the shed
    s = Store(cfg.storage.resolved())
    s.journal_record(
        AC, "setpoint_c", 21.5, 24.0, "ev-crash", "hvac/ahu-office", json.dumps({"setpoint": [215]})
    )
    s.close()
    bank.set_raw("setpoint", 240)  # the shed value, left behind by a crash

    r = await cli("restore", "-c", str(path), "--device", AC, "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "back to 21.5 (read back); row closed" in r.stdout
    assert bank.get_raw("setpoint") == 215
    assert open_rows(cfg) == []
    r = await cli("restore", "-c", str(path), "--device", AC, "--yes")
    assert r.returncode == 0 and "nothing to restore" in r.stdout


async def test_silent_unit_on_a_connected_endpoint_gets_the_unit_hint(
    site: tuple[SiteConfig, SimulatedPlant, Path],
) -> None:
    cfg, plant, _ = site
    plant.banks["ev-2"].offline = True  # the gateway answers; unit 2 behind it does not
    by_name = {c.name: c for c in await check_modbus(cfg, [], None, 1.0)}
    assert by_name["modbus.carpark"].status == "ok"
    c = by_name["device.ev-2"]
    assert c.status == "fail" and "no response within" in c.detail
    assert c.hint.startswith("unit 2 not answering: check unit id/wiring"), c.hint


async def test_test_shed_writes_only_the_shed_point(site: tuple[SiteConfig, SimulatedPlant, Path]) -> None:
    cfg, plant, _ = site
    bank = plant.banks["ev-1"]  # vestel_evc04; the site config sets a failsafe current for start-up
    bank.set("failsafe_current_a", 13.0)
    bank.set("current_limit_a", 32.0)
    writes: list[str] = []
    inner = bank.on_write

    def spy(key: str, value: object) -> None:
        writes.append(key)
        if inner:
            inner(key, value)  # type: ignore[arg-type]

    bank.on_write = spy
    checks = await shed_test(cfg, "ev-1", 0.1, lambda _q: True, timeout_s=1.0)
    assert [c.status for c in checks] == ["ok", "ok", "ok"], checks
    assert set(writes) == {"current_limit_a"}, writes
    assert bank.get("failsafe_current_a") == pytest.approx(13.0)
    assert bank.get("current_limit_a") == pytest.approx(32.0)
    assert open_rows(cfg) == []
