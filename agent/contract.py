"""Opt in or opt out: the contract's rules applied to one event, each refusal naming its rule.

Pure: the caller passes the events already accepted (from the store), the
contract from the config and the clock's now. The code is machine-readable,
the reason is for people, e.g. `daily_event_limit: 2 contracted events already today`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from agent.config import ContractConfig
from agent.events import DrEvent


@dataclass(frozen=True)
class Decision:
    opt: Literal["in", "out"]
    code: str
    reason: str
    #: The reduction the site commits to, kW (may be less than asked: a partial opt-in).
    committed_kw: float | None = None
    partial: bool = False


def _local(ts: float, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ts, tz)


def decide(
    event: DrEvent,
    contract: ContractConfig,
    tz: ZoneInfo,
    accepted: Iterable[DrEvent],
    now: float,
    baseline_kw: float | None = None,
) -> Decision:
    """Apply the contract to `event`; `accepted` are the other events the site has opted into."""
    start, end = event.start_ts, event.end_ts
    if end <= now:
        return Decision(
            "out", "event_in_past", f"event_in_past: it ended at {_local(end, tz):%Y-%m-%d %H:%M}"
        )
    limits = contract.programs.get(event.program)
    local_start, local_end = _local(start, tz), _local(end, tz)
    if contract.allowed_hours:
        lo, hi = contract.allowed_hours
        if local_start.date() != (local_end - timedelta(microseconds=1)).date() or not (
            lo <= local_start.strftime("%H:%M") and local_end.strftime("%H:%M") <= hi
        ):
            return Decision(
                "out",
                "outside_allowed_hours",
                f"outside_allowed_hours: {local_start:%H:%M}-{local_end:%H:%M} is not within {lo}-{hi}",
            )
    if limits is not None:
        if limits.min_notice_s is not None and start - now < limits.min_notice_s:
            return Decision(
                "out",
                "insufficient_notice",
                f"insufficient_notice: {max(0, start - now):.0f} s notice, the contract asks {limits.min_notice_s:.0f} s",
            )
        if limits.max_event_duration_s is not None and event.duration_s > limits.max_event_duration_s:
            return Decision(
                "out",
                "event_too_long",
                f"event_too_long: {event.duration_s:.0f} s exceeds {limits.max_event_duration_s:.0f} s for {event.program}",
            )
        same_program = [e for e in accepted if e.program == event.program and e.event_id != event.event_id]
        day = local_start.date()
        today = [e for e in same_program if _local(e.start_ts, tz).date() == day]
        if limits.max_events_per_day is not None and len(today) >= limits.max_events_per_day:
            return Decision(
                "out",
                "daily_event_limit",
                f"daily_event_limit: {len(today)} {event.program} events already on {day}",
            )
        if limits.max_hours_per_day is not None:
            used_h = sum(e.duration_s for e in today) / 3600
            if used_h + event.duration_s / 3600 > limits.max_hours_per_day + 1e-9:
                return Decision(
                    "out",
                    "daily_hours_limit",
                    f"daily_hours_limit: {used_h:.2f} h used on {day}, this event adds "
                    f"{event.duration_s / 3600:.2f} h, the limit is {limits.max_hours_per_day:g} h",
                )
        if limits.max_days_per_year is not None:
            days = {
                _local(e.start_ts, tz).date() for e in same_program if _local(e.start_ts, tz).year == day.year
            }
            if day not in days and len(days) >= limits.max_days_per_year:
                return Decision(
                    "out",
                    "yearly_day_limit",
                    f"yearly_day_limit: {len(days)} {event.program} event days already in {day.year}",
                )
    for other in accepted:
        if other.event_id != event.event_id and other.start_ts < end and start < other.end_ts:
            if other.priority <= event.priority:
                return Decision(
                    "out",
                    "overlapping_event",
                    f"overlapping_event: overlaps {other.event_id} of equal or higher priority",
                )
    lo_kw, hi_kw = contract.band_kw()
    asked = event.target.reduction_kw(
        contract.peak_kw, baseline_kw if baseline_kw is not None else contract.peak_kw
    )
    if asked > hi_kw:
        return Decision(
            "in",
            "partial",
            f"partial: {asked:.0f} kW asked, the contract band tops at {hi_kw:.0f} kW "
            f"({contract.band_pct[1]:g} % of peak); committing {hi_kw:.0f} kW",
            committed_kw=hi_kw,
            partial=True,
        )
    committed = max(asked, lo_kw)
    reason = "accepted"
    if asked < lo_kw:
        reason = f"accepted: {asked:.0f} kW asked, below the band; committing its minimum {lo_kw:.0f} kW"
    return Decision("in", "accepted", reason, committed_kw=committed)
