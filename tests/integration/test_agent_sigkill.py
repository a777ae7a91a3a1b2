"""SIGKILL to `dr-agent run` mid-event, then start it again: it resumes the event (devices stay shed,
the event ends on time) or, if the event ended meanwhile, restores the devices; the settlement is
published either way."""

from __future__ import annotations

import asyncio
import signal
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.platform.clock import ScaledClock
from agent.platform.store import Store
from tests.conftest import Mosquitto, serve_plant, site_config
from tests.helpers import agent_command, event_payload, write_config
from tests.integration.test_broker_outage import SessionObserver, quick_restore
from tests.integration.test_event_end_to_end import controllable_state

pytestmark = pytest.mark.integration

SPEED = 40.0


async def _spawn(path: Path, clock: ScaledClock, log: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *agent_command(path, clock.spec()), stdout=asyncio.subprocess.DEVNULL, stderr=log.open("ab")
    )


async def _shed(plant: object, before: dict[tuple[str, str], float], n: int) -> set[tuple[str, str]]:
    for _ in range(150):
        shed = {k for k, v in controllable_state(plant).items() if abs(v - before[k]) > 1e-6}
        if len(shed) >= n:
            return shed
        await asyncio.sleep(0.05)
    raise AssertionError("the agent did not shed")


@pytest.mark.parametrize("event_ends_while_dead", [False, True], ids=["resume", "ended-while-dead"])
async def test_sigkill_mid_event_then_restart(
    mosquitto: Mosquitto, tmp_path: Path, event_ends_while_dead: bool
) -> None:
    cfg = quick_restore(site_config(mosquitto.port, tmp_path))
    path = write_config(cfg, tmp_path / "site.yaml")
    log = tmp_path / "agent.log"
    tz = ZoneInfo(cfg.site.timezone)
    clock = ScaledClock(SPEED, origin_sim=datetime(2026, 7, 1, 11, 0, tzinfo=tz).timestamp())
    plant, plant_task = await serve_plant(cfg, clock)
    before = controllable_state(plant)
    duration = 240.0
    procs: list[asyncio.subprocess.Process] = []
    try:
        async with SessionObserver(mosquitto.host, mosquitto.port, cfg.topic_root, "sigkill-observer") as obs:
            procs.append(await _spawn(path, clock, log))
            await obs.wait_for(lambda t, b: t.endswith("/status") and b.get("state") == "online", 20)
            start = clock.now() + 60
            await obs.publish("in/event", event_payload("kill-1", start, duration, recovery_s=30))
            await obs.wait_for(lambda t, b: t.endswith("/out/event/kill-1") and b["state"] == "active", 20)
            shed = await _shed(plant, before, 2)

            procs[0].send_signal(signal.SIGKILL)
            assert await asyncio.wait_for(procs[0].wait(), 10) == -signal.SIGKILL
            killed_at = clock.now()
            if event_ends_while_dead:
                await asyncio.sleep((start + duration - clock.now()) / SPEED + 0.3)
            else:
                await asyncio.sleep(20 / SPEED)
            # Dead agent: devices hold what it wrote (one with a device-side failsafe, like a
            # charger's watchdog, may fall back on its own; nothing else moves them).
            during = controllable_state(plant)
            assert any(abs(during[k] - before[k]) > 1e-6 for k in shed), (
                "every device moved while the agent was dead"
            )

            n_active = len(
                [b for t, b in obs.messages if t.endswith("/out/event/kill-1") and b["state"] == "active"]
            )
            procs.append(await _spawn(path, clock, log))
            restarted_at = clock.now()
            if not event_ends_while_dead:
                # Resumed: the state is re-published active, and the shed devices were never let go.
                await obs.wait_for(
                    lambda t, b: (
                        t.endswith("/out/event/kill-1")
                        and b["state"] == "active"
                        and len([1 for t2, b2 in obs.messages if t2 == t and b2["state"] == "active"])
                        > n_active
                    ),
                    20,
                )
                now_state = controllable_state(plant)
                assert any(abs(now_state[k] - before[k]) > 1e-6 for k in shed), "resume restored the devices"
            settlement = await obs.wait_for(lambda t, b: t.endswith("/out/settlement/kill-1"), 25)
            await obs.wait_for(lambda t, b: t.endswith("/out/event/kill-1") and b["state"] == "completed", 5)
    finally:
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(p.wait(), 15)
                except TimeoutError:
                    p.kill()
                    await p.wait()
        plant_task.cancel()
        await plant.stop()

    text = log.read_text()
    assert killed_at < start + duration
    assert settlement["end"] == pytest.approx(start + duration), "the event was not settled on its own window"
    assert settlement["state"] == "completed"
    if event_ends_while_dead:
        assert restarted_at > start + duration
        assert "crash_recovery" in text and "event=resumed" not in text
    else:
        assert settlement["resumed_after_restart"] is True
        assert "event=resumed" in text
        # Nothing was put back at start-up: the resumed event kept its shed steps (the journal says so).
        assert "restart: restoring" not in text
    after = controllable_state(plant)
    for key in shed:
        assert after[key] == pytest.approx(before[key]), f"{key} left at {after[key]}, was {before[key]}"
    store = Store(tmp_path / "agent.sqlite")
    try:
        assert store.journal_open() == []
        assert store.settlement("kill-1") is not None
    finally:
        store.close()
