"""Events and price signals: signal intervals, time checks, and price thresholds becoming events."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.config.load import load_site_config
from agent.config.model import PriceResponse
from agent.events.lifecycle import EventLifecycle
from agent.events.model import EventError, parse_event, parse_price
from agent.platform.clock import SystemClock
from tests.conftest import DEMO_CONFIG

TZ = ZoneInfo("Asia/Shanghai")


def lifecycle(**price: Any) -> EventLifecycle:
    cfg, _ = load_site_config(DEMO_CONFIG)
    thresholds = [{"at_least": 1.2, "reduce_pct_of_peak": 5}, {"at_least": 1.6, "reduce_kw": 120}]
    pr = PriceResponse.model_validate({"thresholds": thresholds, **price})
    contract = cfg.contract.model_copy(update={"price": pr})
    cfg = cfg.model_copy(update={"contract": contract})
    ports = SimpleNamespace(link=None, actuation=None, store=None, readings=None, books=None, wake=None)
    return EventLifecycle(lambda: cfg, SystemClock(), {}, ports)  # type: ignore[arg-type]


def price(*intervals: tuple[str, float, float], revision: int = 0) -> Any:
    return parse_price(
        json.dumps(
            {
                "price_id": "p1",
                "revision": revision,
                "kind": "realtime",
                "intervals": [{"start": s, "duration_s": d, "price": p} for s, d, p in intervals],
            }
        )
    )


def test_runs_above_threshold_become_events_with_intervals_per_level() -> None:
    evs = lifecycle().price_events(
        price(
            ("2026-07-01T10:00:00+08:00", 900, 0.8),
            ("2026-07-01T10:15:00+08:00", 900, 1.3),
            ("2026-07-01T10:30:00+08:00", 900, 1.9),
            ("2026-07-01T10:45:00+08:00", 900, 1.7),
            ("2026-07-01T11:00:00+08:00", 900, 0.7),
            ("2026-07-01T11:15:00+08:00", 1800, 1.25),
        )
    )
    assert [e.event_id for e in evs] == ["price-p1-0", "price-p1-1"]
    a, b = evs
    assert (
        a.program == "price" and a.start.isoformat() == "2026-07-01T10:15:00+08:00" and a.duration_s == 2700
    )
    assert a.intervals is not None
    assert [(i.duration_s, i.target.reduce_pct_of_peak, i.target.reduce_kw) for i in a.intervals] == [
        (900, 5, None),
        (1800, None, 120),
    ]
    assert b.duration_s == 1800 and b.intervals is None and b.target.reduce_pct_of_peak == 5


def test_clipped_to_allowed_hours_and_short_runs_dropped() -> None:
    evs = lifecycle().price_events(
        price(("2026-07-01T09:00:00+08:00", 7200, 2.0), ("2026-07-01T14:55:00+08:00", 1800, 2.0))
    )
    # 09:00-11:00 is clipped to 10:00-11:00; 14:55-15:25 leaves 5 minutes, below min_event_s.
    assert [(e.start.isoformat(), e.duration_s) for e in evs] == [("2026-07-01T10:00:00+08:00", 3600)]


def test_revision_becomes_modification_number() -> None:
    evs = lifecycle().price_events(price(("2026-07-01T10:00:00+08:00", 1800, 2.0), revision=3))
    assert evs[0].modification_number == 3


def test_price_intervals_must_not_overlap() -> None:
    with pytest.raises(EventError) as e:
        price(("2026-07-01T10:00:00+08:00", 1800, 2.0), ("2026-07-01T10:15:00+08:00", 900, 2.0))
    assert (
        e.value.code == "invalid_field" and "intervals[1] starts before intervals[0] ends" in e.value.message
    )


def test_interval_durations_must_add_up() -> None:
    body = {
        "event_id": "x",
        "start": "2026-07-01T10:00:00+08:00",
        "duration_s": 1800,
        "intervals": [{"duration_s": 600, "target": {"reduce_kw": 50}}],
    }
    with pytest.raises(EventError) as e:
        parse_event(json.dumps(body))
    assert "intervals add up to 600 s but duration_s is 1800 s" in e.value.message
    body["duration_s"] = 600
    ev = parse_event(json.dumps(body))
    assert ev.target.reduce_kw == 50 and ev.target_at(ev.start_ts + 599)[0] == 0


def test_payload_size_limit() -> None:
    with pytest.raises(EventError) as e:
        parse_event(b"{" + b" " * 70000 + b"}")
    assert e.value.code == "too_large"
