"""The participation ledger: counts per day/year/period and the on-course warnings."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from agent.config.model import ContractConfig
from agent.settlement.ledger import Ledger, LedgerEntry

TZ = ZoneInfo("Asia/Shanghai")


def c(**over: object) -> ContractConfig:
    base: dict[str, object] = {"peak_kw": 1000, "min_events_per_year": 10, "default_below_events_per_year": 5}
    return ContractConfig.model_validate({**base, **over})


def at(d: date, hh: int = 11) -> float:
    return datetime(d.year, d.month, d.day, hh, tzinfo=TZ).timestamp()


def done(n: int, first: date, program: str = "contracted", state: str = "completed") -> list[LedgerEntry]:
    return [
        LedgerEntry(
            f"e{i}",
            program,
            at(first + timedelta(days=7 * i)),
            at(first + timedelta(days=7 * i)) + 3600,
            state,
        )
        for i in range(n)
    ]


def test_on_course_at_mid_year_no_warning() -> None:
    p = Ledger(c(), TZ, done(5, date(2026, 1, 5))).participation(at(date(2026, 7, 2)))
    assert p.responses == 5 and p.status == "ok" and p.warning is None


def test_below_minimum_warns_pro_rata() -> None:
    p = Ledger(c(), TZ, done(3, date(2026, 1, 5))).participation(at(date(2026, 7, 2)))
    assert p.status == "below_minimum"
    assert p.warning is not None and p.warning.startswith("participation_below_minimum: 3 responses in 2026")
    assert "the contract asks 10" in p.warning


def test_default_risk_below_five() -> None:
    p = Ledger(c(), TZ, done(1, date(2026, 1, 5))).participation(at(date(2026, 9, 1)))
    assert p.status == "default_risk"
    assert p.warning is not None and "fewer than 5 is a default" in p.warning


def test_planned_events_and_met() -> None:
    entries = done(8, date(2026, 1, 5)) + done(2, date(2026, 11, 2), state="planned")
    p = Ledger(c(), TZ, entries).participation(at(date(2026, 10, 1)))
    assert (p.responses, p.planned, p.status, p.warning) == (8, 2, "ok", None)
    p = Ledger(c(), TZ, done(10, date(2026, 1, 5))).participation(at(date(2026, 10, 1)))
    assert p.status == "met"


def test_price_and_test_events_do_not_count() -> None:
    entries = done(9, date(2026, 1, 5), program="price")
    entries.append(
        LedgerEntry("t", "contracted", at(date(2026, 3, 3)), at(date(2026, 3, 3)) + 60, "completed", True)
    )
    p = Ledger(c(), TZ, entries).participation(at(date(2026, 7, 2)))
    assert p.responses == 0


def test_period_minimum_foshan() -> None:
    contract = c(period={"start": "2025-01-01", "end": "2027-12-31", "min_events": 10})
    status = Ledger(contract, TZ, done(2, date(2025, 3, 3))).period_status(at(date(2026, 6, 30)))
    assert status is not None and status["responses"] == 2
    assert status["warning"] is not None and status["warning"].startswith("period_below_minimum")


def test_summary_counts_events_hours_days() -> None:
    entries = [
        *done(3, date(2026, 7, 1)),
        LedgerEntry("r", "realtime", at(date(2026, 7, 1), 13), at(date(2026, 7, 1), 13) + 1800, "completed"),
    ]
    s = Ledger(c(), TZ, entries).summary(2026, at(date(2026, 8, 1)))
    assert s["programs"]["contracted"] == {"events": 3, "planned": 0, "hours": 3.0, "days": 3}
    assert s["programs"]["realtime"]["hours"] == 0.5
    assert s["participation"]["responses"] == 4
