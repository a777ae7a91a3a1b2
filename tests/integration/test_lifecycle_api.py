"""The documented API, end to end: the examples of docs/mqtt-api.md published verbatim to a real agent.

A contracted event is accepted, then superseded by an overlapping real-time event of higher
priority; the real-time event is modified (its second signal interval asks more), runs through
near → active (interval 0, then 1) → completed and is settled; another event is cancelled before it
starts; a critical-peak price becomes an event on the price programme. Every state is published
retained and persisted.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from agent.config.model import ContractConfig
from agent.platform.clock import ScaledClock
from agent.platform.store import Store
from agent.runtime.daemon import Agent
from tests.conftest import Mosquitto, serve_plant, site_config
from tests.helpers import Observer
from tests.integration.test_broker_outage import quick_restore
from tests.unit.test_events_api import doc_blocks, doc_example_text

pytestmark = pytest.mark.integration

SPEED = 90.0


def doc_contract() -> ContractConfig:
    text = next(t for _k, n, _s, t in doc_blocks() if n == "contract-jiangsu")
    data = yaml.safe_load(text)["contract"]
    # The examples give 12 minutes' notice for the contracted event; the doc's contract asks an hour.
    data["programs"]["contracted"].pop("min_notice_s")
    return ContractConfig.model_validate(data)


async def test_documented_examples_run_through_the_lifecycle(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = quick_restore(site_config(mosquitto.port, tmp_path))
    cfg = cfg.model_copy(update={"contract": doc_contract()})
    tz = ZoneInfo(cfg.site.timezone)
    clock = ScaledClock(SPEED, origin_sim=datetime(2026, 7, 1, 13, 58, 30, tzinfo=tz).timestamp())
    plant, plant_task = await serve_plant(cfg, clock)
    agent = Agent(cfg, clock, metrics=False)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    rt, ca, cb, price_ev = "rt-2026-07-01-1", "js-2026-07-01-a", "js-2026-07-01-b", "price-cpp-2026-07-01-0"

    def state_of(obs: Observer, eid: str) -> list[dict]:
        return obs.on(f"out/event/{eid}")

    try:
        async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root) as obs:
            await obs.wait_online()
            for name in (
                "event-contracted",
                "event-realtime",
                "event-realtime-modified",
                "event-contracted-b",
                "event-cancel",
            ):
                await obs.publish("in/event", doc_example_text(name))
            await obs.publish("in/price", doc_example_text("price-cpp"))
            await obs.wait_for(lambda t, b: t.endswith("/out/response") and b["event_id"] == price_ev, 10)
            await obs.wait_for(lambda t, b: t.endswith(f"/out/event/{rt}") and b["state"] == "active", 15)
            await obs.wait_for(lambda t, b: t.endswith(f"/out/event/{rt}") and b.get("interval") == 1, 15)
            settlement = await obs.wait_for(lambda t, b: t.endswith(f"/out/settlement/{rt}"), 20)
            await obs.wait_for(lambda t, b: t.endswith(f"/out/event/{rt}") and b["state"] == "completed", 5)
            responses = obs.on("out/response")
            errors = obs.on("out/error")
            rt_states = state_of(obs, rt)
            ca_states, cb_states = state_of(obs, ca), state_of(obs, cb)
            price_reading = obs.on("out/price")
        # A late subscriber gets every event's current state (retained).
        async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root, "late") as late:
            await late.wait_for(lambda t, b: t.endswith(f"/out/event/{cb}"), 5)
            await asyncio.sleep(0.3)
            retained = {t.rsplit("/", 1)[-1]: b["state"] for t, b in late.under("out/event/")}
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        plant_task.cancel()
        await plant.stop()

    assert errors == []
    by = {(r["event_id"], r["modification_number"], r["code"]): r for r in responses}
    # The contracted event: accepted, then superseded by the real-time one (priority 1 beats 5).
    assert by[(ca, 0, "accepted")]["opt"] == "in"
    sup = by[(ca, 0, "superseded")]
    assert sup["opt"] == "out" and sup["superseded_by"] == rt
    assert sup["reason"].startswith(f"superseded: {rt} (priority 1)")
    first = by[(rt, 0, "accepted")]
    assert first["supersedes"] == [ca] and first["intervals_committed_kw"] == [100.0, 150.0]
    assert "supersedes js-2026-07-01-a (lower priority)" in first["reason"]
    # The modification: decided again, the second interval now 18 %.
    assert by[(rt, 1, "accepted")]["intervals_committed_kw"] == [100.0, 180.0]
    # Cancelled before it started.
    assert by[(cb, 1, "cancelled")]["opt"] == "in"
    assert [s["state"] for s in cb_states][-1] == "cancelled"
    assert [s["state"] for s in ca_states][-1] == "superseded"
    # The real-time event's lifecycle, in order, following its intervals.
    seq = [s["state"] for s in rt_states]
    assert seq.index("near") < seq.index("active") < seq.index("completed"), seq
    active = [s for s in rt_states if s["state"] == "active"]
    assert {(s["interval"], s["committed_kw"]) for s in active} >= {(0, 100.0), (1, 180.0)}
    end = datetime(2026, 7, 1, 14, 15, tzinfo=tz).timestamp()
    assert settlement["end"] == pytest.approx(end) and settlement["state"] == "completed"
    # The price signal became one event on the price programme, 5 % then 10 % of peak.
    p = by[(price_ev, 0, "accepted")]
    assert p["opt"] == "in" and p["intervals_committed_kw"] == [50.0, 100.0]
    assert price_reading[-1]["events"] == [price_ev]
    assert retained[rt] == "completed" and retained[ca] == "superseded" and retained[cb] == "cancelled"
    # Persisted.
    store = Store(tmp_path / "agent.sqlite")
    try:
        states = {e["event_id"]: e["state"] for e in store.events()}
    finally:
        store.close()
    assert states[rt] == "completed" and states[ca] == "superseded" and states[cb] == "cancelled"
    assert states[price_ev] in ("far", "near")
