"""The pure control decision: add, release, adjust or hold, and why."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.control.controller import Decision, Held, Option, _Stage, aim_kw, decide
from strategies.engine import Step
from strategies.model import LightingAction, StorageAction


def step(i: int, kw: float, hold: float = 60.0, stage: str = "x") -> Step:
    action = LightingAction(kind="lighting", devices=[f"d{i}"], level_pct=50, expected_kw=kw, min_hold_s=hold)
    return Step(id=f"s{i}", order=i, stage=stage, device=f"d{i}", action=action, expected_kw=kw)


def battery(kw: float = 40.0) -> Step:
    action = StorageAction(kind="storage", devices=["bat"], discharge_kw=kw, expected_kw=kw, min_hold_s=0)
    return Step(id="bat", order=99, stage="storage", device="bat", action=action, expected_kw=kw)


BAND = (50.0, 200.0)


def opts(*steps: Step) -> list[Option]:
    return [Option(s, s.expected_kw, s.action.kind == "storage") for s in steps]


def held(s: Step, kw: float, releasable: bool = True, depth: float = 1.0, full: float | None = None) -> Held:
    cont = s.action.kind == "storage"
    return Held(s, kw, depth, full if full is not None else kw / depth, cont, releasable, True)


def call(
    predicted: float | None,
    options: list[Option] | None = None,
    active: list[Held] | None = None,
    last_add: float | None = None,
    last_release: float | None = None,
    now: float = 1000.0,
) -> list[Decision]:
    return decide(
        now=now,
        predicted_kw=predicted,
        aim=100.0,
        band=BAND,
        deadband_kw=10.0,
        settle_s=15.0,
        last_add=last_add,
        last_release=last_release,
        held=active or [],
        options=options or [],
    )


def ids(ds: list[Decision], action: str) -> list[str]:
    return [d.step.id for d in ds if d.action == action and d.step is not None]


def test_unknown_meter_holds() -> None:
    (d,) = call(None, opts(step(1, 20)))
    assert d.action == "hold" and "unknown" in d.reason


def test_below_aim_adds_what_fills_the_gap_never_above_the_band_top() -> None:
    ds = call(30.0, opts(step(1, 200), step(2, 40), step(3, 10)))
    # s1 would overshoot the band's top; s2 then s3 fill the 70 kW gap in one cycle (feed-forward).
    assert ids(ds, "add") == ["s2", "s3"]


def test_best_fit_within_a_stage_but_stages_in_order() -> None:
    ds = call(80.0, opts(step(1, 60, stage="a"), step(2, 18, stage="a"), step(3, 20, stage="b")))
    assert ids(ds, "add") == ["s2"]  # 18 kW fits a 20 kW gap better than 60; stage b is not reached


def test_a_battery_fills_the_gap_exactly() -> None:
    ds = call(75.0, opts(step(1, 60), battery(40)))
    (d,) = [d for d in ds if d.action == "add"]
    assert (
        d.step is not None
        and d.step.id == "bat"
        and abs(d.kw - 25.0) < 1e-6
        and abs(d.depth - 25 / 40) < 1e-6
    )


def test_after_a_release_it_waits_before_adding_unless_the_band_is_at_stake() -> None:
    (d,) = call(85.0, opts(step(1, 10)), last_release=990.0)
    assert d.action == "hold" and "settling" in d.reason
    assert ids(call(40.0, opts(step(1, 10)), last_release=990.0), "add") == ["s1"]


def test_below_band_takes_the_smallest_step_even_if_it_may_overshoot() -> None:
    ds = call(0.0, opts(step(1, 260), step(2, 230)))
    assert ids(ds, "add") == ["s2"]


def test_in_band_holds() -> None:
    (d,) = call(105.0, opts(step(1, 20)))
    assert d.action == "hold" and d.reason == "in band"


def test_above_aim_eases_the_battery_first() -> None:
    bat = battery(40)
    ds = call(130.0, [], active=[held(step(1, 50), 50), held(bat, 40)])
    (d,) = ds
    assert d.action == "adjust" and d.step is bat and abs(d.kw + 30.0) < 1e-6 and abs(d.depth - 0.25) < 1e-6


def test_above_band_releases_a_step_past_its_hold_time() -> None:
    ds = call(230.0, [], active=[held(step(1, 50), 50), held(step(2, 50, hold=2000), 50, releasable=False)])
    assert ids(ds, "release") == ["s1"]


def test_release_keeps_curtailment_above_the_aim_minus_deadband() -> None:
    # 125 kW: releasing 60 would leave 65 (< 90), so nothing goes; releasing 20 leaves 105.
    assert ids(call(125.0, [], active=[held(step(1, 60), 60)]), "release") == []
    assert ids(call(125.0, [], active=[held(step(1, 60), 60), held(step(2, 20), 20)]), "release") == ["s2"]


def test_aim_stays_inside_the_band_with_a_margin() -> None:
    assert aim_kw(10.0, BAND, 5.0) == 65.0  # below the band: lifted to lo + 10 % of the width
    assert aim_kw(500.0, BAND, 5.0) == 185.0
    assert aim_kw(100.0, BAND, 5.0) == 100.0


def _best_fit_by_scan(group: list[Option], gap: float, room: float, most: float) -> Option | None:
    """The best fit as decide() first wrote it, kept as the oracle: a scan of the whole stage."""
    fits = [o for o in group if o.continuous or o.kw <= most]
    if not fits:
        return None
    return min(fits, key=lambda o: abs(gap - (min(o.kw, gap, room) if o.continuous else o.kw)))


@settings(max_examples=400, deadline=None)
@given(
    kws=st.lists(
        st.tuples(st.sampled_from([0.5, 1.0, 2.0, 2.5, 4.0, 7.0, 10.0]), st.booleans()),
        min_size=1,
        max_size=25,
    ),
    picks=st.lists(
        st.tuples(st.floats(0.0, 60.0), st.floats(0.0, 80.0), st.floats(0.0, 80.0)), min_size=1, max_size=30
    ),
)
def test_the_best_fit_of_a_stage_is_the_scan_s_pick_of_the_same_options(
    kws: list[tuple[float, bool]], picks: list[tuple[float, float, float]]
) -> None:
    """The bisected best fit (a stage picked from many times in one cycle) picks exactly what a scan
    of the stage would, ties to the first in pool order, through picks that remove what they pick."""
    options = [Option(step(i, kw), kw, continuous) for i, (kw, continuous) in enumerate(kws)]
    stage = _Stage(options)
    left = list(options)
    for gap, room, most in picks:
        expected = _best_fit_by_scan(left, gap, room, most)
        assert stage.best_fit(gap, room, most) is expected
        if expected is not None:
            stage.remove(expected)
            left = [o for o in left if o is not expected]
        assert stage.options == left
