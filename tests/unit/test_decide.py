"""The pure control decision: add, release or hold, and why."""

from __future__ import annotations

from agent.control import ActiveStep, aim_kw, decide
from strategies.engine import Step
from strategies.model import LightingAction


def step(i: int, kw: float, hold: float = 60.0) -> Step:
    action = LightingAction(kind="lighting", devices=[f"d{i}"], level_pct=50, expected_kw=kw, min_hold_s=hold)
    return Step(id=f"s{i}", order=i, stage="x", device=f"d{i}", action=action, expected_kw=kw)


BAND = (50.0, 200.0)


def call(
    realized: float | None,
    candidates: list[Step],
    active: list[ActiveStep] | None = None,
    last: float | None = None,
    now: float = 1000.0,
) -> object:
    return decide(
        now=now,
        realized_kw=realized,
        aim=100.0,
        band=BAND,
        deadband_kw=10.0,
        settle_s=15.0,
        last_change=last,
        active=active or [],
        candidates=candidates,
    )


def test_unknown_meter_holds() -> None:
    d = call(None, [step(1, 20)])
    assert d.action == "hold" and "unknown" in d.reason


def test_below_aim_adds_first_fitting_step_in_order() -> None:
    d = call(30.0, [step(1, 200), step(2, 40), step(3, 10)])
    assert d.action == "add" and d.step is not None and d.step.id == "s2"  # s1 would overshoot the band top


def test_waits_for_the_last_change_to_settle() -> None:
    d = call(30.0, [step(1, 20)], last=990.0)
    assert d.action == "hold" and "settling" in d.reason


def test_below_band_takes_the_smallest_step_even_if_it_may_overshoot() -> None:
    d = call(0.0, [step(1, 260), step(2, 230)])
    assert d.action == "add" and d.step is not None and d.step.id == "s2"


def test_in_band_holds() -> None:
    assert call(120.0, [step(1, 20)]).action == "hold"


def test_above_band_releases_most_recent_step_past_its_hold_time() -> None:
    a1 = ActiveStep(step(1, 50), applied_at=0.0, value=50, load_before=None)
    a2 = ActiveStep(step(2, 50, hold=2000), applied_at=900.0, value=50, load_before=None)
    d = call(230.0, [], active=[a1, a2])
    assert d.action == "release" and d.step is not None and d.step.id == "s1"  # s2 still inside min_hold_s


def test_aim_stays_inside_the_band_with_a_margin() -> None:
    assert aim_kw(10.0, BAND, 5.0) == 65.0  # below the band: lifted to lo + 10 % of the width
    assert aim_kw(500.0, BAND, 5.0) == 185.0
    assert aim_kw(100.0, BAND, 5.0) == 100.0
