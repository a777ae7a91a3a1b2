"""Turn a strategy into ordered shed steps, and each step into device writes within limits.

A step is one action applied to one device. `shed_writes()` computes the
values to write from the device's current state and its configured limits
(comfort band, floor, minimum current, reserve SOC): the limits are applied
here, in one place, so no action can drive a device outside them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from drivers.capabilities import CurrentLimited, Dimmable, Dispatchable, SetpointControl
from drivers.device import Device
from strategies.model import (
    Action,
    EvChargerAction,
    HvacAction,
    LightingAction,
    RelayAction,
    StorageAction,
    Strategy,
)

# Action kind -> device kind it can drive.
ACTION_DEVICE_KIND = {
    "hvac": "hvac",
    "lighting": "lighting",
    "ev_charger": "ev_charger",
    "storage": "storage",
    "relay": "relay",
}

# The role a step writes, per device kind (restore writes the journalled value back).
SHED_ROLE = {
    "hvac": "setpoint_c",
    "lighting": "level_pct",
    "ev_charger": "current_limit_a",
    "storage": "power_setpoint_kw",
    "relay": "switch",
}


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
        return SHED_ROLE[self.action.kind]

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


def resolve_targets(action: Action, devices: Mapping[str, Device]) -> list[str]:
    """Device names an action addresses: its explicit list, then its group, in config order."""
    names = list(action.devices)
    if action.group:
        names += [n for n, d in devices.items() if d.config.zone == action.group and n not in names]
    return names


def default_expected_kw(action: Action, device: Device) -> float:
    """A first estimate of what shedding saves, before any measurement."""
    rated = device.config.rated_kw or 0.0
    if isinstance(action, HvacAction):
        return rated * 0.25
    if isinstance(action, LightingAction):
        level = 0.0 if action.off else (action.level_pct or 0.0)
        floor = device.min_level_pct() if isinstance(device, Dimmable) else 0.0
        return rated * (100 - max(level, floor)) / 100
    if isinstance(action, EvChargerAction) and isinstance(device, CurrentLimited):
        lo, _hi = device.current_range_a()
        cap = _ev_cap_a(action, device, lo)
        now_kw = device.power_kw() or rated
        return max(0.0, now_kw - cap * device.kw_per_amp())
    if isinstance(action, StorageAction) and isinstance(device, Dispatchable):
        return min(action.discharge_kw, device.max_discharge_kw())
    return rated


def build_steps(strategy: Strategy, devices: Mapping[str, Device]) -> list[Step]:
    """Expand stages x actions x devices into ordered steps; unknown devices raise KeyError."""
    steps: list[Step] = []
    for s_i, stage in enumerate(strategy.stages):
        for a_i, action in enumerate(stage.actions):
            for name in resolve_targets(action, devices):
                dev = devices.get(name)
                if dev is None:
                    raise KeyError(f"strategy {strategy.name}: unknown device {name!r}")
                expected = action.expected_kw or default_expected_kw(action, dev)
                steps.append(
                    Step(
                        id=f"{stage.name}/{a_i + 1}:{name}",
                        order=len(steps),
                        stage=stage.name,
                        device=name,
                        action=action,
                        expected_kw=expected,
                    )
                )
        _ = s_i
    # EV chargers of higher priority (fleet vehicles) are shed last within their stage.
    steps.sort(key=lambda st: (_stage_index(strategy, st.stage), _priority(st, devices), st.order))
    for i, st in enumerate(steps):
        st.order = i
    return steps


def _stage_index(strategy: Strategy, name: str) -> int:
    return next(i for i, s in enumerate(strategy.stages) if s.name == name)


def _priority(step: Step, devices: Mapping[str, Device]) -> int:
    return int(getattr(devices[step.device].config, "priority", 0))


def _ev_cap_a(action: EvChargerAction, device: CurrentLimited, min_a: float) -> float:
    if action.current_a is not None:
        cap = action.current_a
    elif action.power_kw is not None:
        cap = action.power_kw / device.kw_per_amp()
    else:
        cap = 0.0
    if cap < min_a:
        cap = 0.0 if action.pause else min_a
    return cap


class NotApplicable(Exception):
    """The step cannot shed now (device state unknown, reserve reached, nothing to shed)."""


def shed_value(step: Step, device: Device, original: float | None) -> float | bool:
    """The value this step writes, clamped into the device's limits.

    `original` is the value before the event (from the revert journal or the
    latest reading). Raises NotApplicable when the step would do nothing or
    the device state is unknown.
    """
    a = step.action
    if isinstance(a, HvacAction):
        if not isinstance(device, SetpointControl) or original is None:
            raise NotApplicable("setpoint unknown")
        lo, hi = device.setpoint_limits_c()
        heating = getattr(device.config, "mode", "cooling") == "heating"
        if a.setpoint_c is not None:
            target = a.setpoint_c
        else:
            offset = a.setpoint_offset_c or 0.0
            target = original - offset if heating else original + offset
        target = min(hi, max(lo, target))
        if (not heating and target <= original) or (heating and target >= original):
            raise NotApplicable("setpoint already at or beyond the shed value")
        return round(target, 1)
    if isinstance(a, LightingAction):
        if not isinstance(device, Dimmable) or original is None:
            raise NotApplicable("dim level unknown")
        level = 0.0 if a.off else float(a.level_pct or 0.0)
        level = max(level, device.min_level_pct())
        if level >= original:
            raise NotApplicable("already dimmed")
        return round(level)
    if isinstance(a, EvChargerAction):
        if not isinstance(device, CurrentLimited) or original is None:
            raise NotApplicable("current limit unknown")
        lo, hi = device.current_range_a()
        cap = min(hi, _ev_cap_a(a, device, lo))
        if cap >= original:
            raise NotApplicable("already capped")
        return round(cap, 1)
    if isinstance(a, StorageAction):
        if not isinstance(device, Dispatchable):
            raise NotApplicable("not a storage device")
        soc = device.soc_pct()
        reserve = a.reserve_soc_pct if a.reserve_soc_pct is not None else device.reserve_soc_pct()
        if soc is None or soc <= reserve:
            raise NotApplicable(f"state of charge {soc} at or below reserve {reserve} %")
        return round(min(a.discharge_kw, device.max_discharge_kw()), 1)
    if isinstance(a, RelayAction):
        if original is not None and not original:
            raise NotApplicable("already off")
        return False
    raise NotApplicable(f"unsupported action {a!r}")


def within_limits(device: Device, role: str, value: float | bool) -> str | None:
    """None if `value` respects the device's configured safety/comfort limits, else why not."""
    if isinstance(value, bool):
        return None
    if role == "setpoint_c" and isinstance(device, SetpointControl):
        lo, hi = device.setpoint_limits_c()
        if not lo - 1e-6 <= value <= hi + 1e-6:
            return f"setpoint {value} outside comfort limits [{lo}, {hi}]"
    if role == "level_pct" and isinstance(device, Dimmable):
        if value < device.min_level_pct() - 1e-6:
            return f"level {value} below floor {device.min_level_pct()}"
    if role == "current_limit_a" and isinstance(device, CurrentLimited):
        lo, hi = device.current_range_a()
        if value > hi + 1e-6 or (0 < value < lo - 1e-6):
            return f"current {value} A outside [{lo}, {hi}] (0 = paused)"
    if role == "power_setpoint_kw" and isinstance(device, Dispatchable):
        if value > device.max_discharge_kw() + 1e-6:
            return f"discharge {value} kW above inverter limit {device.max_discharge_kw()}"
    return None
