"""No action ever drives a device outside its comfort or safety limits, whatever the strategy.

Random actions (every kind, parameters anywhere inside the model's bounds)
against random device limits and random current states go through the
engine (`build_steps`, `shed_value`, `precool_value`) and the actuator's limit
check; a few random strategies also run through the real controller against
the simulated plant (`simulate_event`), reading every device back each tick.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.cli.simulate import simulate_event
from agent.config.load import load_site_config
from agent.config.model import SiteConfig
from agent.control.actuator import Actuator, LimitViolation
from agent.events.model import DrEvent
from agent.platform.store import AsyncStore, Store
from drivers.profile import load_profile
from drivers.registry import kinds
from strategies.engine import NotApplicable, build_steps, precool_value, shed_value, within_limits
from strategies.model import Strategy

REPO = Path(__file__).resolve().parents[2]
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite = {"allow_nan": False, "allow_infinity": False}


class NoWire:
    """A transport that must never be used: the limit check comes before any write."""

    name = "nowire"

    async def read(self, *a: Any) -> list[int]:
        raise AssertionError("no read expected")

    async def write_registers(self, *a: Any) -> None:
        raise AssertionError("a write reached the wire")

    async def write_coil(self, *a: Any) -> None:
        raise AssertionError("a write reached the wire")


def make_device(cfg: dict[str, Any], state: dict[str, float]) -> Any:
    kind = kinds()[cfg["kind"]]
    conf = kind.config.model_validate({"endpoint": "bus", "unit_id": 1, **cfg})
    dev = kind.device(conf, NoWire(), load_profile(conf.profile))
    for role, value in state.items():
        point = dev.point_for(role)
        assert point is not None, role
        dev.values[point.name] = value
    return dev


def hours() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.just(("00:00", "24:00")))


def base_fields() -> dict[str, st.SearchStrategy[Any]]:
    return {
        "expected_kw": st.one_of(st.none(), st.floats(0.1, 500, **finite)),
        "min_hold_s": st.floats(0, 600, **finite),
        "cooldown_s": st.floats(0, 600, **finite),
        "allowed_hours": hours(),
    }


@st.composite
def hvac_case(draw: Any) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    lo = draw(st.floats(5, 30, **finite))
    hi = lo + draw(st.floats(0.2, 12, **finite))
    mode = draw(st.sampled_from(["cooling", "heating"]))
    dev = {
        "name": "ahu",
        "kind": "hvac",
        "profile": "generic_hvac",
        "rated_kw": 50,
        "setpoint_min_c": lo,
        "setpoint_max_c": hi,
        "mode": mode,
    }
    # The current setpoint may be anywhere, even outside the limits (someone set it by hand).
    state = {"setpoint_c": draw(st.floats(0, 45, **finite))}
    action: dict[str, Any] = {"kind": "hvac", "devices": ["ahu"]}
    if draw(st.booleans()):
        action["setpoint_offset_c"] = draw(st.floats(0.1, 10, **finite))
    else:
        action["setpoint_c"] = draw(st.floats(-40, 40, **finite))
    if draw(st.booleans()):
        c_lo = draw(st.floats(-40, 39, **finite))
        action["comfort_min_c"] = c_lo
        if draw(st.booleans()):
            action["comfort_max_c"] = draw(st.floats(c_lo + 0.1, 40, **finite))
    if draw(st.booleans()):
        action["precool"] = {"offset_c": draw(st.floats(0.1, 5, **finite)), "lead_s": 600}
    return dev, state, action


@st.composite
def lighting_case(draw: Any) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    floor = draw(st.floats(0, 100, **finite))
    dev = {
        "name": "lights",
        "kind": "lighting",
        "profile": "generic_lighting",
        "rated_kw": 20,
        "min_level_pct": floor,
    }
    state = {"level_pct": draw(st.floats(0, 100, **finite))}
    action: dict[str, Any] = {"kind": "lighting", "devices": ["lights"]}
    if draw(st.booleans()):
        action["switch_off"] = True
    else:
        action["level_pct"] = draw(st.floats(0, 100, **finite))
    if draw(st.booleans()):
        action["floor_pct"] = draw(st.floats(0, action.get("level_pct", 100), **finite))
    return dev, state, action


@st.composite
def ev_case(draw: Any) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    lo = draw(st.floats(0, 16, **finite))
    hi = lo + draw(st.floats(0.1, 64, **finite))
    dev = {
        "name": "ev",
        "kind": "ev_charger",
        "profile": "generic_ev_charger",
        "rated_kw": 22,
        "min_current_a": lo,
        "max_current_a": hi,
        "phases": draw(st.sampled_from([1, 3])),
        "voltage_v": draw(st.floats(100, 260, **finite)),
    }
    state = {"current_limit_a": draw(st.floats(0, 80, **finite)), "power_kw": 10.0}
    action: dict[str, Any] = {"kind": "ev_charger", "devices": ["ev"], "pause": draw(st.booleans())}
    which = draw(st.sampled_from(["current", "power", "none"]))
    if which == "current":
        action["current_a"] = draw(st.floats(0, 500, **finite))
    elif which == "power":
        action["power_kw"] = draw(st.floats(0, 350, **finite))
    else:
        action["pause"] = True
    return dev, state, action


@st.composite
def storage_case(draw: Any) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    dev = {
        "name": "bat",
        "kind": "storage",
        "profile": "generic_storage",
        "rated_kw": 100,
        "capacity_kwh": 200,
        "max_discharge_kw": draw(st.floats(0.5, 500, **finite)),
        "reserve_soc_pct": draw(st.floats(0, 100, **finite)),
    }
    state = {
        "soc_pct": draw(st.floats(0, 100, **finite)),
        "power_setpoint_kw": draw(st.floats(-100, 100, **finite)),
        "power_kw": 0.0,
    }
    action = {
        "kind": "storage",
        "devices": ["bat"],
        "discharge_kw": draw(st.floats(0.1, 100000, **finite)),
        "reserve_soc_pct": draw(st.one_of(st.none(), st.floats(0, 100, **finite))),
    }
    return dev, state, action


@st.composite
def relay_case(draw: Any) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    dev = {
        "name": "pump",
        "kind": "relay",
        "profile": "generic_relay",
        "rated_kw": 30,
        "min_off_s": draw(st.floats(0, 900, **finite)),
        "min_on_s": draw(st.floats(0, 900, **finite)),
    }
    state = {"switch": float(draw(st.booleans()))}
    action = {
        "kind": "relay",
        "devices": ["pump"],
        "min_off_s": draw(st.one_of(st.none(), st.floats(0, 600, **finite))),
    }
    return dev, state, action


ANY_CASE = st.one_of(hvac_case(), lighting_case(), ev_case(), storage_case(), relay_case())


def strategy_of(action: dict[str, Any], extra: dict[str, Any]) -> Strategy:
    """The strategy, if the model accepts it (some random combinations are rightly refused)."""
    try:
        return Strategy.model_validate(
            {"name": "random", "stages": [{"name": "only", "actions": [{**action, **extra}]}]}
        )
    except ValidationError:
        assume(False)
        raise


@SETTINGS
@given(case=ANY_CASE, extra=st.fixed_dictionaries(base_fields()))
def test_no_shed_value_leaves_the_device_limits(case: Any, extra: dict[str, Any]) -> None:
    dev_cfg, state, action = case
    dev = make_device(dev_cfg, state)
    strategy = strategy_of(action, extra)
    (step,) = build_steps(strategy, {dev.name: dev})
    assert step.estimate_kw >= 0 and math.isfinite(step.estimate_kw)
    original = dev.reading(step.role)
    try:
        value = shed_value(step, dev, original)
    except NotApplicable:
        value = None
    if value is not None:
        assert within_limits(dev, step.role, value) is None, (value, dev_cfg, action)
        a = step.action
        if a.kind == "hvac":
            lo, hi = dev.setpoint_limits_c()
            assert lo - 1e-9 <= value <= hi + 1e-9
            heating = dev_cfg["mode"] == "heating"
            assert (value < original) if heating else (value > original)  # sheds, never adds load
            c_lo, c_hi = a.comfort_limits(lo, hi)
            if c_lo <= c_hi:  # the comfort band overlaps the device's: it holds, to the 0.1 °C resolution
                assert c_lo - 0.1 - 1e-9 <= value <= c_hi + 0.1 + 1e-9
        elif a.kind == "lighting":
            assert max(dev.min_level_pct(), a.floor_pct or 0) - 1e-9 <= value <= 100
            assert value < original
        elif a.kind == "ev_charger":
            lo, hi = dev.current_range_a()
            assert (value == 0 and a.pause) or lo - 1e-9 <= value <= hi + 1e-9
            assert value < original
        elif a.kind == "storage":
            assert 0 < value <= dev.max_discharge_kw() + 1e-9
            assert dev.soc_pct() > max(dev.reserve_soc_pct(), a.reserve_soc_pct or 0)
        elif a.kind == "relay":
            assert value is False and original
    pre = precool_value(step, dev, original)
    if pre is not None:
        assert within_limits(dev, "setpoint_c", pre) is None and pre < original


@SETTINGS
@given(case=relay_case())
def test_relay_min_off_and_on_become_hold_and_cooldown(case: Any) -> None:
    dev_cfg, state, action = case
    dev = make_device(dev_cfg, state)
    (step,) = build_steps(strategy_of(action, {}), {dev.name: dev})
    assert step.action.min_hold_s >= max(dev_cfg["min_off_s"], action["min_off_s"] or 0) - 1e-9
    assert step.action.cooldown_s >= dev_cfg["min_on_s"] - 1e-9


@settings(max_examples=120, deadline=None)
@given(
    case=st.one_of(hvac_case(), lighting_case(), ev_case(), storage_case()),
    value=st.floats(-1000, 1000, **finite),
)
def test_actuator_refuses_every_out_of_limit_write(case: Any, value: float, tmp_path_factory: Any) -> None:
    dev_cfg, state, _action = case
    dev = make_device(dev_cfg, state)
    role = {
        "hvac": "setpoint_c",
        "lighting": "level_pct",
        "ev_charger": "current_limit_a",
        "storage": "power_setpoint_kw",
    }[dev_cfg["kind"]]
    if within_limits(dev, role, value) is None:
        return
    store = AsyncStore(Store(str(tmp_path_factory.mktemp("db") / "t.sqlite")))

    async def go() -> None:
        try:
            with pytest.raises(LimitViolation):
                await Actuator({dev.name: dev}, store).shed(dev.name, role, value, "ev", "s")
            assert await store.journal_open() == []  # refused before anything was journalled or sent
        finally:
            await store.close()

    asyncio.run(go())


# -- the real controller against the simulated plant -------------------------------------------------

DEMO = REPO / "config" / "demo-site.yaml"


@st.composite
def random_strategy(draw: Any, cfg: SiteConfig) -> dict[str, Any]:
    """A strategy over the demo site's devices with random kinds and parameters within the model's bounds."""
    by_kind: dict[str, list[str]] = {}
    for d in cfg.devices:
        by_kind.setdefault(d.kind, []).append(d.name)
    actions = []
    for kind in draw(
        st.lists(st.sampled_from(["hvac", "lighting", "ev_charger", "storage"]), min_size=2, max_size=6)
    ):
        devs = draw(st.lists(st.sampled_from(by_kind[kind]), min_size=1, max_size=2, unique=True))
        a: dict[str, Any] = {"kind": kind, "devices": devs, "min_hold_s": draw(st.sampled_from([0, 30, 120]))}
        if kind == "hvac":
            a["setpoint_offset_c"] = draw(st.floats(0.5, 10, **finite))
        elif kind == "lighting":
            a["level_pct"] = draw(st.floats(0, 90, **finite))
        elif kind == "ev_charger":
            a["current_a"] = draw(st.floats(0, 31, **finite))
            a["pause"] = draw(st.booleans())
        else:
            a["discharge_kw"] = draw(st.floats(1, 200, **finite))
        actions.append(a)
    return {
        "name": "random",
        "default": True,
        "stages": [{"name": f"s{i}", "actions": [a]} for i, a in enumerate(actions)],
    }


_DEMO_CFG, _ = load_site_config(DEMO)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(strategy=random_strategy(_DEMO_CFG), pct=st.floats(5, 20, **finite))
def test_controller_never_breaches_limits_in_simulation(strategy: dict[str, Any], pct: float) -> None:
    cfg = _DEMO_CFG.model_copy(
        update={"strategies": [Strategy.model_validate(strategy)], "strategy_select": None}
    )
    tz = ZoneInfo(cfg.site.timezone)
    event = DrEvent.model_validate(
        {
            "event_id": "prop",
            "start": datetime(2026, 7, 1, 11, 0, tzinfo=tz).isoformat(),
            "duration_s": 300,
            "target": {"reduce_pct_of_peak": pct},
        }
    )
    # A short lead (2 min of baseline history) keeps each run to a second or two; the limits are the point.
    result = asyncio.run(simulate_event(cfg, event, lead_s=120, tail_s=600))
    assert result.limit_violations == 0, result.violations


def test_higher_priority_chargers_are_shed_last_within_their_stage_whatever_the_listing() -> None:
    """The demo's fleet chargers (priority 10) come after the visitors' (no priority) in their
    stage even when the strategy names them first; stages keep their order, the rest its listing."""
    from agent.runtime.devices import build_devices

    cfg, _ = load_site_config(REPO / "config" / "demo-site.yaml")
    assert {n: getattr(cfg.device(n), "priority", 0) for n in ("ev-1", "ev-3")} == {"ev-1": 0, "ev-3": 10}
    _transports, devices = build_devices(cfg)
    strategy = Strategy.model_validate(
        {
            "name": "fleet-named-first",
            "stages": [
                {
                    "name": "chargers",
                    "actions": [
                        {"kind": "ev_charger", "devices": ["ev-3", "ev-4", "ev-1", "ev-2"], "current_a": 8}
                    ],
                },
                {
                    "name": "lights",
                    "actions": [
                        {
                            "kind": "lighting",
                            "devices": ["lights-office", "lights-warehouse"],
                            "level_pct": 60,
                        }
                    ],
                },
            ],
        }
    )
    steps = build_steps(strategy, devices)
    assert [(s.stage, s.device) for s in steps] == [
        ("chargers", "ev-1"),
        ("chargers", "ev-2"),
        ("chargers", "ev-3"),
        ("chargers", "ev-4"),
        ("lights", "lights-office"),
        ("lights", "lights-warehouse"),
    ]
    assert [s.order for s in steps] == list(range(6))
