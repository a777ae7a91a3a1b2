"""Opt in or opt out: the contract's rules applied to one event, each refusal naming its rule.

Pure: the caller passes the events already accepted, the ledger of what they
used, the contract from the config and the clock's now. The code is
machine-readable, the reason is for people, e.g.
`daily_event_limit: 2 contracted events already on 2026-07-01 (the limit is 2)`.
Every limit is inclusive: an event that reaches a limit exactly is accepted,
one that goes past it is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from agent.config.model import ContractConfig
from agent.events.model import DrEvent, Target
from agent.settlement.ledger import Ledger, LedgerEntry

EPS = 1e-6


@dataclass(frozen=True)
class Decision:
    opt: Literal["in", "out"]
    code: str
    reason: str
    #: The reduction the site commits to, kW (may be less than asked: a partial opt-in).
    #: With several signal intervals, the largest of them.
    committed_kw: float | None = None
    partial: bool = False
    #: Per signal interval, the kW committed (None without intervals).
    intervals_kw: tuple[float, ...] | None = None
    #: Lower-priority accepted events this one overlaps and displaces.
    supersedes: tuple[str, ...] = ()


def _local(ts: float, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ts, tz)


def _out(code: str, detail: str) -> Decision:
    return Decision("out", code, f"{code}: {detail}")


def _hhmm(dt: datetime, day: date) -> str:
    """HH:MM of `dt`, as 24:00 when it is midnight at the end of `day`."""
    if dt.date() > day and dt.time() == datetime.min.time():
        return "24:00"
    return dt.strftime("%H:%M")


def commit_kw(target: Target, contract: ContractConfig, baseline_kw: float | None) -> tuple[float, float]:
    """(asked kW, committed kW) for one target: the ask clamped into the contract band."""
    lo, hi = contract.band_kw()
    asked = target.reduction_kw(
        contract.peak_kw, baseline_kw if baseline_kw is not None else contract.peak_kw
    )
    return asked, min(max(asked, lo), hi)


def ledger_from(contract: ContractConfig, tz: ZoneInfo, accepted: Iterable[DrEvent]) -> Ledger:
    """A ledger counting every accepted event as planned, for callers without states."""
    return Ledger(
        contract,
        tz,
        [LedgerEntry(e.event_id, e.program, e.start_ts, e.end_ts, "planned", e.test_event) for e in accepted],
    )


def decide(
    event: DrEvent,
    contract: ContractConfig,
    tz: ZoneInfo,
    accepted: Iterable[DrEvent],
    now: float,
    baseline_kw: float | None = None,
    ledger: Ledger | None = None,
) -> Decision:
    """Apply the contract to `event`; `accepted` are the other events the site has opted into."""
    accepted = [e for e in accepted if e.event_id != event.event_id]
    ledger = ledger or ledger_from(contract, tz, accepted)
    start, end = event.start_ts, event.end_ts
    if end <= now:
        return _out("event_in_past", f"it ended at {_local(end, tz):%Y-%m-%d %H:%M}")
    local_start, local_end = _local(start, tz), _local(end, tz)
    day = local_start.date()
    last_day = (local_end - timedelta(microseconds=1)).date()

    blackout = sorted({d for d in contract.blackout_dates if day <= d <= last_day})
    if blackout:
        return _out("blackout_date", f"{blackout[0]} is a blackout date in the contract")

    if contract.allowed_hours:
        lo, hi = contract.allowed_hours
        if last_day != day or not (lo <= _hhmm(local_start, day) and _hhmm(local_end, day) <= hi):
            return _out(
                "outside_allowed_hours",
                f"{local_start:%H:%M}-{_hhmm(local_end, day)} is not within {lo}-{hi}",
            )

    for d in sorted({day, last_day}):
        for w in contract.must_run:
            if not w.applies(d):
                continue
            w0 = datetime.combine(d, datetime.strptime(w.hours[0], "%H:%M").time(), tz).timestamp()
            w1 = (
                datetime.combine(d + timedelta(days=1), datetime.min.time(), tz).timestamp()
                if w.hours[1] == "24:00"
                else datetime.combine(d, datetime.strptime(w.hours[1], "%H:%M").time(), tz).timestamp()
            )
            if start < w1 and w0 < end:
                return _out(
                    "must_run",
                    f"the site's production run {w.name!r} ({w.hours[0]}-{w.hours[1]} on {d}) must not be disturbed",
                )

    # Overlaps: the higher priority (lower number) wins; on a tie the event accepted first stays.
    supersedes: list[str] = []
    for other in accepted:
        if other.start_ts < end and start < other.end_ts:
            if other.priority <= event.priority:
                return _out(
                    "overlapping_event",
                    f"overlaps {other.event_id} (priority {other.priority}), which has equal or higher "
                    f"priority than this one ({event.priority})",
                )
            supersedes.append(other.event_id)
    displaced = {e.event_id for e in ledger.entries if e.event_id in supersedes and e.state == "planned"}
    ledger = Ledger(contract, tz, [e for e in ledger.entries if e.event_id not in displaced])

    limits = contract.programs.get(event.program)
    if limits is not None:
        prog = event.program
        if limits.min_notice_s is not None and start - now < limits.min_notice_s - EPS:
            return _out(
                "insufficient_notice",
                f"{max(0.0, start - now):.0f} s notice, the contract asks {limits.min_notice_s:.0f} s for {prog}",
            )
        if limits.max_event_duration_s is not None and event.duration_s > limits.max_event_duration_s + EPS:
            return _out(
                "event_too_long",
                f"{event.duration_s:.0f} s exceeds {limits.max_event_duration_s:.0f} s for {prog}",
            )
        n_today, h_today = ledger.day_usage(prog, day, exclude=event.event_id)
        if limits.max_events_per_day is not None and n_today >= limits.max_events_per_day:
            return _out(
                "daily_event_limit",
                f"{n_today} {prog} events already on {day} (the limit is {limits.max_events_per_day})",
            )
        if limits.max_hours_per_day is not None:
            add_h = event.duration_s / 3600
            if h_today + add_h > limits.max_hours_per_day + EPS:
                return _out(
                    "daily_hours_limit",
                    f"{h_today:.2f} h of {prog} events already on {day}, this one adds {add_h:.2f} h, "
                    f"the limit is {limits.max_hours_per_day:g} h",
                )
        if limits.max_days_per_year is not None:
            days = ledger.days_in_year(prog, day.year, exclude=event.event_id)
            if day not in days and len(days) >= limits.max_days_per_year:
                return _out(
                    "yearly_day_limit",
                    f"{len(days)} {prog} event days already in {day.year} (the limit is {limits.max_days_per_year})",
                )
        if limits.max_events_per_year is not None:
            n_year = ledger.events_in_year(prog, day.year, exclude=event.event_id)
            if n_year >= limits.max_events_per_year:
                return _out(
                    "yearly_event_limit",
                    f"{n_year} {prog} events already in {day.year} (the limit is {limits.max_events_per_year})",
                )

    lo_kw, hi_kw = contract.band_kw()
    spans = event.targets()
    asks = [commit_kw(t, contract, baseline_kw) for _a, _b, t in spans]
    committed = [c for _a, c in asks]
    over = [(n, a) for n, (a, _c) in enumerate(asks) if a > hi_kw + EPS]
    intervals_kw = tuple(committed) if event.intervals else None
    sup = tuple(supersedes)
    note = f"; supersedes {', '.join(sup)} (lower priority)" if sup else ""
    if over:
        n, asked = max(over, key=lambda x: x[1])
        where = f" in interval {n}" if event.intervals else ""
        return Decision(
            "in",
            "partial",
            f"partial: {asked:.0f} kW asked{where}, the contract band tops at {hi_kw:.0f} kW "
            f"({contract.band_pct[1]:g} % of peak); committing {hi_kw:.0f} kW{note}",
            committed_kw=max(committed),
            partial=True,
            intervals_kw=intervals_kw,
            supersedes=sup,
        )
    reason = "accepted"
    low = [a for a, _c in asks if a < lo_kw - EPS]
    if low:
        reason = f"accepted: {min(low):.0f} kW asked, below the band; committing its minimum {lo_kw:.0f} kW"
    return Decision(
        "in",
        "accepted",
        reason + note,
        committed_kw=max(committed),
        intervals_kw=intervals_kw,
        supersedes=sup,
    )
