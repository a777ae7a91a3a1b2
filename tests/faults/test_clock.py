"""Time going wrong: the agent's clock stepped by 10 minutes mid-event, and a DST change inside an event.

An event's start and end are absolute instants. When the agent's clock is
stepped (NTP correcting a drifted RTC) the event ends when the agent's clock
reaches its end, not 10 minutes of shedding later or earlier than that, and
its settlement covers exactly [start, start + duration]. Across a
daylight-saving change the same holds: an event from 01:58 CET lasts its
duration in seconds and ends at 03:03 CEST; in autumn the repeated hour is
neither skipped nor run twice. The simulators keep true time throughout:
only the agent's clock is stepped.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.config.model import SiteConfig
from agent.platform.clock import ScaledClock
from tests.conftest import Mosquitto
from tests.faults.conftest import agent_in_process, observer, open_site

SPEED = 60.0


class SteppedClock:
    """The site's scaled clock plus an offset a test can step, like `date -s` under a running agent."""

    def __init__(self, base: ScaledClock) -> None:
        self.base = base
        self.speed = base.speed
        self.offset = 0.0

    def now(self) -> float:
        return self.base.now() + self.offset

    async def sleep(self, seconds: float) -> None:
        await self.base.sleep(seconds)

    def step(self, seconds: float) -> None:
        self.offset += seconds


@pytest.mark.parametrize("step_s", [600.0, -600.0], ids=["forward", "back"])
async def test_clock_stepped_mid_event(broker: Mosquitto, tmp_path: Path, step_s: float) -> None:
    duration = 240.0
    async with open_site(broker, tmp_path, speed=SPEED) as site, observer(site) as obs:
        clock = SteppedClock(site.clock)
        async with agent_in_process(site, clock) as agent:
            await obs.wait_online()
            start = await site.send_event(obs, "ck-1", 60, duration)
            await site.wait_state(obs, "ck-1", "active")
            await site.wait_shed(3)
            await site.sleep(60)
            clock.step(step_s)
            if step_s > 0:
                # Past the end at once on the agent's clock: it ends now, restores and settles.
                await site.wait_state(obs, "ck-1", "completed", 20)
            else:
                # Ten more minutes of the event on the agent's clock: it goes on shedding.
                await site.sleep(120)
                rec = agent.events["ck-1"]
                assert rec.state == "active" and rec.control is not None and rec.control.phase == "shedding"
                assert site.shed(), "released on a clock step"
            settlement = await site.settled(obs, "ck-1", 60)
            await site.wait_restored()
            completed = await site.wait_state(obs, "ck-1", "completed")
        # Ended when the agent's clock reached the event's end (within a few control periods):
        # at once after a step past it, ten minutes late in true time after a step back.
        agent_end, true_end = completed["ts"], completed["ts"] - clock.offset
        assert agent_end >= start + duration
        if step_s > 0:
            assert true_end < start + duration - 60, true_end - start  # not shed on to the true end
        else:
            assert agent_end < start + duration + 30, agent_end - start
        assert settlement["end"] - settlement["start"] == pytest.approx(duration)
        # The settlement is made from the event's own window, whatever the clock did.
        site.check(obs, {"ck-1": (start, duration)})


def _berlin(cfg: SiteConfig) -> SiteConfig:
    """The demo site in Berlin, events allowed at any hour (DST changes at 02:00/03:00 local)."""
    return cfg.model_copy(
        update={
            "site": cfg.site.model_copy(update={"timezone": "Europe/Berlin"}),
            "contract": cfg.contract.model_copy(update={"allowed_hours": None}),
        }
    )


@pytest.mark.parametrize(
    "change",
    [datetime(2026, 3, 29, 1, 0), datetime(2026, 10, 25, 1, 0)],
    ids=["spring-forward", "fall-back"],
)
async def test_dst_change_inside_an_event(broker: Mosquitto, tmp_path: Path, change: datetime) -> None:
    utc = ZoneInfo("UTC")
    berlin = ZoneInfo("Europe/Berlin")
    at = change.replace(tzinfo=utc).timestamp()  # 01:00 UTC: the change in Berlin
    duration = 300.0
    origin = datetime.fromtimestamp(at - 180, berlin)
    async with (
        open_site(broker, tmp_path, speed=SPEED, origin=origin, tweak=_berlin) as site,
        observer(site) as obs,
        agent_in_process(site),
    ):
        await obs.wait_online()
        start = await site.send_event(obs, "dst-1", 60, duration)
        assert start < at < start + duration, "the change is not inside the event"
        offsets = {
            datetime.fromtimestamp(start, berlin).utcoffset(),
            datetime.fromtimestamp(start + duration, berlin).utcoffset(),
        }
        assert len(offsets) == 2, "start and end are not on two sides of the change"
        await site.wait_state(obs, "dst-1", "active")
        await site.wait_shed(2)
        settlement = await site.settled(obs, "dst-1", 60)
        await site.wait_restored()
        completed = await site.wait_state(obs, "dst-1", "completed")
    assert start + duration <= completed["ts"] < start + duration + 30
    assert settlement["end"] - settlement["start"] == pytest.approx(duration)
    site.check(obs, {"dst-1": (start, duration)})


async def test_device_backoff_survives_the_clock_stepped_back() -> None:
    """An unavailable device's retry is scheduled on the agent's clock; stepped back 10 min, it is
    retried at once, not 10 minutes later (a meter would stay unknown that long)."""
    from drivers.modbus import ModbusTransport
    from drivers.profile import load_profile
    from drivers.registry import kinds
    from drivers.sim.server import free_port

    now = [1_800_000_000.0]
    k = kinds()["meter"]
    transport = ModbusTransport("gone", host="127.0.0.1", port=free_port(), timeout_s=0.2)
    cfg = k.config(name="m", kind="meter", endpoint="gone", unit_id=1, profile="eastron_sdm630")
    dev = k.device(cfg, transport, load_profile("eastron_sdm630"))
    dev.clock = lambda: now[0]
    try:
        for _ in range(4):
            assert not await dev.poll()
            now[0] = max(now[0], dev.health.next_poll_at)
        assert not dev.health.available
        assert not dev.due(now[0] - 0.5) or dev.health.next_poll_at <= now[0] - 0.5
        now[0] -= 600.0  # the clock stepped back
        assert dev.due(), "a step back postponed the retry by the step"
    finally:
        await transport.close()
