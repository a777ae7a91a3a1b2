"""Contract rules over MQTT: at the limit accepted, one past it refused, the rule named in the response."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.platform.clock import ScaledClock
from agent.runtime.daemon import Agent
from tests.conftest import Mosquitto, site_config
from tests.helpers import Observer, event_payload

pytestmark = pytest.mark.integration


async def test_refusals_name_their_rule_on_the_response_topic(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = site_config(mosquitto.port, tmp_path)
    contract = type(cfg.contract).model_validate(
        {
            **cfg.contract.model_dump(),
            "blackout_dates": ["2026-07-02"],
            "must_run": [{"name": "line-2 curing", "hours": ["13:00", "14:00"]}],
            "min_events_per_year": 10,
            "default_below_events_per_year": 5,
        }
    )
    cfg = cfg.model_copy(update={"contract": contract})
    tz = ZoneInfo(cfg.site.timezone)

    def at(hh: int, mm: int = 0, day: int = 1) -> float:
        return datetime(2026, 7, day, hh, mm, tzinfo=tz).timestamp()

    # Devices are not served: this is about decisions, made before anything runs.
    agent = Agent(cfg, ScaledClock(1.0, origin_sim=at(8)), metrics=False)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    sent: list[tuple[dict[str, Any], str, str]] = [
        # (event, expected opt, expected code)
        (event_payload("c1", at(10), 3600), "in", "accepted"),
        (event_payload("c2", at(11), 3600), "in", "accepted"),  # 2 events, 2 h: exactly at both limits
        (event_payload("c3", at(14, 30), 600), "out", "daily_event_limit"),
        (event_payload("r1", at(12), 1800, program="realtime"), "in", "accepted"),  # 30 min exactly
        (event_payload("r2", at(14, 0), 1801, program="realtime"), "out", "event_too_long"),
        (event_payload("r3", at(13, 30), 600, program="realtime"), "out", "must_run"),
        (event_payload("r4", at(9, 59), 600, program="realtime"), "out", "outside_allowed_hours"),
        (event_payload("r5", at(11, day=2), 600, program="realtime"), "out", "blackout_date"),
        (event_payload("big", at(11, day=3), 600, target={"reduce_pct_of_peak": 30}), "in", "partial"),
    ]
    try:
        async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root) as obs:
            await obs.wait_online()
            for ev, _opt, _code in sent:
                await obs.publish("in/event", ev)
            await obs.wait_for(lambda t, b: len({t for t, _b in obs.under("out/event/")}) >= len(sent), 15)
            responses = {r["event_id"]: r for r in obs.on("out/response")}
            states = {t.rsplit("/", 1)[-1]: b["state"] for t, b in obs.under("out/event/")}
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)

    for ev, opt, code in sent:
        r = responses[ev["event_id"]]
        assert (r["opt"], r["code"]) == (opt, code), r
        assert r["reason"].startswith(code), r
        assert states[ev["event_id"]] == ("far" if opt == "in" else "opted_out")
    assert (
        responses["c3"]["reason"]
        == "daily_event_limit: 2 contracted events already on 2026-07-01 (the limit is 2)"
    )
    assert responses["big"]["committed_kw"] == 200 and responses["big"]["partial"] is True
    # Early in the year with few events booked: the participation warning rides on opt-ins.
    assert responses["c1"]["participation_warning"].startswith("participation_")
