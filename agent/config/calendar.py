"""Working-day calendar of a site: timezone, weekends, holidays, make-up workdays.

Baseline rules choose their look-back days by day type ("the last 5 normal
working days", "drop weekends and holidays"), and compare "the same clock time"
across days. Both depend on the site's local calendar, which this module owns:
it turns local dates and clock times into epoch seconds and back, correctly on
daylight-saving days (a 23 h or 25 h local day).

The lists themselves (public holidays, China's make-up workdays 调休) are
regional policy and come from configuration, never from code.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

__all__ = ["Calendar", "DayType"]

DayType = Literal["working", "makeup", "weekend", "holiday"]


def _frozen_dates(values: Iterable[date]) -> frozenset[date]:
    out = frozenset(values)
    for d in out:
        # datetime is a subclass of date; a datetime here would never compare
        # equal to a plain date and silently match nothing.
        if isinstance(d, datetime) or not isinstance(d, date):
            raise TypeError(f"expected datetime.date, got {d!r}")
    return out


@dataclass(frozen=True, slots=True)
class Calendar:
    """A site's calendar.

    ``tz`` is an IANA zone name. ``weekend`` holds ``date.weekday()`` numbers
    (Monday = 0). ``shutdowns`` are days the operator marked as plant
    shutdowns (or otherwise abnormal): their day type is unchanged, but no
    look-back baseline uses them (:meth:`is_shutdown`). Precedence: a make-up working day is a working day even on a
    weekend; a holiday is not a working day even on a weekday.
    """

    tz: str = "Asia/Shanghai"
    holidays: frozenset[date] = field(default_factory=frozenset)
    extra_working_days: frozenset[date] = field(default_factory=frozenset)
    weekend: frozenset[int] = frozenset({5, 6})
    shutdowns: frozenset[date] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        ZoneInfo(self.tz)  # raises ZoneInfoNotFoundError for a bad name, early
        object.__setattr__(self, "shutdowns", _frozen_dates(self.shutdowns))
        holidays = _frozen_dates(self.holidays)
        extra = _frozen_dates(self.extra_working_days)
        both = holidays & extra
        if both:
            raise ValueError(f"dates both holiday and working day: {sorted(both)}")
        weekend = frozenset(self.weekend)
        if not weekend <= set(range(7)):
            raise ValueError(f"weekend days must be 0..6 (Monday = 0), got {sorted(weekend)}")
        object.__setattr__(self, "holidays", holidays)
        object.__setattr__(self, "extra_working_days", extra)
        object.__setattr__(self, "weekend", weekend)

    @property
    def zone(self) -> ZoneInfo:
        """The site's timezone (ZoneInfo instances are cached by key)."""
        return ZoneInfo(self.tz)

    # -- day types -------------------------------------------------------

    def day_type(self, d: date) -> DayType:
        """Classify a local date; make-up days are checked first, then holidays."""
        if d in self.extra_working_days:
            return "makeup"
        if d in self.holidays:
            return "holiday"
        if d.weekday() in self.weekend:
            return "weekend"
        return "working"

    def is_working_day(self, d: date) -> bool:
        """True for ordinary working days and make-up working days."""
        return self.day_type(d) in ("working", "makeup")

    def is_typical_day(self, d: date) -> bool:
        """True for an ordinary working day only.

        Make-up working days count as working days but not as typical: a
        plant often runs them short-staffed, and the Chinese rules speak of
        "normal working days" (正常工作日). Rules that want them use
        :meth:`is_working_day`.
        """
        return self.day_type(d) == "working"

    def is_shutdown(self, d: date) -> bool:
        """True for a day the operator marked as a shutdown: never a look-back day of a baseline."""
        return d in self.shutdowns

    def same_type(self, d: date) -> str:
        """PJM's day classes for weekend and holiday baselines: "sunday/holiday" for holidays and
        the last weekend day, the weekday's own class for other weekend days, "working" otherwise."""
        if self.is_working_day(d):
            return "working"
        if d in self.holidays or d.weekday() == max(self.weekend):
            return "sunday/holiday"
        return f"weekend day {d.weekday()}"

    # -- local time <-> epoch seconds --------------------------------------

    def local_datetime(self, ts: float) -> datetime:
        """Aware local datetime of an epoch-seconds instant."""
        return datetime.fromtimestamp(ts, self.zone)

    def local_date(self, ts: float) -> date:
        """Local calendar date of an epoch-seconds instant."""
        return self.local_datetime(ts).date()

    def at(self, d: date, t: time) -> float:
        """Epoch seconds of local clock time ``t`` on local date ``d``.

        On a daylight-saving day this is the same clock time, not the same
        offset from midnight. A clock time skipped by the spring-forward jump
        maps as if the old offset still applied (PEP 495, fold=0).
        """
        naive_t = t.replace(tzinfo=None)
        return datetime.combine(d, naive_t, tzinfo=self.zone).timestamp()

    def day_bounds(self, d: date) -> tuple[float, float]:
        """Epoch seconds of local midnight starting ``d`` and the next one (23–25 h apart)."""
        return self.at(d, time(0)), self.at(d + timedelta(days=1), time(0))

    def days_before(self, d: date, *, first_offset: int = 1) -> Iterator[date]:
        """Dates ``d - first_offset``, ``d - first_offset - 1``, … going back forever."""
        cur = d - timedelta(days=first_offset)
        while True:
            yield cur
            cur -= timedelta(days=1)
