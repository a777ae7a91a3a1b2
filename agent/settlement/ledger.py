"""The participation ledger: events, hours and days per day, year and contract period.

Pure: built from the events the site opted into (with their states), the
contract and the site's timezone. `contract.decide` asks it how much of each
limit is used; `participation()` warns when the site is on course to miss
its yearly minimum (Jiangsu: 10 a year, fewer than 5 is a default) or the
contract period's. `summary()` is what `dr-agent report --year` prints.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from agent.config.model import ContractConfig

#: Programmes whose responses count towards the participation minimum (incentive-based DR).
PARTICIPATION_PROGRAMS = ("contracted", "realtime")


@dataclass(frozen=True)
class LedgerEntry:
    """One opted-in event as the ledger counts it."""

    event_id: str
    program: str
    start: float
    #: The end, or when it was cancelled if it was cancelled while running.
    end: float
    #: planned (accepted, not started), active, completed, or cancelled (only if it had started).
    state: str
    test: bool = False

    @property
    def hours(self) -> float:
        return max(0.0, self.end - self.start) / 3600


@dataclass(frozen=True)
class Participation:
    year: int
    responses: int
    planned: int
    minimum: int | None
    default_below: int | None
    elapsed_fraction: float
    on_course_for: float
    #: Machine-readable: ok, below_minimum, default_risk, (or met).
    status: str
    warning: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "year": self.year,
            "responses": self.responses,
            "planned": self.planned,
            "minimum": self.minimum,
            "default_below": self.default_below,
            "elapsed_fraction": round(self.elapsed_fraction, 4),
            "on_course_for": round(self.on_course_for, 1),
            "status": self.status,
            "warning": self.warning,
        }


@functools.lru_cache(maxsize=4096)
def _local_day(ts: float, tz: ZoneInfo) -> date:
    """The local date of `ts`: each limit walks every event of the year, on every event that arrives."""
    return datetime.fromtimestamp(ts, tz).date()


class Ledger:
    """Counts over the opted-in events; test events and events cancelled before they began do not count."""

    def __init__(self, contract: ContractConfig, tz: ZoneInfo, entries: Iterable[LedgerEntry]) -> None:
        self.contract = contract
        self.tz = tz
        self.entries = [e for e in entries if not e.test]

    def _day(self, ts: float) -> date:
        return _local_day(ts, self.tz)

    def _program(self, program: str | None) -> list[LedgerEntry]:
        return [e for e in self.entries if program is None or e.program == program]

    def on_day(self, program: str | None, day: date, exclude: str | None = None) -> list[LedgerEntry]:
        """Entries of `program` (None: all) starting on local `day`."""
        return [e for e in self._program(program) if self._day(e.start) == day and e.event_id != exclude]

    def day_usage(self, program: str | None, day: date, exclude: str | None = None) -> tuple[int, float]:
        """(events, hours) of `program` on `day`."""
        today = self.on_day(program, day, exclude)
        return len(today), sum(e.hours for e in today)

    def days_in_year(self, program: str | None, year: int, exclude: str | None = None) -> set[date]:
        return {
            self._day(e.start)
            for e in self._program(program)
            if self._day(e.start).year == year and e.event_id != exclude
        }

    def events_in_year(self, program: str | None, year: int, exclude: str | None = None) -> int:
        return sum(
            1 for e in self._program(program) if self._day(e.start).year == year and e.event_id != exclude
        )

    def _responses(self, first: date, last: date) -> tuple[int, int]:
        """(done, planned) responses in [first, last] that count towards participation."""
        done = planned = 0
        for e in self.entries:
            if e.program not in PARTICIPATION_PROGRAMS or not first <= self._day(e.start) <= last:
                continue
            if e.state == "planned":
                planned += 1
            else:
                done += 1
        return done, planned

    def participation(self, now: float) -> Participation:
        """This year's responses against the minimum, projected at the pace so far."""
        local = datetime.fromtimestamp(now, self.tz)
        year = local.year
        y0 = datetime(year, 1, 1, tzinfo=self.tz).timestamp()
        y1 = datetime(year + 1, 1, 1, tzinfo=self.tz).timestamp()
        elapsed = min(1.0, max(0.0, (now - y0) / (y1 - y0)))
        done, planned = self._responses(date(year, 1, 1), date(year, 12, 31))
        minimum = self.contract.min_events_per_year
        default_below = self.contract.default_below_events_per_year
        # The pace so far, plus what is already booked; early in the year the pace means little,
        # so judge on at least a quarter of the year.
        on_course = (done / max(elapsed, 0.25)) + planned
        status, warning = "ok", None
        head = f"{done} responses in {year} by {local:%m-%d} ({elapsed * 100:.0f} % of the year)"
        if minimum is not None and done + planned >= minimum:
            status = "met" if done >= minimum else "ok"
        elif default_below is not None and on_course < default_below:
            status = "default_risk"
            warning = (
                f"participation_default_risk: {head}, on course for {on_course:.0f}; "
                f"fewer than {default_below} is a default (no incentive)"
            )
        elif minimum is not None and on_course < minimum:
            status = "below_minimum"
            warning = (
                f"participation_below_minimum: {head}, on course for {on_course:.0f}; "
                f"the contract asks {minimum} (fewer pays pro rata)"
            )
        return Participation(year, done, planned, minimum, default_below, elapsed, on_course, status, warning)

    def period_status(self, now: float) -> dict[str, Any] | None:
        """Responses in the contract period against its minimum (e.g. Foshan: 10 in 3 years)."""
        p = self.contract.period
        if p is None:
            return None
        done, planned = self._responses(p.start, p.end)
        p0 = datetime(p.start.year, p.start.month, p.start.day, tzinfo=self.tz).timestamp()
        p1 = datetime(p.end.year, p.end.month, p.end.day, tzinfo=self.tz).timestamp() + 86400
        elapsed = min(1.0, max(0.0, (now - p0) / (p1 - p0)))
        on_course = done / max(elapsed, 0.25) + planned
        warning = None
        if p.min_events is not None and done + planned < p.min_events and on_course < p.min_events:
            warning = (
                f"period_below_minimum: {done} responses in the contract period {p.start}..{p.end} "
                f"({elapsed * 100:.0f} % elapsed), on course for {on_course:.0f}; it asks {p.min_events}"
            )
        return {
            "start": p.start.isoformat(),
            "end": p.end.isoformat(),
            "responses": done,
            "planned": planned,
            "minimum": p.min_events,
            "elapsed_fraction": round(elapsed, 4),
            "warning": warning,
        }

    def summary(self, year: int, now: float) -> dict[str, Any]:
        """Per-programme events, hours and days in `year`, plus participation (for reports)."""
        programs: dict[str, dict[str, Any]] = {}
        for e in self.entries:
            if self._day(e.start).year != year:
                continue
            p = programs.setdefault(e.program, {"events": 0, "hours": 0.0, "days": set(), "planned": 0})
            p["events"] += 1
            p["hours"] += e.hours
            p["days"].add(self._day(e.start))
            p["planned"] += e.state == "planned"
        out: dict[str, Any] = {
            "year": year,
            "programs": {
                k: {
                    "events": v["events"],
                    "planned": v["planned"],
                    "hours": round(v["hours"], 3),
                    "days": len(v["days"]),
                }
                for k, v in sorted(programs.items())
            },
        }
        if datetime.fromtimestamp(now, self.tz).year == year:
            out["participation"] = self.participation(now).as_dict()
        period = self.period_status(now)
        if period is not None:
            out["period"] = period
        return out
