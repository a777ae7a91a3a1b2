"""SIGHUP to `dr-agent run` mid-event: an invalid config is rejected and the old one keeps running;
a valid one (here a conf.d fragment) takes effect; the event goes on and its devices stay shed.

Observed as the provider would: over MQTT (reports, the retained status), plus
the simulators' registers for the devices and the agent's JSON log.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.config.model import SiteConfig
from agent.platform.clock import ScaledClock
from tests.conftest import Mosquitto, serve_plant, site_config, stop_run
from tests.helpers import Observer, agent_command, event_payload, write_config
from tests.integration.test_event_end_to_end import controllable_state

pytestmark = pytest.mark.e2e


def spacing(reports: list[dict[str, Any]]) -> float:
    """Median simulated seconds between consecutive live reports."""
    ts = [r["ts"] for r in reports]
    return statistics.median(b - a for a, b in itertools.pairwise(ts))


async def reports_after(obs: Observer, n: int, after: int, timeout: float = 10) -> list[dict[str, Any]]:
    async with asyncio.timeout(timeout):
        while len(obs.on("out/report")) < after + n:  # noqa: ASYNC110 (the observer records; we poll it)
            await asyncio.sleep(0.05)
    return obs.on("out/report")[after:]


async def reload_status(obs: Observer, result: str, seen: int) -> dict[str, Any]:
    """The next retained status announcing a reload with `result` (after `seen` such messages)."""
    async with asyncio.timeout(10):
        while True:
            hits = [b for b in obs.on("status") if (b.get("config") or {}).get("reload")]
            if len(hits) > seen:
                assert hits[seen]["config"]["reload"] == result, hits[seen]
                return hits[seen]
            await asyncio.sleep(0.05)


async def _start(path: Path, clock: ScaledClock, tmp_path: Path) -> tuple[asyncio.subprocess.Process, Path]:
    """`dr-agent run` on `path` and `clock`, its JSON log lines to tmp_path/agent.log."""
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *agent_command(path, clock.spec()), stdout=asyncio.subprocess.DEVNULL, stderr=log_file
        )
    return proc, log_path


def _log(log_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]


async def test_sighup_mid_event_rejects_invalid_and_applies_valid(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    cfg = site_config(mosquitto.port, tmp_path)
    path = write_config(cfg, tmp_path / "site.yaml")
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    tz = ZoneInfo(cfg.site.timezone)
    clock = ScaledClock(30.0, origin_sim=datetime(2026, 7, 1, 11, 0, tzinfo=tz).timestamp())
    plant, plant_task = await serve_plant(cfg, clock)
    before = controllable_state(plant)
    proc, log_path = await _start(path, clock, tmp_path)
    try:
        async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root) as obs:
            await obs.wait_online(20)
            await obs.publish("in/event", event_payload("hup-1", clock.now() + 60, 3600))
            await obs.wait_for(lambda t, b: t.endswith("/out/event/hup-1") and b["state"] == "active", 20)
            await obs.wait_for(lambda t, b: t.endswith("/out/report") and bool(b.get("active_steps")), 20)
            shed = {k for k, v in controllable_state(plant).items() if abs(v - before[k]) > 1e-6}
            assert shed, "the agent did not shed"
            old = await reports_after(obs, 4, len(obs.on("out/report")) - 1)
            assert spacing(old) == pytest.approx(10, abs=2)

            # 1. An invalid fragment: rejected, logged with its file:line, the old config runs on.
            (conf_d / "50-bad.yaml").write_text("control:\n  report_interval_s: -5\n")
            steps_before = obs.on("out/report")[-1]["active_steps"]
            n = len(obs.on("out/report"))
            proc.send_signal(signal.SIGHUP)
            rejected = await reload_status(obs, "rejected", 0)
            assert rejected["state"] == "online" and rejected["config"]["errors"] == 1
            kept = await reports_after(obs, 4, n)
            assert {r["event_id"] for r in kept} == {"hup-1"}
            assert all(r["active_steps"] for r in kept)
            assert set(steps_before) <= set(kept[0]["active_steps"])
            assert spacing(kept) == pytest.approx(10, abs=2)  # still the old interval
            still = controllable_state(plant)
            assert any(abs(still[k] - before[k]) > 1e-6 for k in shed), (
                "devices were restored by a rejected reload"
            )

            # 2. A valid fragment: applied, the event goes on, the new interval is in force.
            (conf_d / "50-bad.yaml").unlink()
            (conf_d / "50-reporting.yaml").write_text("control:\n  report_interval_s: 3\n")
            steps_before = obs.on("out/report")[-1]["active_steps"]
            proc.send_signal(signal.SIGHUP)
            applied = await reload_status(obs, "applied", 1)
            assert applied["config"]["digest"] != rejected["config"]["digest"]
            n = len(obs.on("out/report"))
            new = await reports_after(obs, 6, n + 1)
            assert {r["event_id"] for r in new} == {"hup-1"}
            assert all(r["active_steps"] for r in new)
            assert set(steps_before) <= set(new[0]["active_steps"])
            assert spacing(new) == pytest.approx(3, abs=1)
            still = controllable_state(plant)
            assert any(abs(still[k] - before[k]) > 1e-6 for k in shed), "devices were restored by the reload"
            states = [b["state"] for t, b in obs.under("out/event/hup-1")]
            assert "completed" not in states and "cancelled" not in states

            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(proc.wait(), 30)
    finally:
        await stop_run(proc, plant, plant_task)
    log = _log(log_path)
    assert rc == 0, log[-20:]
    msgs = [r["msg"] for r in log]
    rejected_line = next(m for m in msgs if "event=config_reload_rejected" in m)
    assert "50-bad.yaml:2:" in rejected_line and "report_interval_s" in rejected_line
    applied_line = next(m for m in msgs if "event=config_reloaded" in m)
    assert "changes=control" in applied_line


async def test_apply_config_keeps_busy_devices_and_restart_only_sections(tmp_path: Path) -> None:
    """In process, the rules Agent.reload applies (no broker or Modbus traffic needed)."""
    from agent.runtime.daemon import Agent
    from agent.runtime.reload import apply_config

    cfg = site_config(1883, tmp_path)
    agent = Agent(cfg, metrics=False)
    try:
        chiller, ev1, bms = agent.devices["chiller-1"], agent.devices["ev-1"], agent.transports["bms"]
        # chiller-1 is shed right now (an open revert-journal entry).
        await agent.store.journal_record("chiller-1", "setpoint_c", 24.0, 26.0, "e-1", "hvac/2:chiller-1")
        devices = [
            d.model_copy(update={"rated_kw": 130.0}) if d.name in ("chiller-1", "ev-1") else d
            for d in cfg.devices
            if d.name != "ev-4"
        ]
        new = cfg.model_copy(
            update={
                "devices": devices,
                "control": cfg.control.model_copy(update={"report_interval_s": 3.0}),
                "mqtt": cfg.mqtt.model_copy(update={"keepalive_s": 60}),
            }
        )
        res = await apply_config(agent, new)
        assert res.ok
        assert agent.devices["chiller-1"] is chiller  # busy: kept until restored
        assert res.deferred == ["chiller-1"]
        assert agent.devices["ev-1"] is not ev1 and agent.devices["ev-1"].config.rated_kw == 130.0
        assert "ev-4" not in agent.devices and "device -ev-4" in res.changes
        assert agent.transports["bms"] is bms  # unchanged endpoint: same connection
        assert agent.cfg.control.report_interval_s == 3.0 and "control" in res.changes
        assert res.restart_required == ["mqtt"] and agent.cfg.mqtt.keepalive_s == cfg.mqtt.keepalive_s
        assert agent.actuator.devices is agent.devices and agent.controller.devices is agent.devices

        await agent.store.journal_restored("chiller-1", "setpoint_c", "test")
        res = await apply_config(agent, new)
        assert res.deferred == [] and agent.devices["chiller-1"].config.rated_kw == 130.0
    finally:
        for t in agent.transports.values():
            await t.close()
        await agent.store.close()


def _rerated(cfg: SiteConfig, like: str) -> SiteConfig:
    """The site after a reload that changes storage: ev-1 rated 220 kW, ev-4 removed, and ten
    chargers ev-new-0..9 (100 kW) added, copied from `like`."""
    ev = next(d for d in cfg.devices if d.name == like)
    added = [ev.model_copy(update={"name": f"ev-new-{i}", "rated_kw": 100.0}) for i in range(10)]
    devices = [
        d.model_copy(update={"rated_kw": 220.0}) if d.name == "ev-1" else d
        for d in cfg.devices
        if d.name != "ev-4"
    ]
    return cfg.model_copy(update={"devices": [*devices, *added]})


async def test_a_reload_applies_new_deadbands_and_the_retention_plan_to_storage(tmp_path: Path) -> None:
    """In process, on the agent's own SQLite file: a rating changed, a device added and one
    removed by a reload are stored under the new deadbands at once, and the retention plan for
    the new number of devices is applied at the next flush, not an hour later."""
    import time

    from agent.runtime.daemon import Agent
    from agent.runtime.reload import apply_config
    from agent.settlement.history import DAY_S, plan_retention

    base = site_config(1883, tmp_path)
    cfg = base.model_copy(update={"storage": base.storage.model_copy(update={"max_mb": 64})})
    new = _rerated(cfg, like="ev-1")
    # The plan for 10 other devices keeps 15-minute means 50 days old; the one for 19 does not.
    assert plan_retention(cfg.storage, 10).quarter_days > 50 > plan_retention(cfg.storage, 19).quarter_days

    now = time.time()
    t0 = now // 60 * 60 - 600
    agent = Agent(cfg, metrics=False)
    db = agent.store.sync
    try:
        minute = int((now - 50 * DAY_S) // 60)
        db.add_batch([], [("chiller-1", minute, 900.0, 60, 14.0, 16.0)])

        def feed(names: list[str], start: float) -> None:
            # 0.5 kW of flicker: beyond 1 % of 22 kW, within 1 % of 100 and 220 kW.
            agent.pending.rows += [(n, start + t, 10.0 + 0.5 * (t % 2)) for t in range(60) for n in names]

        def raw(name: str) -> int:
            return int(db.db.execute("SELECT COUNT(*) FROM readings WHERE device=?", (name,)).fetchone()[0])

        feed(["ev-1", "ev-4"], t0)
        await agent.flush_once(now)
        assert raw("ev-1") == 60 and raw("ev-4") == 60
        assert db.quarter_means("chiller-1", 0, now) != [], "pruned under the plan for 10 devices"

        res = await apply_config(agent, new)
        assert res.ok and "device +ev-new-0" in res.changes and "device -ev-4" in res.changes
        feed(["ev-1", "ev-new-0"], t0 + 60)
        await agent.flush_once(now + 60)  # a minute later: the hourly prune is not due by itself
        assert raw("ev-1") == 60, "ev-1 still stored with its old 0.22 kW deadband"
        assert raw("ev-new-0") == 1, "the added device stored with the default 0.1 kW deadband"
        assert db.quarter_means("chiller-1", 0, now) == [], "the new retention plan was not applied"

        # The removed device's last minute still reaches the database; its rows age out.
        await agent.flush(final=True)
        assert db.db.execute("SELECT SUM(n) FROM readings_1m_others WHERE device='ev-4'").fetchone() == (60,)
        assert "ev-4" not in agent.buffer.deadband_kw
    finally:
        for t in agent.transports.values():
            await t.close()
        await agent.store.close()


def _rows(db: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """A query on the running agent's database, from a connection of the test's own."""
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return list(con.execute(sql, args))
    finally:
        con.close()


async def _db_until(db: Path, sql: str, *args: object, timeout: float = 30) -> None:
    """Until `sql` on the running agent's database gives a true first value."""
    async with asyncio.timeout(timeout):
        while not (_rows(db, sql, *args) or [(0,)])[0][0]:  # noqa: ASYNC110 (another process writes it)
            await asyncio.sleep(0.5)


async def test_sighup_that_adds_devices_replans_storage_at_the_next_flush(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """`dr-agent run` on a 64 MB budget: 15-minute means 50 days old fit the plan for the site's
    10 devices; a SIGHUP that adds 10 more, changes ev-1's rating and removes ev-4 applies the
    new deadbands and prunes under the new plan at the next flush (not an hour later); the
    added devices' readings are stored."""
    from agent.platform.store import Store
    from agent.settlement.history import DAY_S, plan_retention

    base = site_config(mosquitto.port, tmp_path)
    cfg = base.model_copy(update={"storage": base.storage.model_copy(update={"max_mb": 64})})
    assert plan_retention(cfg.storage, 10).quarter_days > 50 > plan_retention(cfg.storage, 19).quarter_days
    path = write_config(cfg, tmp_path / "site.yaml")
    tz = ZoneInfo(cfg.site.timezone)
    clock = ScaledClock(30.0, origin_sim=datetime(2026, 7, 1, 11, 0, tzinfo=tz).timestamp())
    db = Path(cfg.storage.path)
    seeded = Store(db)
    seeded.add_batch([], [("chiller-1", int((clock.now() - 50 * DAY_S) // 60), 900.0, 60, 14.0, 16.0)])
    seeded.close()
    old_quarters = "SELECT COUNT(*) FROM readings_15m WHERE device='chiller-1' AND quarter < ?"
    cutoff = int((clock.now() - 40 * DAY_S) // 900)
    plant, plant_task = await serve_plant(cfg, clock)
    proc, log_path = await _start(path, clock, tmp_path)
    try:
        async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root) as obs:
            await obs.wait_online(20)
            # The first flush (every 10 s), which also prunes.
            await _db_until(db, "SELECT COUNT(*) FROM readings WHERE device='ev-1'")
            await asyncio.sleep(1)
            assert _rows(db, old_quarters, cutoff) == [(1,)], "pruned under the plan for 10 devices"

            write_config(_rerated(cfg, like="ev-2"), path)
            proc.send_signal(signal.SIGHUP)
            await reload_status(obs, "applied", 0)
            # The next flush, minutes of simulated time later (the hourly prune is not due).
            await _db_until(db, old_quarters.replace("COUNT(*)", "COUNT(*) = 0"), cutoff)
            await _db_until(db, "SELECT COUNT(*) FROM readings WHERE device='ev-new-9'")
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(proc.wait(), 30)
    finally:
        await stop_run(proc, plant, plant_task)
    log = _log(log_path)
    assert rc == 0, log[-20:]
    changed = next(r["msg"] for r in log if "event=storage_deadbands_changed" in r["msg"])
    assert "ev-1," in changed and "ev-4," in changed and "ev-new-0" in changed
    # Pruned by the re-planned retention, well inside the hour the prune otherwise waits.
    reloaded = next(r["ts"] for r in log if "event=config_reloaded" in r["msg"])
    pruned = [r for r in log if "event=history_pruned" in r["msg"] and r["ts"] >= reloaded]
    assert pruned, [r["msg"] for r in log if "prune" in r["msg"]]
