"""A strategy's step plan (`plan_steps`) is made once per config; the steps an event runs come from
it with what each is expected to shed worked out when the event begins. The steps must be those
that expanding the strategy again would give (the expansion before plans, kept here as the oracle)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.config.load import load_site_config
from agent.runtime.devices import build_devices
from strategies.engine import (
    Step,
    _priority,
    build_steps,
    default_expected_kw,
    effective_action,
    plan_steps,
    resolve_targets,
)
from strategies.model import Strategy

REPO = Path(__file__).resolve().parents[2]
SITES = sorted((REPO / "config").glob("*site*.yaml"))


def expand(strategy: Strategy, devices: Mapping[str, Any]) -> list[Step]:
    """The oracle: every stage x action x device expanded on the spot, then ordered."""
    steps: list[Step] = []
    for stage in strategy.stages:
        for a_i, action in enumerate(stage.actions):
            for name in resolve_targets(action, devices):
                dev = devices[name]
                steps.append(
                    Step(
                        id=f"{stage.name}/{a_i + 1}:{name}",
                        order=len(steps),
                        stage=stage.name,
                        device=name,
                        action=effective_action(action, dev.config),
                        expected_kw=action.expected_kw or default_expected_kw(action, dev),
                    )
                )
    stage_index = {s.name: i for i, s in reversed(list(enumerate(strategy.stages)))}
    steps.sort(key=lambda st: (stage_index[st.stage], _priority(st.device, devices), st.order))
    for i, st in enumerate(steps):
        st.order = i
    return steps


@pytest.mark.parametrize("site", SITES, ids=[p.name for p in SITES])
def test_every_shipped_strategy_gives_the_steps_of_its_expansion(site: Path) -> None:
    cfg, _ = load_site_config(site)
    devices = asyncio.run(_built(cfg))  # a serial endpoint's client wants a running loop
    assert cfg.strategies
    for strategy in cfg.strategies:
        plan = plan_steps(strategy, devices)
        assert plan.steps(devices) == expand(strategy, devices), strategy.name
        assert build_steps(strategy, devices) == expand(strategy, devices), strategy.name
        first = [(s.device, s.role) for s in expand(strategy, devices)]
        stage = plan.steps(devices)[0].stage if plan.rows else None
        assert plan.first_stage == [
            k for k, s in zip(first, plan.steps(devices), strict=True) if s.stage == stage
        ]


def test_each_event_gets_its_own_steps_with_what_they_shed_now() -> None:
    """The controller changes an event's steps (learned kW, order): a plan hands out new ones each
    time, and a charger's expected kW follows what it draws when the event begins."""
    cfg, _ = load_site_config(REPO / "config" / "demo-site.yaml")
    _transports, devices = build_devices(cfg)
    strategy = Strategy.model_validate(
        {
            "name": "ev",
            "stages": [
                {"name": "chargers", "actions": [{"kind": "ev_charger", "devices": ["ev-1"], "current_a": 8}]}
            ],
        }
    )
    plan = plan_steps(strategy, devices)
    ev1 = devices["ev-1"]
    ev1.power_kw = lambda: 11.0  # type: ignore[method-assign]
    (first,) = plan.steps(devices)
    first.learned_kw = 99.0
    ev1.power_kw = lambda: 8.0  # type: ignore[method-assign]
    (second,) = plan.steps(devices)
    assert second is not first and second.learned_kw is None
    assert first.expected_kw > second.expected_kw > 0
    assert (first.expected_kw, second.expected_kw) == tuple(
        expand(strategy, {"ev-1": _Drawing(ev1, kw)})[0].expected_kw for kw in (11.0, 8.0)
    )


async def _built(cfg: Any) -> dict[str, Any]:
    return build_devices(cfg)[1]


class _Drawing:
    """A device that draws `kw` now (what the charger's expected kW is worked out from)."""

    def __init__(self, dev: Any, kw: float) -> None:
        self._dev, self._kw = dev, kw

    def power_kw(self) -> float:
        return self._kw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dev, name)
