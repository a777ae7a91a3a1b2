"""Baseline methods: what the site would have drawn had there been no DR event.

Every method is a pure function ``(series, window, calendar, **params) ->
BaselineResult`` over metered readings: no clock, no I/O. Settlement compares
the baseline with the metered load in the event window (docs/baselines.md
describes each rule, its source and the choices made where a rule is vague).

Conventions
-----------
* Time is epoch seconds (a UTC instant, ``float``) inside the maths; local
  clock time exists only through :class:`agent.config.calendar.Calendar`, which is
  what makes "14:00 on day D" right on daylight-saving days.
* ``LoadSeries.values[i]`` is the mean kW over ``[start + i*step_s,
  start + (i+1)*step_s)``. ``None`` is a gap: never interpolated. A look-back
  day with a gap where a rule needs data is skipped (and said so in
  ``skipped_days``), and the rule looks further back where it can.
* A method that cannot compute returns ``available=False`` with a ``reason``;
  it does not raise for missing or short data.
"""

from __future__ import annotations

import logging
import math
import statistics
from bisect import bisect_right
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, Literal, NamedTuple

from agent.config.calendar import Calendar

__all__ = [
    "METHODS",
    "BaselineResult",
    "Energy",
    "EventWindow",
    "LoadSeries",
    "RealtimeBaseline",
    "beijing_5of10",
    "caiso_10in10",
    "compute_all",
    "jiangsu_5day",
    "linear_trend",
    "pjm_high4of5",
    "realtime_15min",
    "realtime_15min_from_samples",
    "realtime_baseline",
    "realtime_window",
    "regression",
]

log = logging.getLogger(__name__)

_EPS = 1e-6  # seconds: tolerance when checking grid alignment of float epochs

#: A span of epoch seconds [start, end).
Period = tuple[float, float]


# ---------------------------------------------------------------------------
# Data structures
# ---------------------------------------------------------------------------


class Energy(NamedTuple):
    """Energy over a window from the data present, and the share of the window present."""

    kwh: float
    coverage: float


@dataclass(frozen=True, slots=True)
class LoadSeries:
    """A regular-interval series of site load in kW (or any regular series, e.g. °C).

    ``start`` is epoch seconds of the first interval's start; ``step_s`` the
    interval length; ``values[i]`` the mean over interval ``i``, ``None`` for
    a gap.
    """

    start: float
    step_s: int
    values: list[float | None]

    def __post_init__(self) -> None:
        if self.step_s <= 0:
            raise ValueError(f"step_s must be positive, got {self.step_s}")
        if not math.isfinite(self.start):
            raise ValueError(f"start must be finite epoch seconds, got {self.start}")

    @classmethod
    def from_datetime(cls, start: datetime, step_s: int, values: Iterable[float | None]) -> LoadSeries:
        """Build from an aware datetime (naive ones are refused: ambiguous)."""
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("start must be timezone-aware")
        return cls(start.timestamp(), step_s, list(values))

    @property
    def end(self) -> float:
        """Epoch seconds just after the last interval."""
        return self.start + len(self.values) * self.step_s

    def time_at(self, i: int) -> float:
        """Epoch seconds at which interval ``i`` starts."""
        return self.start + i * self.step_s

    def is_aligned(self, ts: float) -> bool:
        """True when ``ts`` falls on an interval boundary of this series."""
        k = (ts - self.start) / self.step_s
        return abs(k - round(k)) * self.step_s < _EPS

    def _index(self, ts: float) -> int:
        if not self.is_aligned(ts):
            raise ValueError(f"{ts} is not on the {self.step_s} s grid starting at {self.start}")
        return round((ts - self.start) / self.step_s)

    def window(self, t0: float, t1: float) -> list[float | None]:
        """Values of the intervals in ``[t0, t1)`` (grid-aligned); ``None`` outside the data."""
        i0, i1 = self._index(t0), self._index(t1)
        n = len(self.values)
        return [self.values[i] if 0 <= i < n else None for i in range(i0, i1)]

    def slice(self, t0: float, t1: float) -> LoadSeries:
        """The sub-series ``[t0, t1)`` (grid-aligned), padded with gaps outside the data."""
        return LoadSeries(t0, self.step_s, self.window(t0, t1))

    def _overlaps(self, t0: float, t1: float) -> Iterable[tuple[float, float | None]]:
        """(seconds of overlap, value) for each interval meeting ``[t0, t1)``, gaps included."""
        i0 = math.floor((t0 - self.start) / self.step_s + _EPS / self.step_s)
        i1 = math.ceil((t1 - self.start) / self.step_s - _EPS / self.step_s)
        n = len(self.values)
        for i in range(i0, i1):
            a = max(t0, self.time_at(i))
            b = min(t1, self.time_at(i + 1))
            if b > a:
                yield b - a, (self.values[i] if 0 <= i < n else None)

    def energy_kwh(self, t0: float, t1: float) -> Energy:
        """Energy in ``[t0, t1)`` from the intervals present (partial overlaps pro rata).

        Gaps are not filled: ``kwh`` counts only data present, and
        ``coverage`` says which share of the window that was.
        """
        if t1 <= t0:
            raise ValueError("empty window")
        kwh = covered = 0.0
        for secs, v in self._overlaps(t0, t1):
            if v is not None:
                kwh += v * secs / 3600.0
                covered += secs
        return Energy(kwh, covered / (t1 - t0))

    def mean_kw(self, t0: float, t1: float) -> tuple[float | None, float]:
        """Time-weighted mean kW over the data present in ``[t0, t1)``, and coverage."""
        e = self.energy_kwh(t0, t1)
        if e.coverage <= 0:
            return None, 0.0
        return e.kwh * 3600.0 / (e.coverage * (t1 - t0)), e.coverage


@dataclass(frozen=True, slots=True)
class EventWindow:
    """A DR event: ``[start, end)`` as aware datetimes in the site timezone.

    ``notice_date`` is the invitation day (``jiangsu_5day`` looks back from
    it; default: the event day). ``control_start`` is when shedding begins
    (``realtime_15min`` looks at the 15 minutes before it; default: ``start``).
    """

    start: datetime
    end: datetime
    notice_date: date | None = None
    control_start: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("start", "end", "control_start"):
            v = getattr(self, name)
            if v is not None and (v.tzinfo is None or v.utcoffset() is None):
                raise ValueError(f"EventWindow.{name} must be timezone-aware")
        # Instants, not wall times: aware datetimes in one zone compare by local time, so an event
        # across the autumn change (02:57 CEST to 02:02 CET) would look as if it ended first.
        if self.end.timestamp() <= self.start.timestamp():
            raise ValueError("EventWindow.end must be after start")

    @property
    def start_ts(self) -> float:
        return self.start.timestamp()

    @property
    def end_ts(self) -> float:
        return self.end.timestamp()

    @property
    def control_start_ts(self) -> float:
        return (self.control_start or self.start).timestamp()


@dataclass(slots=True)
class BaselineResult:
    """One method's baseline over the event window.

    ``curve_kw`` has one value per series interval of the event window,
    starting at ``start``. ``coverage`` is the share of the readings the
    method looked at that were present (1.0 = no gaps met). ``skipped_days``
    says why each look-back day examined was not used.
    """

    method: str
    available: bool
    start: float = 0.0
    step_s: int = 0
    curve_kw: list[float] = field(default_factory=list)
    mean_kw: float | None = None
    days_used: list[date] = field(default_factory=list)
    coverage: float = 0.0
    skipped_days: dict[date, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    adjustment_kw: float | None = None
    adjustment_ratio: float | None = None
    reason: str | None = None
    official: bool = False

    @property
    def energy_kwh(self) -> float | None:
        """Baseline energy over the event window."""
        if not self.available:
            return None
        return sum(self.curve_kw) * self.step_s / 3600.0


def _unavailable(method: str, reason: str, **extra: Any) -> BaselineResult:
    return BaselineResult(method=method, available=False, reason=reason, **extra)


# ---------------------------------------------------------------------------
# Shared machinery: event geometry and look-back day collection
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Geometry:
    """The event window resolved against a series and a calendar."""

    t0: float
    t1: float
    n: int
    event_date: date
    start_time: time
    end_time: time
    span_days: int  # 0 unless the window crosses local midnight

    def on(self, cal: Calendar, d: date) -> tuple[float, float]:
        """The same local clock window on day ``d`` (DST-correct)."""
        return cal.at(d, self.start_time), cal.at(d + timedelta(days=self.span_days), self.end_time)


def _geometry(
    method: str, series: LoadSeries, window: EventWindow, cal: Calendar, *, working_only: bool = False
) -> _Geometry | BaselineResult:
    """The event window resolved for ``method``, or its unavailable result: a window off the series'
    grid, or, ``working_only`` (a programme whose rule names working days only), an event on a weekend
    or holiday."""
    t0, t1 = window.start_ts, window.end_ts
    if not (series.is_aligned(t0) and series.is_aligned(t1)):
        return _unavailable(method, f"event window is not on the series' {series.step_s} s grid")
    s = cal.local_datetime(t0)
    e = cal.local_datetime(t1)
    if working_only and (kind := cal.day_type(s.date())) in ("weekend", "holiday"):
        return _unavailable(
            method,
            f"not defined by this programme: the event day {s.date()} is a {kind} and the rule "
            "takes working days only",
        )
    return _Geometry(
        t0=t0,
        t1=t1,
        n=round((t1 - t0) / series.step_s),
        event_date=s.date(),
        start_time=s.time(),
        end_time=e.time(),
        span_days=(e.date() - s.date()).days,
    )


@dataclass(slots=True)
class _Days:
    """Look-back days collected for an averaging rule."""

    profiles: list[tuple[date, list[float]]] = field(default_factory=list)
    skipped: dict[date, str] = field(default_factory=dict)
    present: int = 0
    expected: int = 0

    @property
    def coverage(self) -> float:
        return self.present / self.expected if self.expected else 0.0


def _collect(
    series: LoadSeries,
    cal: Calendar,
    geo: _Geometry,
    candidates: Iterable[date],
    *,
    want: int,
    eligible: Callable[[date], str | None],
    lead_s: float = 0.0,
    max_lookback_days: int,
    accept: Callable[[date, list[float]], str | None] | None = None,
) -> _Days:
    """Walk back through ``candidates`` and keep the first ``want`` usable days.

    A day is usable when ``eligible`` returns None for it, its data in
    ``[window start - lead_s, window end)`` are complete, and ``accept``
    (given the day and its event-window values, lead left out) returns None:
    a rejected day is replaced by the next one back. Profiles hold the whole
    range, lead first.
    """
    lead_n = round(lead_s / series.step_s)
    out = _Days()
    oldest = geo.event_date - timedelta(days=max_lookback_days)
    for d in candidates:
        if len(out.profiles) >= want or d < oldest:
            break
        why = eligible(d)
        if why:
            out.skipped[d] = why
            continue
        a, b = geo.on(cal, d)
        if b - a != geo.t1 - geo.t0:
            out.skipped[d] = "window length differs on this day (DST change inside it)"
            continue
        vals = series.window(a - lead_s, b)
        present = sum(v is not None for v in vals)
        if present == 0:
            out.skipped[d] = "no data"
            continue
        out.present += present
        out.expected += len(vals)
        if present < len(vals):
            out.skipped[d] = f"gap: {len(vals) - present} of {len(vals)} intervals missing"
            continue
        prof = [v for v in vals if v is not None]
        if accept is not None and (why := accept(d, prof[lead_n:])):
            out.skipped[d] = why
            continue
        out.profiles.append((d, prof))
    return out


def _all_days(
    series: LoadSeries,
    cal: Calendar,
    geo: _Geometry,
    candidates: Iterable[date],
    *,
    eligible: Callable[[date], str | None],
    lead_s: float = 0.0,
    max_lookback_days: int,
) -> list[tuple[date, float]]:
    """(day, mean event-window kW) of every usable day in the look-back, newest first: what the
    screens for abnormal and low-usage days compare a day with."""
    got = _collect(
        series,
        cal,
        geo,
        candidates,
        want=1 << 30,
        eligible=eligible,
        lead_s=lead_s,
        max_lookback_days=max_lookback_days,
    )
    lead_n = round(lead_s / series.step_s)
    return [(d, _mean(p[lead_n:])) for d, p in got.profiles]


#: Default of ``min_day_share``: a look-back day whose event-window load is under half the typical
#: day's is not a normal production day (see docs/baselines.md, "Normal days").
NORMAL_DAY_MIN_SHARE = 0.5


def _normal_screen(
    levels: Sequence[tuple[date, float]], share: float | None
) -> Callable[[date, list[float]], str | None] | None:
    """A rule's "normal days" screen: reject a day whose event-window mean is under ``share`` of the
    typical level, the median over the look-back's usable days (robust to the thin days themselves)."""
    if share is None or share <= 0 or not levels:
        return None
    typical = statistics.median(m for _, m in levels)
    if typical <= 0:  # a site exporting in the window: "thin" has no meaning
        return None

    def accept(d: date, prof: list[float]) -> str | None:
        m = _mean(prof)
        if m < share * typical:
            return (
                f"abnormal day: event-window load {m:.1f} kW under {share:.0%} of the typical "
                f"{typical:.1f} kW (median of the look-back's days)"
            )
        return None

    return accept


def _excluded_check(
    excluded: Collection[date], day_ok: Callable[[date], bool], what: str, cal: Calendar
) -> Callable[[date], str | None]:
    def check(d: date) -> str | None:
        if d in excluded:
            return "excluded (DR event day)"
        if cal.is_shutdown(d):
            return "marked shutdown (calendar.shutdown_days)"
        if not day_ok(d):
            return what
        return None

    return check


def _average(profiles: Sequence[Sequence[float]]) -> list[float]:
    k = len(profiles)
    return [sum(col) / k for col in zip(*profiles, strict=True)]


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _result(
    method: str,
    series: LoadSeries,
    geo: _Geometry,
    curve: list[float],
    days: _Days,
    **extra: Any,
) -> BaselineResult:
    """An available result from the days looked at (``extra`` adds or overrides fields)."""
    fields: dict[str, Any] = {
        "days_used": [d for d, _ in days.profiles],
        "coverage": days.coverage,
        "skipped_days": days.skipped,
        **extra,
    }
    return BaselineResult(
        method=method,
        available=True,
        start=geo.t0,
        step_s=series.step_s,
        curve_kw=curve,
        mean_kw=_mean(curve),
        **fields,
    )


def _too_few(method: str, days: _Days, reason: str) -> BaselineResult:
    """Unavailable: the look-back did not yield the days the rule needs (what was skipped, and why)."""
    return _unavailable(method, reason, skipped_days=days.skipped, coverage=days.coverage)


# ---------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------


def jiangsu_5day(
    series: LoadSeries,
    window: EventWindow,
    calendar: Calendar,
    *,
    days: int = 5,
    min_day_share: float | None = NORMAL_DAY_MIN_SHARE,
    excluded_dates: Collection[date] = frozenset(),
    max_lookback_days: int = 45,
) -> BaselineResult:
    """Jiangsu contracted DR: average event-window curve of the last 5 normal production working days.

    Source: Jiangsu provincial DR rules (约定需求响应: 邀约日前最近5个正常生产工作日),
    DOMAIN.md. Days are counted back from the day before the invitation
    (``window.notice_date``, default the event day). "Normal production
    working day": an ordinary working day (:meth:`Calendar.is_typical_day`;
    make-up workdays are not normal), not marked as a shutdown, whose
    event-window load is at least ``min_day_share`` of the typical day's
    (``None`` turns that screen off). Days with a gap in the window are
    skipped; every rejected day is replaced by the next one back. Events on a
    weekend or holiday: not defined by the rule (unavailable).
    """
    method = "jiangsu_5day"
    geo = _geometry(method, series, window, calendar, working_only=True)
    if isinstance(geo, BaselineResult):
        return geo
    ref = window.notice_date or geo.event_date
    eligible = _excluded_check(excluded_dates, calendar.is_typical_day, "not a normal working day", calendar)
    lookback = max_lookback_days + (geo.event_date - ref).days
    levels = _all_days(
        series, calendar, geo, calendar.days_before(ref), eligible=eligible, max_lookback_days=lookback
    )
    got = _collect(
        series,
        calendar,
        geo,
        calendar.days_before(ref),
        want=days,
        eligible=eligible,
        max_lookback_days=lookback,
        accept=_normal_screen(levels, min_day_share),
    )
    if len(got.profiles) < days:
        return _too_few(
            method,
            got,
            f"only {len(got.profiles)} of {days} normal working days with complete data "
            f"in the {max_lookback_days} days before {ref}",
        )
    curve = _average([p for _, p in got.profiles])
    return _result(method, series, geo, curve, got)


def realtime_15min(
    series: LoadSeries,
    window: EventWindow,
    calendar: Calendar,
    *,
    window_s: float = 900.0,
    min_coverage: float = 0.5,
    skip: Iterable[Period] = (),
    excluded_dates: Collection[date] = frozenset(),
) -> BaselineResult:
    """Jiangsu real-time DR: mean load over the 15 minutes before control starts, held flat.

    Source: Jiangsu real-time DR rules (实时需求响应), DOMAIN.md. Partial
    intervals at the edges count pro rata; with less than ``min_coverage`` of
    the 15 minutes present the baseline is unavailable. ``skip``: earlier
    events' control and recovery periods, which the window slides back past
    (:func:`realtime_window`). ``excluded_dates`` is accepted for a uniform
    signature and not used.
    """
    del excluded_dates
    method = "realtime_15min"
    geo = _geometry(method, series, window, calendar)
    if isinstance(geo, BaselineResult):
        return geo
    cs = window.control_start_ts
    pieces = realtime_window(cs, window_s, skip)
    kwh = covered = 0.0
    for a, b in pieces:
        e = series.energy_kwh(a, b)
        kwh += e.kwh
        covered += e.coverage * (b - a)
    coverage = covered / window_s
    mean = kwh * 3600.0 / covered if covered > 0 else None
    if pieces != [(cs - window_s, cs)]:
        span = pieces[0][1] - pieces[-1][0] if pieces else 0.0
        shift_note = [
            f"skipped earlier events' control and recovery: the {window_s / 60:g} min used are "
            f"spread over the {span / 60:.0f} min before control start"
        ]
    else:
        shift_note = []
    if mean is None or coverage < min_coverage:
        return _unavailable(
            method,
            f"only {coverage:.0%} of the {window_s / 60:g} min before control start present",
            coverage=coverage,
        )
    notes = [] if coverage >= 1.0 else [f"{1 - coverage:.0%} of the pre-control window missing"]
    return BaselineResult(
        method=method,
        available=True,
        start=geo.t0,
        step_s=series.step_s,
        curve_kw=[mean] * geo.n,
        mean_kw=mean,
        notes=notes + shift_note,
        days_used=[calendar.local_date(pieces[-1][0] if pieces else cs - window_s)],
        coverage=coverage,
    )


#: Share of the 15 minutes before control start that must be covered for a real-time baseline
#: (below it, control runs on the current load and the settlement says so).
REALTIME_MIN_COVERAGE = 0.5
#: A poll holds for at most this long in the real-time baseline (a stalled meter is not extrapolated).
REALTIME_MAX_HOLD_S = 60.0
#: Readings from this long before control start are enough to compute the real-time baseline
#: (when no earlier event's control or recovery period falls in it: see `realtime_window`).
REALTIME_LOOKBACK_S = 900.0 + REALTIME_MAX_HOLD_S
#: The real-time window slides back past earlier events' periods by at most this much in all.
REALTIME_MAX_SHIFT_S = 6 * 3600.0


def realtime_window(
    control_start_ts: float, window_s: float = 900.0, skip: Iterable[Period] = ()
) -> list[Period]:
    """The pieces of time the real-time baseline averages: the ``window_s`` seconds before control
    start that fall outside every ``skip`` period (earlier events' control and recovery), newest
    first. Without a skip period in the way this is ``[control_start - window_s, control_start)``;
    otherwise the window slides back past the periods, at most ``REALTIME_MAX_SHIFT_S`` in all."""
    blocks = sorted((a, b) for a, b in skip if b > a and a < control_start_ts)
    out: list[Period] = []
    need = window_s
    t = control_start_ts
    floor = control_start_ts - window_s - REALTIME_MAX_SHIFT_S
    while need > 1e-9 and t > floor:
        inside = [blk for blk in blocks if blk[0] < t <= blk[1]]
        if inside:
            t = min(a for a, _ in inside)
            continue
        prev_end = max((b for _, b in blocks if b < t), default=-math.inf)
        a = max(t - need, prev_end, floor)
        if t > a:
            out.append((a, t))
            need -= t - a
        t = a
    return out


@dataclass(frozen=True)
class RealtimeBaseline:
    """The real-time baseline from raw polls: what control steers on and the settlement checks."""

    kw: float | None  # None: less than `min_coverage` of the window covered
    covered_s: float
    window_s: float
    #: The pieces of time averaged (newest first); more than one, or not ending at control start,
    #: when earlier events' control and recovery periods were skipped.
    used: tuple[Period, ...] = ()
    shifted: bool = False

    @property
    def coverage(self) -> float:
        return self.covered_s / self.window_s if self.window_s > 0 else 0.0

    @property
    def quality(self) -> str:
        if self.kw is None:
            q = f"too little history ({self.covered_s:.0f} s of {self.window_s:.0f} s)"
        else:
            q = "ok" if self.coverage >= 0.9 else f"partial: {self.covered_s:.0f} s of history"
        if self.shifted and self.used:
            span = self.used[0][1] - self.used[-1][0]
            q += (
                f"; skipped an earlier event's control and recovery: used {self.window_s / 60:.0f} min "
                f"of load spread over the {span / 60:.0f} min before it"
            )
        return q


def _merged(periods: Iterable[Period]) -> tuple[list[float], list[float]]:
    """Half-open periods [a, b) merged into disjoint ones, as sorted starts and their ends."""
    starts: list[float] = []
    ends: list[float] = []
    for a, b in sorted(p for p in periods if p[1] > p[0]):
        if ends and a <= ends[-1]:
            ends[-1] = max(ends[-1], b)
        else:
            starts.append(a)
            ends.append(b)
    return starts, ends


def realtime_baseline(
    samples: Iterable[tuple[float, float]],
    control_start_ts: float,
    window_s: float = 900.0,
    *,
    max_hold_s: float = REALTIME_MAX_HOLD_S,
    min_coverage: float = REALTIME_MIN_COVERAGE,
    skip: Iterable[Period] = (),
) -> RealtimeBaseline:
    """Time-weighted mean kW over ``[control_start - window_s, control_start)`` from raw polls.

    The one real-time baseline: the live control loop computes it from its
    recent polls when control starts, the settlement from the same polls as
    stored, so both agree to the watt. ``samples`` are (epoch_s, kW) at any
    spacing, in any order. Each reading holds until the next one, but at most
    ``max_hold_s``; the reading in force at the window start counts too.
    ``kw`` is None when less than ``min_coverage`` of the window is covered.
    ``skip``: earlier events' control and recovery periods; their readings are
    not the site's normal load, so the window slides back past them
    (:func:`realtime_window`) and the result says so.
    """
    skip = list(skip)
    pieces = realtime_window(control_start_ts, window_s, skip)
    shifted = pieces != [(control_start_ts - window_s, control_start_ts)]
    # Only readings after `oldest` can count (an older one has stopped holding before every
    # piece starts; a second of margin against rounding), and none in a skipped period. Control
    # calls this with up to two hours of polls as an event starts: one cheap pass, the skipped
    # periods merged and bisected.
    oldest = min((a for a, _ in pieces), default=control_start_ts) - max_hold_s - 1.0
    starts, ends = _merged(skip)
    pts = []
    for s in samples:
        t = s[0]
        if oldest <= t < control_start_ts:
            i = bisect_right(starts, t) - 1
            if i < 0 or t >= ends[i]:
                pts.append(s)
    pts.sort()
    times = [t for t, _ in pts]
    n = len(pts)
    acc = covered = 0.0
    for t0, t1 in pieces:
        # Start from the last reading at or before t0: it is in force at t0.
        i = max(0, bisect_right(times, t0) - 1)
        while i < n:
            t, kw = pts[i]
            if t >= t1:
                break
            nxt = times[i + 1] if i + 1 < n else t1
            a = t if t > t0 else t0
            b = min(nxt, t + max_hold_s, t1)
            if b > a:
                acc += kw * (b - a)
                covered += b - a
            i += 1
    used = tuple(pieces)
    if covered <= 0 or covered < min_coverage * window_s:
        return RealtimeBaseline(None, covered, window_s, used, shifted)
    return RealtimeBaseline(acc / covered, covered, window_s, used, shifted)


def realtime_15min_from_samples(
    samples: Sequence[tuple[float, float]],
    control_start_ts: float,
    window_s: float = 900,
    *,
    max_hold_s: float = REALTIME_MAX_HOLD_S,
    min_coverage: float = REALTIME_MIN_COVERAGE,
    skip: Iterable[Period] = (),
) -> float | None:
    """`realtime_baseline()`'s kW alone."""
    return realtime_baseline(
        samples, control_start_ts, window_s, max_hold_s=max_hold_s, min_coverage=min_coverage, skip=skip
    ).kw


def beijing_5of10(
    series: LoadSeries,
    window: EventWindow,
    calendar: Calendar,
    *,
    first_offset: int = 2,
    pool: int = 10,
    top: int = 5,
    rank_by: Literal["energy", "peak"] = "energy",
    min_day_coverage: float = 0.9,
    min_day_share: float | None = NORMAL_DAY_MIN_SHARE,
    excluded_dates: Collection[date] = frozenset(),
    max_lookback_days: int = 60,
) -> BaselineResult:
    """Beijing: of the 10 typical days from D-2 back, average the 5 with the highest daily load.

    Source: Beijing DR baseline rule, DOMAIN.md. The span starts at
    ``D - first_offset`` (D-2) and covers ``pool`` days (D-2…D-11); atypical
    days (weekends, holidays, make-up days, excluded event days) are dropped
    and the span back-filled, so in effect it takes the ``pool`` most recent
    typical days from D-2 back. "Daily load" is ambiguous: ``rank_by="energy"``
    ranks by the whole day's mean kW (= daily energy / hours, fair on 23/25 h
    DST days), ``"peak"`` by the day's highest interval. A day is used when
    its event window is complete and at least ``min_day_coverage`` of the day
    is present (ranking then uses the data present). Atypical also: days
    marked as shutdowns and days whose event-window load is under
    ``min_day_share`` of the typical day's (``None``: no such screen). Every
    dropped day is back-filled from further back (补足10天). Events on a
    weekend or holiday: not defined by the rule (unavailable).
    """
    method = "beijing_5of10"
    if rank_by not in ("energy", "peak"):
        raise ValueError(f"rank_by must be 'energy' or 'peak', got {rank_by!r}")
    geo = _geometry(method, series, window, calendar, working_only=True)
    if isinstance(geo, BaselineResult):
        return geo
    eligible = _excluded_check(excluded_dates, calendar.is_typical_day, "not a typical day", calendar)

    def candidates() -> Iterable[date]:
        return calendar.days_before(geo.event_date, first_offset=first_offset)

    thin = _normal_screen(
        _all_days(
            series, calendar, geo, candidates(), eligible=eligible, max_lookback_days=max_lookback_days
        ),
        min_day_share,
    )
    scores: dict[date, float] = {}

    def accept(d: date, prof: list[float]) -> str | None:
        day_vals = series.window(*calendar.day_bounds(d))
        present = [v for v in day_vals if v is not None]
        if len(present) < min_day_coverage * len(day_vals):
            return f"day only {len(present) / len(day_vals):.0%} present"
        if thin is not None and (why := thin(d, prof)):
            return why
        scores[d] = _mean(present) if rank_by == "energy" else max(present)
        return None

    got = _collect(
        series,
        calendar,
        geo,
        candidates(),
        want=pool,
        eligible=eligible,
        max_lookback_days=max_lookback_days,
        accept=accept,
    )
    if len(got.profiles) < pool:
        return _too_few(
            method,
            got,
            f"only {len(got.profiles)} of {pool} typical days with enough data "
            f"in the {max_lookback_days} days before the event",
        )
    ranked = [(scores[d], d, p) for d, p in got.profiles]
    # Highest first; on a tie the more recent day wins (deterministic).
    ranked.sort(key=lambda r: (r[0], r[1]), reverse=True)
    chosen = sorted(ranked[:top], key=lambda r: r[1], reverse=True)
    got.profiles = [(d, p) for _, d, p in chosen]
    curve = _average([p for _, d, p in chosen])
    notes = [f"ranked {pool} typical days by daily {rank_by}: {[d.isoformat() for _, d, _ in ranked]}"]
    return _result(method, series, geo, curve, got, notes=notes)


def _pre_event(
    series: LoadSeries, geo: _Geometry, hours: tuple[float, float]
) -> tuple[float, float, float | None, float]:
    """(lead seconds, lead window length, actual mean kW, coverage) for a day-of adjustment."""
    far, near = hours
    if far <= near:
        raise ValueError(f"adjustment window must be (far, near) hours with far > near, got {hours}")
    lead_s, length_s = far * 3600.0, (far - near) * 3600.0
    actual, cov = series.mean_kw(geo.t0 - lead_s, geo.t0 - lead_s + length_s)
    return lead_s, length_s, actual, cov


def _iso_lookback(
    method: str,
    series: LoadSeries,
    window: EventWindow,
    calendar: Calendar,
    adjust_hours: tuple[float, float] | None,
    days: int,
    excluded_dates: Collection[date],
    max_lookback_days: int,
    *,
    weekend_days: int,
    same_type: bool,
    low_usage_share: float | None = None,
) -> BaselineResult | tuple[_Geometry, tuple[float, float, float | None, float], _Days, int, list[str]]:
    """What the ISO methods (CAISO, PJM) share: the window's geometry, the pre-event hours they adjust
    on, and the look-back days with complete data from those hours on: for a working-day event the
    ``days`` most recent working, non-event days; for a weekend or holiday event the ``weekend_days``
    most recent weekend and holiday days (``same_type``: of the same PJM class, Saturday or
    Sunday/holiday). ``low_usage_share``: PJM's screen, see :func:`_low_usage_days`. Also returns
    how many days the rule wants and a note on the day class. An unavailable result when the window
    does not fit the series."""
    geo = _geometry(method, series, window, calendar)
    if isinstance(geo, BaselineResult):
        return geo
    pre = _pre_event(series, geo, adjust_hours) if adjust_hours is not None else (0.0, 0.0, None, 0.0)
    notes: list[str] = []
    day_ok: Callable[[date], bool]
    if calendar.is_working_day(geo.event_date):
        day_ok, what, want = calendar.is_working_day, "not a working day", days
    elif same_type:
        kind = calendar.same_type(geo.event_date)
        day_ok, what, want = (lambda d: calendar.same_type(d) == kind), f"not a {kind} day", weekend_days
        notes.append(f"{calendar.day_type(geo.event_date)} event: {kind} days only")
    else:
        day_ok, what, want = (lambda d: not calendar.is_working_day(d)), "a working day", weekend_days
        notes.append(f"{calendar.day_type(geo.event_date)} event: weekend and holiday days only")
    eligible = _excluded_check(excluded_dates, day_ok, what, calendar)
    accept = None
    if low_usage_share is not None:
        levels = _all_days(
            series,
            calendar,
            geo,
            calendar.days_before(geo.event_date),
            eligible=eligible,
            lead_s=pre[0],
            max_lookback_days=max_lookback_days,
        )
        low = _low_usage_days(levels, want, low_usage_share)
        accept = lambda d, _p: low.get(d)  # noqa: E731
    got = _collect(
        series,
        calendar,
        geo,
        calendar.days_before(geo.event_date),
        want=want,
        eligible=eligible,
        lead_s=pre[0],
        max_lookback_days=max_lookback_days,
        accept=accept,
    )
    return geo, pre, got, want, notes


#: PJM's low-usage screen: a day under this share of the basis days' average event-period usage is replaced.
PJM_LOW_USAGE_SHARE = 0.25


def _low_usage_days(levels: Sequence[tuple[date, float]], want: int, share: float) -> dict[date, str]:
    """PJM Manual 11's low-usage screen: of the ``want`` most recent days, any whose event-period mean
    is under ``share`` of their average is replaced by the next day back, until none is (or the days
    run out). Returns the rejected days with why."""
    pool = list(levels)
    low: dict[date, str] = {}
    while True:
        basis = pool[:want]
        if not basis:
            return low
        avg = _mean([m for _, m in basis])
        under = [(d, m) for d, m in basis if avg > 0 and m < share * avg]
        if not under:
            return low
        for d, m in under:
            low[d] = (
                f"low-usage day: event-period load {m:.1f} kW under {share:.0%} of the average {avg:.1f} kW"
            )
        pool = [dm for dm in pool if dm[0] not in low]


def caiso_10in10(
    series: LoadSeries,
    window: EventWindow,
    calendar: Calendar,
    *,
    days: int = 10,
    min_days: int = 5,
    adjust_hours: tuple[float, float] | None = (4.0, 1.0),
    cap: float = 0.20,
    min_adjust_coverage: float = 0.9,
    weekend_days: int = 4,
    excluded_dates: Collection[date] = frozenset(),
    max_lookback_days: int = 45,
) -> BaselineResult:
    """CAISO "10-in-10": average of the 10 most recent eligible days, with a capped day-of ratio.

    Source: CAISO load-impact / DRAM baseline ("10 in 10 with day-of
    adjustment"). Eligible: working days (make-up days included), not DR
    event days, within ``max_lookback_days``; as few as ``min_days`` are
    accepted (noted). Day-of adjustment, multiplicative: actual / baseline
    mean over ``[start - 4 h, start - 1 h)`` (``adjust_hours=(4, 1)``, i.e.
    hours -4..-2, skipping the hour just before, when pre-cooling or notice
    reactions distort the load), clamped to ``1 ± cap``. ``adjust_hours=None``
    disables it. Look-back days need complete data from 4 h before the window
    to its end. Weekend and holiday events: "4-in-4", the ``weekend_days``
    most recent weekend and holiday days (all of them needed), same adjustment.
    """
    method = "caiso_10in10"
    found = _iso_lookback(
        method,
        series,
        window,
        calendar,
        adjust_hours,
        days,
        excluded_dates,
        max_lookback_days,
        weekend_days=weekend_days,
        same_type=False,
    )
    if isinstance(found, BaselineResult):
        return found
    geo, (lead_s, length_s, actual, act_cov), got, want, notes = found
    if want != days:
        days = min_days = want
    if len(got.profiles) < min_days:
        return _too_few(
            method,
            got,
            f"only {len(got.profiles)} eligible days (need {min_days}) "
            f"in the {max_lookback_days} days before the event",
        )
    lead_n = round(lead_s / series.step_s)
    full = _average([p for _, p in got.profiles])
    curve = full[lead_n:]
    if len(got.profiles) < days:
        notes.append(f"only {len(got.profiles)} of {days} eligible days found")
    ratio: float | None = None
    adj_kw: float | None = None
    if adjust_hours is not None:
        base_adj = _mean(full[: round(length_s / series.step_s)])
        if actual is None or act_cov < min_adjust_coverage:
            notes.append(f"no day-of adjustment: only {act_cov:.0%} of pre-event hours present")
        elif base_adj <= 0:
            notes.append("no day-of adjustment: baseline in pre-event hours is not positive")
        else:
            raw = actual / base_adj
            ratio = min(max(raw, 1.0 - cap), 1.0 + cap)
            if ratio != raw:
                notes.append(f"day-of ratio {raw:.3f} capped to {ratio:.3f}")
            unadjusted = _mean(curve)
            curve = [v * ratio for v in curve]
            adj_kw = _mean(curve) - unadjusted
    return _result(method, series, geo, curve, got, notes=notes, adjustment_ratio=ratio, adjustment_kw=adj_kw)


def pjm_high4of5(
    series: LoadSeries,
    window: EventWindow,
    calendar: Calendar,
    *,
    days: int = 5,
    top: int = 4,
    adjust_hours: tuple[float, float] | None = (4.0, 1.0),
    min_adjust_coverage: float = 0.9,
    weekend_days: int = 3,
    weekend_top: int = 2,
    low_usage_share: float | None = PJM_LOW_USAGE_SHARE,
    excluded_dates: Collection[date] = frozenset(),
    max_lookback_days: int = 45,
) -> BaselineResult:
    """PJM "High 4 of 5" with symmetric additive adjustment.

    Source: PJM Manual 11, Customer Baseline Load (economic load response).
    Of the 5 most recent eligible days (working, non-event), keep the 4 with
    the highest mean event-window load and average them. Low-usage screen:
    a day whose event-period load is under 25 % of the average of the basis
    days is replaced by the next day back (``low_usage_share``, None: off).
    Weekend and holiday events: "High 2 of 3" of the 3 most recent days of
    the same class (Saturdays; Sundays and holidays). Adjustment: actual
    minus baseline mean over ``[start - 4 h, start - 1 h)`` (hours -4..-2,
    ending an hour before the event), added to every interval, up or down.
    """
    method = "pjm_high4of5"
    found = _iso_lookback(
        method,
        series,
        window,
        calendar,
        adjust_hours,
        days,
        excluded_dates,
        max_lookback_days,
        weekend_days=weekend_days,
        same_type=True,
        low_usage_share=low_usage_share,
    )
    if isinstance(found, BaselineResult):
        return found
    geo, (lead_s, length_s, actual, act_cov), got, want, notes = found
    if want != days:
        days, top = want, weekend_top
    if len(got.profiles) < days:
        return _too_few(
            method,
            got,
            f"only {len(got.profiles)} of {days} eligible days "
            f"in the {max_lookback_days} days before the event",
        )
    lead_n = round(lead_s / series.step_s)
    ranked = sorted(got.profiles, key=lambda dp: (_mean(dp[1][lead_n:]), dp[0]), reverse=True)
    got.profiles = sorted(ranked[:top], key=lambda dp: dp[0], reverse=True)
    full = _average([p for _, p in got.profiles])
    curve = full[lead_n:]
    adj_kw: float | None = None
    if adjust_hours is not None:
        if actual is None or act_cov < min_adjust_coverage:
            notes.append(f"no adjustment: only {act_cov:.0%} of pre-event hours present")
        else:
            adj_kw = actual - _mean(full[: round(length_s / series.step_s)])
            curve = [v + adj_kw for v in curve]
    return _result(method, series, geo, curve, got, notes=notes, adjustment_kw=adj_kw)


def linear_trend(
    series: LoadSeries,
    window: EventWindow,
    calendar: Calendar,
    *,
    days: int = 10,
    min_days: int = 5,
    excluded_dates: Collection[date] = frozenset(),
    max_lookback_days: int = 45,
) -> BaselineResult:
    """Per-interval least-squares line over the preceding eligible days, extrapolated to D.

    Source: the linear-extrapolation family named for CAISO / NYISO / ISO-NE
    in DOMAIN.md; it answers the weakness of flat averages when load grows
    day by day. x is the calendar-day offset from the event (so a weekend
    gap stretches the line correctly), y the interval's kW on that day.
    Eligible days as in :func:`caiso_10in10`. Not clamped: a steep trend
    extrapolates steeply, which is the method. Weekend and holiday events:
    not defined by the family as digested (unavailable).
    """
    method = "linear_trend"
    geo = _geometry(method, series, window, calendar, working_only=True)
    if isinstance(geo, BaselineResult):
        return geo
    got = _collect(
        series,
        calendar,
        geo,
        calendar.days_before(geo.event_date),
        want=days,
        eligible=_excluded_check(excluded_dates, calendar.is_working_day, "not a working day", calendar),
        max_lookback_days=max_lookback_days,
    )
    if len(got.profiles) < max(min_days, 2):
        return _too_few(
            method,
            got,
            f"only {len(got.profiles)} eligible days (need {max(min_days, 2)}) "
            f"in the {max_lookback_days} days before the event",
        )
    xs = [float((d - geo.event_date).days) for d, _ in got.profiles]
    xbar = _mean(xs)
    sxx = sum((x - xbar) ** 2 for x in xs)
    curve = []
    for col in zip(*(p for _, p in got.profiles), strict=True):
        ybar = _mean(col)
        slope = sum((x - xbar) * (y - ybar) for x, y in zip(xs, col, strict=True)) / sxx
        curve.append(ybar - slope * xbar)  # the line at x = 0, the event day
    notes = []
    if len(got.profiles) < days:
        notes.append(f"only {len(got.profiles)} of {days} eligible days found")
    return _result(method, series, geo, curve, got, notes=notes)


def _solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Solve ``a x = b`` by Gaussian elimination with partial pivoting; None if singular."""
    n = len(b)
    m = [[*row, b[i]] for i, row in enumerate(a)]
    scale = max((abs(m[i][i]) for i in range(n)), default=0.0) or 1.0
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        if abs(m[p][c]) <= 1e-10 * scale:
            return None
        m[c], m[p] = m[p], m[c]
        piv = m[c][c]
        for r in range(c + 1, n):
            f = m[r][c] / piv
            if f:
                row_r, row_c = m[r], m[c]
                for k in range(c, n + 1):
                    row_r[k] -= f * row_c[k]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        s = m[r][n] - sum(m[r][k] * x[k] for k in range(r + 1, n))
        x[r] = s / m[r][r]
    return x


def _ols(rows: Sequence[Sequence[tuple[int, float]]], ys: Sequence[float], p: int) -> list[float] | None:
    """Ordinary least squares by the normal equations over sparse rows of (column, value)."""
    xtx = [[0.0] * p for _ in range(p)]
    xty = [0.0] * p
    for row, y in zip(rows, ys, strict=True):
        for i, vi in row:
            xty[i] += vi * y
            xi = xtx[i]
            for j, vj in row:
                xi[j] += vi * vj
    return _solve(xtx, xty)


def regression(
    series: LoadSeries,
    window: EventWindow,
    calendar: Calendar,
    *,
    days: int = 60,
    temperature: LoadSeries | None = None,
    cooling_base_c: float | None = 18.0,
    tod_step_s: int = 3600,
    min_rows_per_cell: int = 3,
    by_weekday: bool = False,
    excluded_dates: Collection[date] = frozenset(),
) -> BaselineResult:
    """OLS of load on time of day × day type, plus temperature when given; predicts the window.

    Source: the regression family (PJM / LBNL) named in DOMAIN.md. Design:
    one dummy per (working day?, time-of-day slot) cell, slot =
    ``tod_step_s`` of local clock time (hour dummies by default) — the
    interaction lets weekends have their own daily shape; with temperature
    (°C series), a linear term and a cooling-degree term ``max(0, T -
    cooling_base_c)`` shared by all cells (dropped if collinear, e.g. every
    hour above the base). Fit on the ``days`` calendar days before the event,
    minus excluded event days; normal equations solved here, stdlib only.
    ``by_weekday`` gives each working weekday its own cells (hour of week,
    as CalTRACK), non-working days sharing one set.
    """
    method = "regression"
    geo = _geometry(method, series, window, calendar)
    if isinstance(geo, BaselineResult):
        return geo
    if 86400 % tod_step_s:
        raise ValueError("tod_step_s must divide a day")

    def slot(ts: float) -> int:
        lt = calendar.local_datetime(ts)
        return (lt.hour * 3600 + lt.minute * 60 + lt.second) // tod_step_s

    same_grid = (
        temperature is not None
        and temperature.step_s == series.step_s
        and temperature.is_aligned(series.start)
    )

    def temp_at(ts: float) -> float | None:
        if temperature is None:
            return None
        if same_grid:  # the common case, and the hot loop: index, don't integrate
            i = round((ts - temperature.start) / temperature.step_s)
            return temperature.values[i] if 0 <= i < len(temperature.values) else None
        t, cov = temperature.mean_kw(ts, ts + series.step_s)
        return t if cov > 0 else None

    n_slots = 86400 // tod_step_s

    def day_key(d: date) -> int:
        working = calendar.is_working_day(d)
        if by_weekday:
            return d.weekday() if working else 7
        return int(working)

    skipped: dict[date, str] = {}
    samples: list[tuple[int, float | None, float]] = []  # (cell, temperature, kW)
    present = expected = 0
    eligible = _excluded_check(excluded_dates, lambda _d: True, "", calendar)
    for k in range(1, days + 1):
        d = geo.event_date - timedelta(days=k)
        if why := eligible(d):
            skipped[d] = why
            continue
        a, b = calendar.day_bounds(d)
        a = max(a, min(b, series.start))  # clip to the data, but count gaps inside it
        if a >= b:
            skipped[d] = "no data"
            continue
        i0 = math.ceil((a - series.start) / series.step_s - _EPS)
        work = day_key(d)
        day_n = 0
        for i in range(i0, len(series.values)):
            ts = series.time_at(i)
            if ts >= b - _EPS:
                break
            expected += 1
            v = series.values[i]
            if v is None:
                continue
            present += 1
            t = temp_at(ts)
            if temperature is not None and t is None:
                continue
            samples.append((work * n_slots + slot(ts), t, v))
            day_n += 1
        if day_n == 0:
            skipped[d] = "no data"
    ev_work = day_key(geo.event_date)
    targets = [
        (ev_work * n_slots + slot(ts), temp_at(ts))
        for ts in (geo.t0 + j * series.step_s for j in range(geo.n))
    ]
    looked = _Days(skipped=skipped, present=present, expected=expected)
    coverage = looked.coverage
    counts: dict[int, int] = {}
    for cell, _, _ in samples:
        counts[cell] = counts.get(cell, 0) + 1
    thin = sorted({c for c, _ in targets if counts.get(c, 0) < min_rows_per_cell})
    if thin:
        return _too_few(
            method,
            looked,
            f"fewer than {min_rows_per_cell} training readings for {len(thin)} time-of-day "
            f"cell(s) of the event window in the {days} days before the event",
        )
    if temperature is not None and any(t is None for _, t in targets):
        return _unavailable(method, "temperature missing in the event window", coverage=coverage)

    cells = sorted(counts)
    col = {c: i for i, c in enumerate(cells)}
    notes: list[str] = []
    terms: list[str] = []
    if temperature is not None:
        terms = ["temp", "cdd"] if cooling_base_c is not None else ["temp"]
    base = cooling_base_c if cooling_base_c is not None else 0.0

    def features(cell: int, t: float | None, terms: list[str]) -> list[tuple[int, float]]:
        row = [(col[cell], 1.0)]
        for k, term in enumerate(terms):
            assert t is not None
            row.append((len(cells) + k, t if term == "temp" else max(0.0, t - base)))
        return row

    ys = [y for _, _, y in samples]
    while True:
        rows = [features(c, t, terms) for c, t, _ in samples]
        beta = _ols(rows, ys, len(cells) + len(terms))
        if beta is not None:
            break
        if not terms:
            return _unavailable(method, "design matrix is singular", coverage=coverage)
        notes.append(f"dropped the '{terms[-1]}' term: collinear in the training data")
        terms = terms[:-1]
    curve = [sum(beta[i] * v for i, v in features(c, t, terms)) for c, t in targets]
    if temperature is not None and terms:
        notes.append(
            "temperature terms: "
            + ", ".join(f"{term}={beta[len(cells) + k]:.4g}" for k, term in enumerate(terms))
        )
    if not calendar.is_working_day(geo.event_date):
        notes.append(f"{calendar.day_type(geo.event_date)} event: predicted from the non-working-day cells")
    used = sorted(
        {geo.event_date - timedelta(days=k) for k in range(1, days + 1)} - set(skipped),
        reverse=True,
    )
    return _result(method, series, geo, curve, looked, days_used=used, notes=notes)


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

Method = Callable[..., BaselineResult]

#: One function per method name of `agent.config.model.BASELINE_METHODS` (configuration owns the
#: names and validates `official_baseline` against them; a unit test holds the two equal).
METHODS: dict[str, Method] = {
    "jiangsu_5day": jiangsu_5day,
    "realtime_15min": realtime_15min,
    "beijing_5of10": beijing_5of10,
    "caiso_10in10": caiso_10in10,
    "pjm_high4of5": pjm_high4of5,
    "linear_trend": linear_trend,
    "regression": regression,
}


def compute_all(
    series: LoadSeries,
    window: EventWindow,
    calendar: Calendar,
    official: str,
    *,
    excluded_dates: Collection[date] = frozenset(),
    params: dict[str, dict[str, Any]] | None = None,
) -> dict[str, BaselineResult]:
    """Every registered method side by side, the ``official`` one marked.

    ``params`` holds per-method keyword arguments (e.g. ``{"regression":
    {"temperature": temps}}``). A method that lacks data comes back
    unavailable with its reason; one that fails unexpectedly is logged and
    also comes back unavailable, so one bad rule never hides the others.
    An unknown ``official`` or ``params`` key is a configuration error.
    """
    if official not in METHODS:
        raise ValueError(f"unknown official baseline {official!r}; known: {sorted(METHODS)}")
    params = params or {}
    unknown = set(params) - set(METHODS)
    if unknown:
        raise ValueError(f"params for unknown baseline methods: {sorted(unknown)}")
    out: dict[str, BaselineResult] = {}
    for name, fn in METHODS.items():
        kwargs = {"excluded_dates": excluded_dates, **params.get(name, {})}
        try:
            res = fn(series, window, calendar, **kwargs)
        except Exception as exc:  # one broken method must not hide the others
            log.exception("baseline method=%s failed", name)
            res = _unavailable(name, f"error: {exc!r}")
        res.official = name == official
        out[name] = res
    return out
