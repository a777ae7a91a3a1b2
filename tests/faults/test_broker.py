"""The broker killed (SIGKILL) and restarted under a running `dr-agent` process.

Before an event starts, in the middle of one, and down for hours of injected
time: the event runs on its own clock, devices are shed and restored on time,
and once the broker is back every state, live report and the settlement
arrive, in order, none missing; the agent reconnects by itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config.model import SiteConfig
from tests.conftest import Mosquitto
from tests.faults.conftest import AgentProcess, kill_broker, observer, online, open_site, session_saved

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("when", ["before-start", "mid-event"])
async def test_broker_killed_and_restarted(broker: Mosquitto, tmp_path: Path, when: str) -> None:
    duration = 240.0
    async with open_site(broker, tmp_path) as site, observer(site) as obs:
        agent = AgentProcess(site)
        try:
            await agent.start()
            await online(obs)
            await session_saved(obs)
            lead = 60.0 if when == "mid-event" else 90.0
            start = await site.send_event(obs, "bk-1", lead, duration)
            if when == "mid-event":
                await site.wait_state(obs, "bk-1", "active")
                shed = await site.wait_shed(2)
            kill_broker(broker)
            down_at = site.clock.now()
            # Down across the start (or for a minute of shedding): the event goes on without a broker.
            await site.sleep(max(60.0, start + 30 - down_at))
            shed = await site.wait_shed(2)
            broker.start()
            up_at = site.clock.now()
            await site.settled(obs, "bk-1", 60)
            await site.wait_restored()
            assert agent.proc.returncode is None, "the agent died with the broker"
            assert await agent.stop() == 0
        finally:
            await agent.close()
        assert up_at - down_at >= 60
        assert shed
        seqs = site.check(obs, {"bk-1": (start, duration)})
        # Reports made while the broker was down were queued and delivered, not dropped.
        made_while_down = [
            b["seq"] for b in obs.on("out/report") if down_at <= b["ts"] < up_at and b.get("event_id") == "bk-1"
        ]
        assert made_while_down and set(made_while_down) <= set(seqs)
        states = [b["state"] for t, b in obs.messages if t.endswith("/out/event/bk-1")]
        assert "active" in states and states.index("active") < states.index("completed"), states


def _hours_site(cfg: SiteConfig) -> SiteConfig:
    """A slower cadence in simulated seconds, so hours of injected time fit in seconds of wall time."""
    modbus = cfg.modbus.model_copy(update={"poll_interval_s": 5})
    control = cfg.control.model_copy(
        update={"period_s": 5, "report_interval_s": 60, "meter_stale_s": 60, "settle_s": 30}
    )
    return cfg.model_copy(update={"modbus": modbus, "control": control})


async def test_broker_down_for_hours_of_injected_time(broker: Mosquitto, tmp_path: Path) -> None:
    """Three hours without a broker, an entire event inside them: nothing lost, nothing overflows."""
    speed = 600.0
    duration = 1800.0
    async with open_site(broker, tmp_path, speed=speed, tweak=_hours_site) as site, observer(site) as obs:
        agent = AgentProcess(site)
        try:
            await agent.start()
            await online(obs)
            await session_saved(obs)
            start = await site.send_event(obs, "hours-1", 600, duration, recovery_s=300)
            kill_broker(broker)
            down_at = site.clock.now()
            await site.sleep(start + 120 - down_at)
            shed = await site.wait_shed(2, sim_timeout_s=300)
            await site.sleep(down_at + 3 * 3600 - site.clock.now())
            # The event ended and settled inside the outage; the devices came back without a broker.
            assert not site.shed(), site.shed()
            broker.start()
            up_at = site.clock.now()
            await site.settled(obs, "hours-1", 60)
            assert agent.proc.returncode is None, "the agent died during the outage"
            assert await agent.stop() == 0
        finally:
            await agent.close()
        assert up_at - down_at >= 3 * 3600
        assert shed
        seqs = site.check(obs, {"hours-1": (start, duration)})
        assert len(seqs) >= duration / 60 - 2, f"{len(seqs)} reports for a {duration:g} s event"
        text = agent.log_text()
        assert "Traceback" not in text and "OverflowError" not in text
