"""The books: each event's settlement from the metering history, and the money side of the year.

`settle_event` computes an event's whole settlement record, in this module
only: it reads the event window's meter readings and ten weeks of 1-minute
history from the store (on the store's thread), runs every baseline method
(the real-time one by `agent.settlement.baseline.realtime_baseline`, the function
control started on), settles on the contract's official one, lists the
others beside it and adds the control figures. The lifecycle only stores
and publishes the record. `year_books` adds
what the ledger (`agent/settlement/ledger.py`: events, hours, days, participation)
does not know: verified kW and the estimated incentive, year to date, with
the participation rule applied (Jiangsu: fewer than 10 responses pays pro
rata, fewer than 5 is a default).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from agent.config.calendar import Calendar
from agent.config.model import ContractConfig, SiteConfig
from agent.platform.store import AsyncStore, Store
from agent.settlement.baseline import (
    REALTIME_MAX_HOLD_S,
    BaselineResult,
    EventWindow,
    Period,
    compute_all,
    realtime_baseline,
    realtime_window,
)
from agent.settlement.formula import settle
from agent.settlement.history import LOOKBACK_DAYS, TEMPERATURE_KEY, control_periods, load_series
from agent.settlement.ledger import Ledger, LedgerEntry
from agent.settlement.model import Settlement

if TYPE_CHECKING:
    from agent.control.controller import EventControl

log = logging.getLogger("dr_agent")

#: Stored event states whose day is not a normal day any more (never a look-back day of a baseline).
RAN_STATES = frozenset({"active", "completed"})
#: The real-time baselines of control and settlement differ by more than this: the settlement says so.
AGREE_KW = 0.0005


def incentive_rate(contract: ContractConfig, program: str, notice_s: float | None) -> tuple[float, str]:
    """(CNY per verified kW, which rule gave it): the shortest notice tier covering the notice, else the base rate."""
    tiers = sorted(
        (t for t in contract.incentive_by_notice if t.program in (None, program)),
        key=lambda t: t.notice_up_to_s,
    )
    if tiers and notice_s is None:
        return contract.incentive_cny_per_kw, "base rate (notice time unknown)"
    for t in tiers:
        if notice_s is not None and notice_s <= t.notice_up_to_s:
            return t.cny_per_kw, f"notice {notice_s / 60:.0f} min <= {t.notice_up_to_s / 60:.0f} min"
    return contract.incentive_cny_per_kw, "base rate"


def _minute_floor(ts: float) -> float:
    return math.floor(ts / 60) * 60


def _minute_ceil(ts: float) -> float:
    return math.ceil(ts / 60) * 60


@dataclass
class HistoryBaselines:
    """Every method over the event window, and what the window's meter readings were."""

    results: dict[str, BaselineResult]
    samples: list[tuple[float, float]]
    window_start: float
    notes: list[str]


def history_baselines(
    store: Store,
    *,
    meter: str,
    calendar: Calendar,
    official: str,
    start: float,
    stop: float,
    control_start: float,
    notice_date: date | None,
    excluded: Iterable[date],
    live_baseline_kw: float | None,
    temperature: bool = False,
    skip: Sequence[Period] = (),
    normal_day_min_share: float | None = 0.5,
    realtime_min_history_s: float = 450.0,
) -> HistoryBaselines:
    """Synchronous (run it on the store's thread): load history, compute every baseline.

    realtime_15min is taken from the poll-rate readings (what control used,
    finer than minutes), falling back to the live value, then to minutes;
    its window skips `skip` (earlier events' control and recovery periods).
    """
    tz = calendar.zone
    w0, w1 = _minute_floor(start), _minute_ceil(stop)
    series = load_series(store, meter, w0 - LOOKBACK_DAYS * 86400, w1)
    window = EventWindow(
        datetime.fromtimestamp(w0, tz),
        datetime.fromtimestamp(w1, tz),
        notice_date=notice_date,
        control_start=datetime.fromtimestamp(control_start, tz),
    )
    notes: list[str] = []
    min_cov = realtime_min_history_s / 900.0
    params: dict[str, dict[str, Any]] = {
        "realtime_15min": {"skip": skip, "min_coverage": min_cov},
        "jiangsu_5day": {"min_day_share": normal_day_min_share},
        "beijing_5of10": {"min_day_share": normal_day_min_share},
    }
    if temperature:
        temps = load_series(store, TEMPERATURE_KEY, series.start, series.end)
        window_ok = all(v is not None for v in temps.window(w0, w1))
        metered = [i for i, v in enumerate(series.values) if v is not None]
        both = sum(1 for i in metered if temps.values[i] is not None) / max(1, len(metered))
        if window_ok and both >= 0.9:
            params["regression"] = {"temperature": temps}
        else:
            notes.append(
                f"regression without temperature: it is known for {both:.0%} of the metered minutes"
                + ("" if window_ok else " and not for all of the event window")
            )
    results = compute_all(
        series, window, calendar, official, excluded_dates=frozenset(excluded), params=params
    )
    pieces = realtime_window(control_start, 900.0, skip)
    first = min((a for a, _ in pieces), default=control_start - 900.0)
    pre = store.readings(meter, first - REALTIME_MAX_HOLD_S, control_start)
    live_rt = realtime_baseline(pre, control_start, skip=skip, min_coverage=min_cov)
    raw = live_rt.kw
    rt = results["realtime_15min"]
    if raw is None and live_baseline_kw is not None and math.isfinite(live_baseline_kw):
        raw = live_baseline_kw
        notes.append("realtime_15min from the live value: too few stored readings before control start")
    if raw is not None:
        n = round((w1 - w0) / 60)
        results["realtime_15min"] = BaselineResult(
            method="realtime_15min",
            available=True,
            start=w0,
            step_s=60,
            curve_kw=[raw] * n,
            mean_kw=raw,
            days_used=[calendar.local_date(control_start - 900)],
            coverage=rt.coverage if rt.available else 1.0,
            notes=["from poll-rate readings (time-weighted, 15 min before control start)"]
            + ([live_rt.quality] if live_rt.shifted else []),
            official=rt.official,
        )
    samples = store.readings(meter, start - 60, stop)
    return HistoryBaselines(results, samples, w0, notes)


def excluded_dates(store: Store, tz: ZoneInfo, exclude_event: str) -> set[date]:
    """Local dates on which an opted-in event ran: never a normal day for a baseline."""
    out: set[date] = set()
    for row in store.events():
        if row["opt"] != "in" or row["event_id"] == exclude_event:
            continue
        if row["state"] in RAN_STATES or (
            row["state"] == "cancelled" and store.settlement(row["event_id"]) is not None
        ):
            ts = row["effective_start"] or datetime.fromisoformat(row["payload"]["start"]).timestamp()
            out.add(datetime.fromtimestamp(ts, tz).date())
    return out


def published(body: dict[str, Any]) -> dict[str, Any]:
    """The settlement as published over MQTT, checked by its model: without the per-minute baseline
    curves (kept in the store)."""
    return Settlement.model_validate({k: v for k, v in body.items() if k != "curves"}).model_dump(mode="json")


def _received_ts(store: Store, event_id: str, start_ts: float) -> float | None:
    """When the event first arrived, from the store (wall clock): used only if it is plausible."""
    row = store.db.execute("SELECT received_ts FROM events WHERE event_id=?", (event_id,)).fetchone()
    if row is None or row[0] is None:
        return None
    ts = float(row[0])
    return ts if start_ts - 30 * 86400 <= ts <= start_ts else None


class SettledEvent(Protocol):
    """What the books read of an event (a `DrEvent` is one): settlement does not import events."""

    @property
    def event_id(self) -> str: ...
    @property
    def program(self) -> str: ...
    @property
    def test_event(self) -> bool: ...
    @property
    def start_ts(self) -> float: ...
    @property
    def end_ts(self) -> float: ...
    @property
    def recovery_s(self) -> float: ...


@dataclass(frozen=True)
class EventRun:
    """What the settlement needs to know of one event and how it ran (the lifecycle fills it in)."""

    event: SettledEvent
    state: str
    committed_kw: float | None
    #: The control state, when control ran in this process (metrics, actuations, skipped steps).
    control: EventControl | None
    #: When control started: the real-time baseline's window ends here.
    control_start: float
    #: The real-time baseline control ran on (kept across a restart), if it ran.
    control_baseline_kw: float | None = None
    resumed: bool = False
    #: When the event first arrived (agent clock), if known in this process.
    received_ts: float | None = None


async def settle_event(
    store: AsyncStore, cfg: SiteConfig, run: EventRun, *, meter: str, end: float | None = None
) -> dict[str, Any]:
    """The settlement record of `run` over [its start, `end` or its end), with every baseline method.

    Not yet stored or published: the lifecycle does that. The real-time
    baseline is recomputed from the stored polls with the function control
    started on; when too few polls are stored, the value control ran on is
    used (and said so); when both exist and differ, a note says by how much.
    """
    ev, c = run.event, run.control
    stop = min(end if end is not None else ev.end_ts, ev.end_ts)
    contract = cfg.contract
    calendar = cfg.calendar.calendar(cfg.site.timezone)
    live = run.control_baseline_kw
    received = run.received_ts
    if received is None:
        received = await store.call(_received_ts, store.sync, ev.event_id, ev.start_ts)
    notice_s = ev.start_ts - received if received is not None else None
    notice_date = calendar.local_date(received) if received is not None else None

    def work(st: Store) -> tuple[HistoryBaselines, list[tuple[float, float]]]:
        excluded = excluded_dates(st, calendar.zone, ev.event_id)
        skip = control_periods(
            st.events(), run.control_start, ev.event_id, lambda p: cfg.strategy_for(p).restore.rebound_window_s
        )
        hb = history_baselines(
            st,
            meter=meter,
            calendar=calendar,
            official=contract.official_baseline,
            start=ev.start_ts,
            stop=stop,
            control_start=run.control_start,
            notice_date=notice_date,
            excluded=excluded,
            live_baseline_kw=live,
            temperature=cfg.outdoor_temperature is not None,
            skip=skip,
            normal_day_min_share=contract.baseline.normal_day_min_share,
            realtime_min_history_s=contract.baseline.realtime_min_history_s,
        )
        post: list[tuple[float, float]] = []
        if c is not None:
            post = st.readings(meter, ev.end_ts, ev.end_ts + _recovery_s(ev, c))
        return hb, post

    hb, post = await store.call(work, store.sync)
    control: dict[str, Any] | None = None
    if c is not None:
        control = c.settlement_metrics(post, _recovery_s(ev, c), contract.peak_kw)
    rate, rate_rule = incentive_rate(contract, ev.program, notice_s)
    rt = hb.results["realtime_15min"]
    fallback_kw = (
        rt.mean_kw if rt.available and rt.mean_kw is not None else (live if live is not None else math.nan)
    )
    notes = list(hb.notes)
    if live is not None and rt.available and rt.mean_kw is not None and abs(rt.mean_kw - live) > AGREE_KW:
        notes.append(
            f"control ran on a real-time baseline of {live:.3f} kW; the stored polls give {rt.mean_kw:.3f} kW"
        )
    body = settle(
        event_id=ev.event_id,
        samples=hb.samples,
        start=ev.start_ts,
        end=stop,
        baseline_kw=fallback_kw,
        baseline_method="realtime_15min",
        peak_kw=contract.peak_kw,
        band_pct=contract.band_pct,
        committed_kw=run.committed_kw,
        incentive_cny_per_kw=0.0 if ev.test_event else rate,
        baselines=hb.results,
        official_baseline=contract.official_baseline,
        max_hold_s=max(30.0, 3 * cfg.modbus.poll_interval_s),
        stale_after_s=cfg.control.meter_stale_s,
        extra={
            "site_id": cfg.site.id,
            "program": ev.program,
            "test_event": ev.test_event,
            "state": str(run.state),
            "actuations": c.actuations if c else 0,
            "steps_skipped": c.skipped if c else {},
            "resumed_after_restart": run.resumed,
            "control": control,
            "control_baseline_kw": None if live is None else round(live, 3),
            "control_start": run.control_start,
            "local_date": calendar.local_date(ev.start_ts).isoformat(),
            "meter": meter,
            "timezone": cfg.site.timezone,
            "peak_kw": contract.peak_kw,
            "notice_s": None if notice_s is None else round(notice_s, 1),
            "incentive_rule": "test event: no incentive" if ev.test_event else rate_rule,
        },
    )
    if notes:
        body.setdefault("notes", []).extend(notes)
    body["curves"] = {
        "start": hb.window_start,
        "step_s": 60,
        "kw": {m: [round(v, 2) for v in r.curve_kw] for m, r in hb.results.items() if r.available},
    }
    return body


def _recovery_s(ev: SettledEvent, c: EventControl) -> float:
    """The recovery window after the end: the event's own, else the strategy's rebound window."""
    return ev.recovery_s if ev.recovery_s > 0 else c.restore_policy.rebound_window_s


# -- the money side of the year ---------------------------------------------------------


def ledger_entries(rows: Sequence[dict[str, Any]], settled: dict[str, dict[str, Any]]) -> list[LedgerEntry]:
    """LedgerEntry per opted-in event from the store's event rows (and settlements, for cancelled ones)."""
    out: list[LedgerEntry] = []
    for row in rows:
        if row["opt"] != "in":
            continue
        p = row["payload"]
        start = row["effective_start"] or datetime.fromisoformat(p["start"]).timestamp()
        end = datetime.fromisoformat(p["start"]).timestamp() + float(p["duration_s"])
        state = row["state"]
        s = settled.get(row["event_id"])
        if state in ("far", "near"):
            state = "planned"
        elif state == "cancelled":
            if s is None:
                continue  # cancelled before it began: it never counted
            end = float(s["end"])
        elif state not in ("active", "completed"):
            continue
        out.append(
            LedgerEntry(
                row["event_id"], p.get("program", "contracted"), start, end, state, bool(p.get("test_event"))
            )
        )
    return out


def participation_factor(contract: ContractConfig, responses: int) -> tuple[float, str]:
    """Share of the incentive paid for `responses` in a year: the contract's minimum pays pro rata below it,
    and fewer than the default threshold pays nothing."""
    lo, minimum = contract.default_below_events_per_year, contract.min_events_per_year
    if lo is not None and responses < lo:
        return 0.0, f"{responses} < {lo} responses: a default, no incentive"
    if minimum and responses < minimum:
        return responses / minimum, f"{responses} of {minimum} responses: pro rata"
    return 1.0, "full" if minimum else "no participation minimum"


def money(settlements: Iterable[dict[str, Any]], tz: ZoneInfo, year: int) -> dict[str, Any]:
    """Verified kW, kWh and estimated incentive of the year's settled (non-test) events, per programme and in all."""
    progs: dict[str, dict[str, float]] = {}
    days: dict[str, dict[str, Any]] = {}
    for s in settlements:
        if s.get("test_event"):
            continue
        local = datetime.fromtimestamp(float(s["start"]), tz)
        if local.year != year:
            continue
        p = progs.setdefault(
            s.get("program", "contracted"),
            {"events": 0, "verified_kw_sum": 0.0, "verified_kwh": 0.0, "incentive_cny": 0.0},
        )
        kw = float(s["verified_reduction_kw"]) if s.get("verified_reduction_kw") is not None else 0.0
        if not math.isfinite(kw):
            kw = 0.0
        p["events"] += 1
        p["verified_kw_sum"] += kw
        p["verified_kwh"] += kw * float(s["duration_s"]) / 3600
        p["incentive_cny"] += float(s.get("estimated_incentive_cny") or 0.0)
        d = days.setdefault(local.date().isoformat(), {"events": 0, "hours": 0.0, "verified_kwh": 0.0})
        d["events"] += 1
        d["hours"] += float(s["duration_s"]) / 3600
        d["verified_kwh"] += kw * float(s["duration_s"]) / 3600
    total = {
        k: sum(p[k] for p in progs.values())
        for k in ("events", "verified_kw_sum", "verified_kwh", "incentive_cny")
    }

    def r(p: dict[str, float]) -> dict[str, Any]:
        n = int(p["events"])
        return {
            "events_settled": n,
            "verified_kw_sum": round(p["verified_kw_sum"], 3),
            "verified_kw_mean": round(p["verified_kw_sum"] / n, 3) if n else None,
            "verified_kwh": round(p["verified_kwh"], 3),
            "estimated_incentive_cny": round(p["incentive_cny"], 2),
        }

    return {
        "programs": {k: r(v) for k, v in sorted(progs.items())},
        "total": r(total),
        "days": {
            k: {**v, "hours": round(v["hours"], 3), "verified_kwh": round(v["verified_kwh"], 3)}
            for k, v in sorted(days.items())
        },
    }


def year_books(
    contract: ContractConfig | None,
    tz: ZoneInfo,
    year: int,
    now: float,
    event_rows: Sequence[dict[str, Any]],
    settlements: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """The year's ledger (events, hours, days, participation) with the money: what `report --year` prints."""
    settled = {s["event_id"]: s for s in settlements}
    out: dict[str, Any]
    if contract is not None:
        out = Ledger(contract, tz, ledger_entries(event_rows, settled)).summary(year, now)
    else:
        out = {"year": year, "programs": {}}
    m = money(settlements, tz, year)
    out["money"] = m
    out["days"] = m.pop("days")
    if contract is not None:
        responses = out.get("participation", {}).get("responses")
        if responses is None:
            responses = sum(
                v["events"] - v["planned"]
                for k, v in out["programs"].items()
                if k in ("contracted", "realtime")
            )
        factor, why = participation_factor(contract, int(responses))
        gross = m["total"]["estimated_incentive_cny"]
        m["participation_factor"] = round(factor, 4)
        m["participation_rule"] = why
        m["estimated_incentive_after_participation_cny"] = round(gross * factor, 2)
        if year == datetime.fromtimestamp(now, tz).year:
            m["note"] = "participation factor as if the year ended today"
    return out


async def year_to_date(
    store: AsyncStore, contract: ContractConfig | None, tz: ZoneInfo, now: float
) -> dict[str, Any]:
    """The year to date (what <root>/out/ledger carries after every settlement)."""
    year = datetime.fromtimestamp(now, tz).year

    def work(st: Store) -> dict[str, Any]:
        return year_books(contract, tz, year, now, st.events(), st.settlements(10000))

    body = await store.call(work, store.sync)
    body["ts"] = now
    return body


def local_day_bounds(tz: ZoneInfo, day: date) -> tuple[float, float]:
    """Epoch seconds of local midnight of `day` and of the next day."""
    a = datetime(day.year, day.month, day.day, tzinfo=tz)
    b = a + timedelta(days=1)
    return a.timestamp(), datetime(b.year, b.month, b.day, tzinfo=tz).timestamp()
