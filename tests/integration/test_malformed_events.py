"""A malformed event gets an error reply naming the event id and the field, and changes nothing."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from agent.platform.clock import SystemClock
from agent.platform.store import Store
from agent.runtime.daemon import Agent
from tests.conftest import Mosquitto, site_config
from tests.helpers import Observer, event_payload

pytestmark = pytest.mark.integration

GOOD = event_payload("bad-1", time.time() + 3600, 600)

CASES = [
    # (label, raw payload, expected code, expected field, expected event id)
    ("bad json", b'{"event_id": "bad-1", "start": ', "bad_json", None, None),
    (
        "missing field",
        json.dumps({k: v for k, v in GOOD.items() if k != "duration_s"}),
        "missing_field",
        "duration_s",
        "bad-1",
    ),
    (
        "wrong type",
        json.dumps({**GOOD, "duration_s": "half an hour"}),
        "invalid_field",
        "duration_s",
        "bad-1",
    ),
    (
        "unknown target kind",
        json.dumps({**GOOD, "target": {"reduce_mw": 1}}),
        "unknown_target",
        "target.reduce_mw",
        "bad-1",
    ),
    (
        "no offset on start",
        json.dumps({**GOOD, "start": "2026-07-01T14:00:00"}),
        "invalid_field",
        "start",
        "bad-1",
    ),
    (
        "two targets",
        json.dumps({**GOOD, "target": {"reduce_kw": 50, "cap_kw": 800}}),
        "invalid_field",
        "target",
        "bad-1",
    ),
]


async def test_malformed_events_get_error_replies_and_change_nothing(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    cfg = site_config(mosquitto.port, tmp_path)
    # No Modbus simulators: nothing may be written anyway, and polls failing is fine here.
    agent = Agent(cfg, SystemClock(), metrics=False)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root) as obs:
            await obs.wait_online()
            for _label, raw, *_ in CASES:
                await obs.publish("in/event", raw)
            for i in range(len(CASES)):
                await obs.wait_for(lambda t, b, n=i: len(obs.on("out/error")) > n, 10)
            await asyncio.sleep(0.5)
            errors = obs.on("out/error")
            responses = obs.on("out/response")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)

    assert len(errors) == len(CASES)
    for (label, _raw, code, field, event_id), err in zip(CASES, errors, strict=True):
        assert err["status"] == "error", label
        assert err["code"] == code, (label, err)
        assert err["field"] == field, (label, err)
        assert err["event_id"] == event_id, (label, err)
        assert err["error"], label
    # Nothing changed: no response, no event stored, no device write journalled.
    assert responses == []
    assert agent.events == {}
    store = Store(tmp_path / "agent.sqlite")
    assert store.events() == [] and store.journal_open() == []
    store.close()


# -- findings of an independent client written from docs/mqtt-api.md ---------------------------------


def _nested(levels: int, leaf: str = "1") -> str:
    return "[" * levels + leaf + "]" * levels


#: Payloads the published schema let through (or that crashed the parser), each with the error expected.
HOSTILE = [
    # (label, raw payload, expected code, expected field, expected event id)
    (
        "modification_number 10**30 (no maximum in the old schema)",
        json.dumps({**event_payload("huge-mod", time.time() + 600, 600), "modification_number": 10**30}),
        "invalid_field",
        "modification_number",
        "huge-mod",
    ),
    ("40 KB nested array", _nested(20_000), "too_deep", None, None),
    (
        "target nested 9,000 levels",
        json.dumps(
            {k: v for k, v in event_payload("deep-1", time.time() + 3600, 600).items() if k != "target"}
        )[:-1]
        + ', "target": '
        + _nested(9000)
        + "}",
        "too_deep",
        None,
        None,
    ),
    (
        "duration_s as a string",
        json.dumps({**event_payload("coerce-1", time.time() + 3600, 600), "duration_s": "1800"}),
        "invalid_field",
        "duration_s",
        "coerce-1",
    ),
    (
        "priority as a string",
        json.dumps(event_payload("coerce-2", time.time() + 3600, 600, priority="1")),
        "invalid_field",
        "priority",
        "coerce-2",
    ),
    (
        "test_event as a string",
        json.dumps(event_payload("coerce-3", time.time() + 3600, 600, test_event="yes")),
        "invalid_field",
        "test_event",
        "coerce-3",
    ),
    (
        "start as a numeric epoch",
        json.dumps(event_payload("coerce-4", time.time() + 3600, 600, start=int(time.time() + 3600))),
        "invalid_field",
        "start",
        "coerce-4",
    ),
    (
        "start: 12345 (was stale_event)",
        json.dumps(event_payload("coerce-5", time.time() + 3600, 600, start=12345)),
        "invalid_field",
        "start",
        "coerce-5",
    ),
    (
        "start as an epoch in a string",
        json.dumps(event_payload("coerce-6", time.time() + 3600, 600, start=str(int(time.time() + 3600)))),
        "invalid_field",
        "start",
        "coerce-6",
    ),
]


async def test_hostile_events_are_refused_and_the_agent_runs_on(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Each finding gets an error reply; nothing is stored or published for it, and a good event
    sent after them is still answered (the daemon neither crashed nor dropped its connection)."""
    cfg = site_config(mosquitto.port, tmp_path)
    agent = Agent(cfg, SystemClock(), metrics=False)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root) as obs:
            await obs.wait_online()
            for _label, raw, *_ in HOSTILE:
                await obs.publish("in/event", raw)
            await obs.publish("in/event", event_payload("after-1", time.time() + 3600, 600))
            await obs.wait_for(
                lambda t, b: t.endswith("/out/response") and b.get("event_id") == "after-1", 15
            )
            await asyncio.sleep(0.3)
            errors = obs.on("out/error")
            responses = obs.on("out/response")
            states = obs.under("out/event/")
            assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)

    # MQTT keeps the order of one publisher's QoS 1 messages: one reply per payload, in order.
    assert len(errors) == len(HOSTILE), [e.get("code") for e in errors]
    for (label, _raw, code, field, event_id), err in zip(HOSTILE, errors, strict=True):
        assert err["code"] == code, (label, err)
        assert err["field"] == field, (label, err)
        assert err["event_id"] == event_id, (label, err)
        assert err["error"], label
    assert [r["event_id"] for r in responses] == ["after-1"]
    assert {t.rsplit("/", 1)[-1] for t, _ in states} == {"after-1"}  # no retained `near` for huge-mod
    assert set(agent.events) == {"after-1"}
    store = Store(tmp_path / "agent.sqlite")
    assert [e["event_id"] for e in store.events()] == ["after-1"] and store.journal_open() == []
    store.close()
