"""Mosquitto stopped for 60 s (event time) in the middle of an event: the event runs on and ends on
time, devices are restored, and every live report and the settlement arrive after the broker is back,
in order, none missing (QoS 1 may duplicate: dedupe by seq)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt
import pytest

from agent.config.model import SiteConfig
from agent.platform.clock import ScaledClock
from agent.runtime.daemon import Agent
from drivers.sim.server import free_port
from tests.conftest import Mosquitto, _spawn_mosquitto, serve_plant, site_config
from tests.helpers import Observer, event_payload
from tests.integration.test_event_end_to_end import controllable_state

# On uvloop too (the speed extra): the reconnects go through the loop's own socket handling.
pytestmark = [pytest.mark.integration, pytest.mark.each_loop]


def quick_restore(cfg: SiteConfig) -> SiteConfig:
    """The demo site with a brisk restore after the end, so a test waits seconds, not a recovery window."""
    fast = {
        "step_interval_s": 2.0,
        "rebound_cap_factor": 2.0,  # never binds (None would not survive a YAML round trip)
        "hvac_release_step_c": 0.0,
        "continuous_ramp_s": 0.0,
    }
    strategies = []
    for st in cfg.strategies:
        fields = type(st.restore).model_fields
        strategies.append(
            st.model_copy(
                update={
                    "restore": st.restore.model_copy(update={k: v for k, v in fast.items() if k in fields})
                }
            )
        )
    control = cfg.control.model_copy(update={"report_interval_s": 10})
    return cfg.model_copy(update={"strategies": strategies, "control": control})


def persistent_broker(tmp: Path, extra: str = "") -> Mosquitto:
    """A Mosquitto that keeps sessions across a restart (persistence on), like a production broker."""
    port = free_port()
    data = tmp / f"mosq-data-{port}"
    data.mkdir()
    conf = tmp / f"mosquitto-{port}.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n"
        f"persistence true\npersistence_location {data}/\nautosave_interval 1\n"
        f"log_dest stderr\nlog_type error\n{extra}"
    )
    return Mosquitto("127.0.0.1", port, _spawn_mosquitto(conf, port), conf)


class SessionObserver(Observer):
    """A provider-side client with a persistent session that reconnects on its own: sees every QoS 1 message."""

    def __init__(self, host: str, port: int, root: str, client_id: str = "provider-observer") -> None:
        super().__init__(host, port, root, client_id)
        self.connected = asyncio.Event()

    async def __aenter__(self) -> SessionObserver:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, identifier=self.client_id, clean_session=False, timeout=5
                ) as client:
                    self._client = client
                    await client.subscribe(f"{self.root}/#", qos=1)
                    self.connected.set()
                    async for m in client.messages:
                        self._record(m)
            except aiomqtt.MqttError:
                pass
            finally:
                self._client = None
                self.connected.clear()
            await asyncio.sleep(0.05)

    async def publish(self, suffix: str, payload: dict[str, Any] | str | bytes) -> None:
        await asyncio.wait_for(self.connected.wait(), 10)
        await super().publish(suffix, payload)


def check_reports(reports: list[dict[str, Any]], event_id: str) -> list[int]:
    """Dedupe by seq (QoS 1 is at-least-once); assert in order and none missing. Returns the seqs."""
    seqs: list[int] = []
    for r in reports:
        if r.get("event_id") == event_id and r["seq"] not in seqs:
            seqs.append(r["seq"])
    assert seqs == sorted(seqs), f"reports out of order: {seqs}"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"reports missing: {seqs}"
    return seqs


async def test_outage_mid_event_runs_on_delivers_everything_in_order(tmp_path: Path) -> None:
    broker = persistent_broker(tmp_path)
    cfg = quick_restore(site_config(broker.port, tmp_path))
    tz = ZoneInfo(cfg.site.timezone)
    speed = 40.0
    clock = ScaledClock(speed, origin_sim=datetime(2026, 7, 1, 10, 30, tzinfo=tz).timestamp())
    plant, plant_task = await serve_plant(cfg, clock)
    before = controllable_state(plant)
    agent = Agent(cfg, clock, metrics=False)
    stop = asyncio.Event()
    agent_task = asyncio.create_task(agent.run(stop))
    duration = 5 * 60
    try:
        async with SessionObserver(broker.host, broker.port, cfg.topic_root) as obs:
            await obs.wait_for(lambda t, b: t.endswith("/status") and b.get("state") == "online", 15)
            start = clock.now() + 90  # 90 s of baseline history
            await obs.publish("in/event", event_payload("out-1", start, duration, recovery_s=60))
            resp = await obs.wait_for(lambda t, b: t.endswith("/out/response"), 10)
            assert resp["opt"] == "in", resp
            await obs.wait_for(lambda t, b: t.endswith("/out/event/out-1") and b["state"] == "active", 15)
            await asyncio.sleep(60 / speed)  # a minute into the event

            broker.stop()
            down_at = clock.now()
            shed_before = {k for k, v in controllable_state(plant).items() if abs(v - before[k]) > 1e-6}
            seq_at_stop = agent.report_seq
            await asyncio.sleep(60 / speed)  # 60 s of event time without a broker
            # The event ran on: still shedding, reports still produced (into the outbox).
            rec = agent.events["out-1"]
            assert rec.state == "active" and rec.control is not None and rec.control.phase == "shedding"
            assert agent.report_seq >= seq_at_stop + 5, (seq_at_stop, agent.report_seq)
            assert not agent.mqtt or not agent.mqtt.connected.is_set()
            broker.start()
            up_at = clock.now()

            settlement = await obs.wait_for(lambda t, b: t.endswith("/out/settlement/out-1"), 25)
            completed = await obs.wait_for(
                lambda t, b: t.endswith("/out/event/out-1") and b["state"] == "completed", 5
            )
            await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.wait_for(agent_task, 15)
        plant_task.cancel()
        await plant.stop()
        broker.stop()

    assert up_at - down_at >= 60
    # Ended on time, not extended: the settlement covers exactly the event window.
    assert settlement["end"] == pytest.approx(start + duration)
    assert completed["ts"] >= start + duration
    # Devices restored to exactly what they were.
    assert shed_before, "nothing was shed before the outage"
    after = controllable_state(plant)
    for key in shed_before:
        assert after[key] == pytest.approx(before[key]), f"{key} not restored"
    # Every live report, in order, none missing; the ones made during the outage included.
    seqs = check_reports(obs.on("out/report"), "out-1")
    assert seqs[-1] == agent.report_seq
    assert seqs[0] <= seq_at_stop and seqs[-1] >= seq_at_stop + 5
    # The settlement came after the last report of the event (the outbox keeps order).
    order = [t for t, _b in obs.messages]
    last_report = max(i for i, (t, b) in enumerate(obs.messages) if t.endswith("/out/report"))
    assert order.index(f"{cfg.topic_root}/out/settlement/out-1") > last_report
