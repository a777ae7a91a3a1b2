"""Notification, ramp-up, randomized start and the absolute end, on the production lifecycle code
(simulated plant over loopback, manual clock: hours of plant time in a second or two)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from agent.cli.simulate import simulate_event
from agent.config.load import load_site_config
from agent.events.model import DrEvent
from tests.conftest import DEMO_CONFIG
from tests.integration.test_broker_outage import quick_restore

pytestmark = pytest.mark.integration


async def test_notification_ramp_up_and_randomized_start_are_honoured(tmp_path: object) -> None:
    cfg, _ = load_site_config(DEMO_CONFIG)
    cfg = quick_restore(cfg)
    tz = ZoneInfo(cfg.site.timezone)
    start = datetime(2026, 7, 1, 11, 0, tzinfo=tz)
    ev = DrEvent.model_validate(
        {
            "event_id": "timing-1",
            "program": "contracted",
            "start": start.isoformat(),
            "duration_s": 1200,
            "notification_s": 1500,
            "ramp_up_s": 120,
            "start_after_s": 300,
            "recovery_s": 60,
            "target": {"reduce_pct_of_peak": 10},
        }
    )
    res = await simulate_event(cfg, ev, lead_s=1800, tail_s=900)
    states = [(p["state"], p["ts"]) for t, p in res.messages if t.endswith("/out/event/timing-1")]
    first = {}
    for s, ts in states:
        first.setdefault(s, ts)
    assert res.response is not None and res.response["opt"] == "in"
    eff = datetime.fromisoformat(res.response.get("effective_start", start.isoformat())).timestamp()
    t0 = start.timestamp()
    assert t0 <= eff <= t0 + 300
    # near at start - notification_s, active at the randomized start - ramp_up_s (one control period)
    period = cfg.control.period_s
    assert first["near"] == pytest.approx(t0 - 1500, abs=period + 5)
    assert first["active"] == pytest.approx(eff - 120, abs=period + 5)
    # The end is absolute: the randomized start does not push it out.
    assert res.settlement is not None
    assert res.settlement["end"] == pytest.approx(t0 + 1200)
    assert first["completed"] >= t0 + 1200
    shedding_after_end = [
        s for s in res.timeline if s.get("phase") == "shedding" and s["ts"] > t0 + 1200 + period
    ]
    assert shedding_after_end == []
    assert any(s.get("phase") == "shedding" for s in res.timeline)
