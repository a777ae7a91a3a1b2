"""Events the contract no longer counts are forgotten from memory (they stay stored): closed,
settled or never run, and over before this year and the contract's period began. What the
contract decides from must not change, and nothing still owed (a settlement) is forgotten."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from agent.config.model import ContractPeriod
from agent.events.lifecycle import EventLifecycle
from agent.events.model import State
from tests.unit.test_lifecycle_closed_events import BASE, TZ, _lifecycle, _record

NOW = datetime(2026, 7, 1, 12, tzinfo=TZ).timestamp()


def _days_from_base(d: date) -> int:
    return (datetime(d.year, d.month, d.day, 10, tzinfo=TZ) - BASE) // timedelta(days=1)


def _site(lc: EventLifecycle) -> dict[str, State]:
    """Events over three years: each closed and settled but for the ones named otherwise."""
    days = {
        "old": date(2024, 3, 1),
        "last-year": date(2025, 6, 1),
        "new-year's-eve": date(2025, 12, 31),  # within the day's margin: kept
        "old-unsettled": date(2025, 5, 1),  # ran, never settled: kept until it is
        "old-opted-out": date(2025, 4, 1),  # never ran: nothing to settle, forgotten
        "this-year": date(2026, 3, 1),
        "planned": date(2026, 8, 1),
    }
    for name, day in days.items():
        i = _days_from_base(day)
        opt = "out" if name == "old-opted-out" else "in"
        state = State.FAR if name == "planned" else (State.OPTED_OUT if opt == "out" else State.COMPLETED)
        rec = _record(i, state, opt=opt, ran=opt == "in" and name != "planned")
        rec.settled = name not in ("old-unsettled", "old-opted-out", "planned")
        lc.events[name] = rec
    return {name: r.state for name, r in lc.events.items()}


def _answers(lc: EventLifecycle) -> tuple[object, ...]:
    ledger = lc.ledger()
    return (
        ledger.participation(NOW),
        ledger.period_status(NOW),
        ledger.events_in_year(None, 2026),
        ledger.days_in_year(None, 2026),
        ledger.day_usage(None, date(2026, 3, 1)),
        lc._control_periods(NOW, "none"),
    )


def test_what_the_contract_no_longer_counts_is_forgotten_and_its_answers_stay() -> None:
    lc, _ = _lifecycle()
    _site(lc)
    before = _answers(lc)
    assert lc.forget_old(NOW) == 3  # 2024's, last June's, and last April's that never ran
    assert set(lc.events) == {"new-year's-eve", "old-unsettled", "this-year", "planned"}
    assert _answers(lc)[:5] == before[:5]
    assert [p for p in _answers(lc)[5] if p[1] >= datetime(2025, 12, 30, tzinfo=TZ).timestamp()] == [
        p for p in before[5] if p[1] >= datetime(2025, 12, 30, tzinfo=TZ).timestamp()
    ]
    assert lc.forget_old(NOW) == 0


def test_a_contract_period_keeps_its_events() -> None:
    """Foshan's 10 responses in 3 years: the period's responses are counted from memory."""
    lc, current = _lifecycle()
    cfg = current[0]
    period = ContractPeriod(start=date(2025, 1, 1), end=date(2027, 12, 31), min_events=10)
    current[0] = cfg.model_copy(update={"contract": cfg.contract.model_copy(update={"period": period})})
    _site(lc)
    before = _answers(lc)
    assert lc.forget_old(NOW) == 1  # only 2024's
    assert "old" not in lc.events and {"last-year", "old-unsettled"} <= set(lc.events)
    assert _answers(lc)[:5] == before[:5]
    assert before[1] is not None and before[1]["responses"] >= 3
