"""A malformed event gets an error reply naming the event id and the field, and changes nothing."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from agent.clock import SystemClock
from agent.daemon import Agent
from agent.store import Store
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
