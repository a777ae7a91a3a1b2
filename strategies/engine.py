"""Turn a strategy into ordered shed steps, and each step into device writes within limits.

A step is one action applied to one device. The value a step writes comes
from its kind's rule (`shed_value()` of the action model in
`drivers/kinds/<kind>.py`), computed from the device's current state and its
configured limits (comfort band, floor, minimum current, reserve SOC); the
actuator checks every write against the device's limits once more
(`within_limits`). This module speaks capability protocols and the kind
registry only, never a device class or Modbus.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from drivers.actions import ControlTraits, NotApplicable
from drivers.capabilities import Controllable, WriteLimited
from drivers.registry import action_kinds, kinds, traits
from strategies.model import Action, Strategy

__all__ = [
    "ACTION_DEVICE_KIND",
    "SHED_ROLE",
    "NotApplicable",
    "Step",
    "StepLimits",
    "StepPlan",
    "build_steps",
    "config_estimate_kw",
    "default_expected_kw",
    "effective_action",
    "plan_steps",
    "precool_value",
    "resolve_targets",
    "shed_value",
    "within_limits",
]


class _ByKind(Mapping[str, str]):
    """A read-only view over the kind registry, current whenever a kind is added."""

    def __init__(self, pick: Any) -> None:
        self._pick = pick

    def _table(self) -> dict[str, str]:
        return {name: self._pick(name) for name in action_kinds()}

    def __getitem__(self, key: str) -> str:
        return self._table()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


# Action kind -> device kind it can drive (a kind's action drives devices of that kind).
ACTION_DEVICE_KIND: Mapping[str, str] = _ByKind(lambda name: name)

# The role a step writes, per device kind (restore writes the journalled value back).
SHED_ROLE: Mapping[str, str] = _ByKind(lambda name: kinds()[name].shed_role or "")


@dataclass
class Step:
    """One action on one device, in strategy order."""

    id: str
    order: int
    stage: str
    device: str
    action: Action
    expected_kw: float
    learned_kw: float | None = None

    @property
    def estimate_kw(self) -> float:
        return self.learned_kw if self.learned_kw is not None else self.expected_kw

    @property
    def role(self) -> str:
        return self.action.shed_role

    @property
    def traits(self) -> ControlTraits:
        """How the controller treats this step (continuous, lag, how it comes back): its kind's traits."""
        return traits(self.action.kind)

    def allowed_at(self, local: datetime) -> bool:
        hours = self.action.allowed_hours
        if hours is None:
            return True
        hm = local.strftime("%H:%M")
        return hours[0] <= hm < hours[1]


@dataclass
class StepLimits:
    """What a step may write: computed once per device from config, checked on every write."""

    low: float | None = None
    high: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_targets(action: Action, devices: Mapping[str, Controllable]) -> list[str]:
    """Device names an action addresses: its explicit list, then its group's devices of the kind
    the action drives (a zone may hold HVAC and lighting alike), in config order."""
    names = list(action.devices)
    if action.group:
        want = action.kind
        names += [
            n
            for n, d in devices.items()
            if d.config.zone == action.group and d.kind == want and n not in names
        ]
    return names


def default_expected_kw(action: Action, device: Controllable) -> float:
    """A first estimate of what shedding saves, before any measurement."""
    return action.expected_kw_on(device)


@dataclass(frozen=True)
class StepPlan:
    """A strategy's steps as the config lays them out: their ids, stages, devices, actions as run
    on each device, and order (stage, then charger priority, then listing). What each step is
    expected to shed depends on its device when an event begins: `steps()` works that out each
    time, so a plan is made once per config and strategy (`plan_steps`)."""

    #: (step id, stage, device, the action as written, the action as run on the device), in order.
    rows: tuple[tuple[str, str, str, Action, Action], ...]

    @property
    def first_stage(self) -> list[tuple[str, str]]:
        """(device, role) of the first stage's steps, in order."""
        if not self.rows:
            return []
        first = self.rows[0][1]
        return [(device, run.shed_role) for _id, stage, device, _a, run in self.rows if stage == first]

    def steps(self, devices: Mapping[str, Controllable]) -> list[Step]:
        """Fresh steps (the controller changes them during an event), each with its expected kW now."""
        return [
            Step(
                id=step_id,
                order=i,
                stage=stage,
                device=device,
                action=run,
                expected_kw=action.expected_kw or default_expected_kw(action, devices[device]),
            )
            for i, (step_id, stage, device, action, run) in enumerate(self.rows)
        ]


def plan_steps(strategy: Strategy, devices: Mapping[str, Controllable]) -> StepPlan:
    """Expand stages x actions x devices into the ordered plan; unknown devices raise KeyError."""
    rows: list[tuple[str, str, str, Action, Action]] = []
    for stage in strategy.stages:
        for a_i, action in enumerate(stage.actions):
            for name in resolve_targets(action, devices):
                dev = devices.get(name)
                if dev is None:
                    raise KeyError(f"strategy {strategy.name}: unknown device {name!r}")
                run = effective_action(action, dev.config)
                rows.append((f"{stage.name}/{a_i + 1}:{name}", stage.name, name, action, run))
    # EV chargers of higher priority (fleet vehicles) are shed last within their stage.
    stage_index = {s.name: i for i, s in reversed(list(enumerate(strategy.stages)))}
    priority = {name: _priority(name, devices) for name in {row[2] for row in rows}}
    order = sorted(range(len(rows)), key=lambda i: (stage_index[rows[i][1]], priority[rows[i][2]], i))
    return StepPlan(tuple(rows[i] for i in order))


def build_steps(strategy: Strategy, devices: Mapping[str, Controllable]) -> list[Step]:
    """Expand stages x actions x devices into ordered steps; unknown devices raise KeyError."""
    return plan_steps(strategy, devices).steps(devices)


def effective_action(action: Action, device_config: Any) -> Action:
    """The action as the controller runs it on one device (e.g. a relay's minimum off time becomes
    the step's minimum hold and its minimum on time the step's cooldown)."""
    return action.for_device(device_config)


def config_estimate_kw(action: Action, device_config: Any) -> float:
    """What shedding one device saves, from its config alone (validation, plans without readings)."""
    if action.expected_kw is not None:
        return action.expected_kw
    return action.config_estimate_kw(device_config)


def precool_value(step: Step, device: Controllable, original: float | None) -> float | None:
    """The value a step writes before control starts (an HVAC pre-cool), within limits; None if none."""
    return step.action.lead_value(device, original)


def _priority(device: str, devices: Mapping[str, Controllable]) -> int:
    cfg = devices[device].config
    # A config's fields are in its __dict__: pydantic answers a missing one through a slow __getattr__.
    fields = getattr(cfg, "__dict__", None)
    return int(fields.get("priority", 0) if fields is not None else getattr(cfg, "priority", 0))


def shed_value(step: Step, device: Controllable, original: float | None) -> float | bool:
    """The value this step writes, clamped into the device's limits (the kind's rule).

    `original` is the value before the event (from the revert journal or the
    latest reading). Raises NotApplicable when the step would do nothing or
    the device state is unknown.
    """
    return step.action.shed_value(device, original)


def within_limits(device: object, role: str, value: float | bool) -> str | None:
    """None if `value` respects the device's configured safety/comfort limits, else why not."""
    if isinstance(value, bool) or not isinstance(device, WriteLimited):
        return None
    return device.limit_violation(role, value)
