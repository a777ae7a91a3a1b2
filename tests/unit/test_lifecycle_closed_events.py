"""A closed event (final, its control over, settled) no longer changes: its ledger entry and control
period are worked out once, not on every event that arrives. They must stay what working them out
again gives, and follow whatever replaces what they come from (its stored runtime, a reload)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Literal
from zoneinfo import ZoneInfo

from agent.config.load import load_site_config
from agent.config.model import SiteConfig
from agent.events.contract import Decision as OptDecision
from agent.events.lifecycle import EventLifecycle, EventRecord, _ledger_entry
from agent.events.model import State, parse_event
from agent.platform.clock import SystemClock
from agent.settlement.ledger import LedgerEntry
from tests.conftest import DEMO_CONFIG

TZ = ZoneInfo("Asia/Shanghai")
BASE = datetime(2026, 6, 1, 10, tzinfo=TZ)


def _lifecycle() -> tuple[EventLifecycle, list[SiteConfig]]:
    cfg, _ = load_site_config(DEMO_CONFIG)
    current = [cfg]
    ports = SimpleNamespace(link=None, actuation=None, store=None, readings=None, books=None, wake=None)
    return EventLifecycle(lambda: current[0], SystemClock(), {}, ports), current  # type: ignore[arg-type]


def _record(i: int, state: State, opt: Literal["in", "out"] = "in", ran: bool = True) -> EventRecord:
    start = BASE + timedelta(days=i)
    ev = parse_event(
        json.dumps(
            {
                "event_id": f"e{i}",
                "program": "contracted",
                "start": start.isoformat(),
                "duration_s": 3600,
                "target": {"reduce_kw": 50},
            }
        ).encode()
    )
    rec = EventRecord(ev, OptDecision(opt, "accepted", "", 50.0), state, ev.start_ts)
    if ran:
        rec.runtime = {"control_start": ev.start_ts, "baseline_kw": 500.0}
    return rec


def _uncached(lc: EventLifecycle, before: float) -> tuple[list[LedgerEntry], list[tuple[float, float]]]:
    entries = [e for r in lc.events.values() if (e := _ledger_entry(r)) is not None and not e.test]
    periods = [p for r in lc.events.values() if (p := lc._control_period(r)) is not None and p[0] < before]
    return entries, periods


def test_closed_events_count_as_worked_out_again_and_follow_what_replaces_them() -> None:
    lc, current = _lifecycle()
    records = [
        _record(0, State.COMPLETED),
        _record(1, State.CANCELLED, ran=False),  # cancelled before it ran: not counted
        _record(2, State.OPTED_OUT, opt="out", ran=False),
        _record(3, State.SUPERSEDED),
        _record(4, State.FAR, ran=False),  # planned: not closed
        _record(5, State.COMPLETED),
    ]
    for r in records:
        lc.events[r.event.event_id] = r
    records[5].settle_pending = True  # completed while down: not closed until settled
    before = (BASE + timedelta(days=30)).timestamp()
    for _ in range(2):  # the second time from what was worked out the first
        assert lc.ledger().entries == _uncached(lc, before)[0]
        assert lc._control_periods(before, "none") == _uncached(lc, before)[1]
    assert [e.event_id for e in lc.ledger().entries] == ["e0", "e3", "e4", "e5"]

    # The stored runtime replaced (a later persist): the period follows it.
    r0 = records[0]
    r0.runtime = {**(r0.runtime or {}), "control_start": r0.event.start_ts + 600}
    periods = lc._control_periods(before, "none")
    assert periods == _uncached(lc, before)[1]
    assert periods[0][0] == r0.event.start_ts + 600

    # A reload with another rebound window: the recovery of events without their own follows it.
    old_end = periods[0][1]
    cfg = current[0]
    strategies = [
        s.model_copy(update={"restore": s.restore.model_copy(update={"rebound_window_s": 60})})
        for s in cfg.strategies
    ]
    current[0] = cfg.model_copy(update={"strategies": strategies})
    periods = lc._control_periods(before, "none")
    assert periods == _uncached(lc, before)[1]
    assert periods[0][1] != old_end

    # An event left out: excluded from the periods, whatever was worked out for it.
    assert [p[0] for p in lc._control_periods(before, "e0")] == [p[0] for p in periods[1:]]
