"""Turn a strategy into ordered shed steps, and each step into device writes within limits.

A step is one action applied to one device. `shed_writes()` computes the
values to write from the device's current state and its configured limits
(comfort band, floor, minimum current, reserve SOC): the limits are applied
here, in one place, so no action can drive a device outside them.
"""

from __future__ import annotations

import math
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
    """Device names an action addresses: its explicit list, then its group's devices of the kind
    the action drives (a zone may hold HVAC and lighting alike), in config order."""
    names = list(action.devices)
    if action.group:
        want = ACTION_DEVICE_KIND[action.kind]
        names += [
            n
            for n, d in devices.items()
            if d.config.zone == action.group and d.kind == want and n not in names
        ]
    return names


def default_expected_kw(action: Action, device: Device) -> float:
    """A first estimate of what shedding saves, before any measurement."""
    rated = device.config.rated_kw or 0.0
    if isinstance(action, HvacAction):
        return rated * 0.25
    if isinstance(action, LightingAction):
        level = 0.0 if action.switch_off else (action.level_pct or 0.0)
        floor = device.min_level_pct() if isinstance(device, Dimmable) else 0.0
        floor = max(floor, action.floor_pct or 0.0)
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
                        action=effective_action(action, dev.config),
                        expected_kw=expected,
                    )
                )
        _ = s_i
    # EV chargers of higher priority (fleet vehicles) are shed last within their stage.
    steps.sort(key=lambda st: (_stage_index(strategy, st.stage), _priority(st, devices), st.order))
    for i, st in enumerate(steps):
        st.order = i
    return steps


def effective_action(action: Action, device_config: Any) -> Action:
    """The action as the controller runs it on one device: a relay's minimum off time becomes
    the step's minimum hold and its minimum on time the step's cooldown (the larger of the
    action's and the device's), so compressors are never short-cycled."""
    if not isinstance(action, RelayAction):
        return action
    min_off = max(action.min_off_s or 0.0, float(getattr(device_config, "min_off_s", 0.0) or 0.0))
    min_on = max(action.min_on_s or 0.0, float(getattr(device_config, "min_on_s", 0.0) or 0.0))
    if min_off <= action.min_hold_s and min_on <= action.cooldown_s:
        return action
    return action.model_copy(
        update={
            "min_off_s": min_off,
            "min_on_s": min_on,
            "min_hold_s": max(action.min_hold_s, min_off),
            "cooldown_s": max(action.cooldown_s, min_on),
        }
    )


def config_estimate_kw(action: Action, device_config: Any) -> float:
    """What shedding one device saves, from its config alone (validation, plans without readings)."""
    if action.expected_kw is not None:
        return action.expected_kw
    rated = float(getattr(device_config, "rated_kw", None) or 0.0)
    if isinstance(action, HvacAction):
        return rated * 0.25
    if isinstance(action, LightingAction):
        level = 0.0 if action.switch_off else (action.level_pct or 0.0)
        floor = max(float(getattr(device_config, "min_level_pct", 0.0)), action.floor_pct or 0.0)
        return rated * (100 - max(level, floor)) / 100
    if isinstance(action, EvChargerAction):
        kw_per_a = getattr(device_config, "phases", 3) * getattr(device_config, "voltage_v", 230.0) / 1000
        lo = float(getattr(device_config, "min_current_a", 6.0))
        hi = float(getattr(device_config, "max_current_a", 32.0))
        full = min(rated, hi * kw_per_a) if rated else hi * kw_per_a
        if action.current_a is not None:
            cap = action.current_a
        elif action.power_kw is not None:
            cap = action.power_kw / kw_per_a
        else:
            cap = 0.0
        if cap < lo:
            cap = 0.0 if action.pause else lo
        return max(0.0, full - min(cap, hi) * kw_per_a)
    if isinstance(action, StorageAction):
        return min(
            action.discharge_kw, float(getattr(device_config, "max_discharge_kw", action.discharge_kw))
        )
    return rated


def precool_value(step: Step, device: Device, original: float | None) -> float | None:
    """The pre-cooling setpoint for an HVAC step with `precool`, within limits; None if none applies."""
    a = step.action
    if not isinstance(a, HvacAction) or a.precool is None or original is None:
        return None
    if not isinstance(device, SetpointControl) or getattr(device.config, "mode", "cooling") != "cooling":
        return None
    dlo, dhi = device.setpoint_limits_c()
    lo, _hi = a.comfort_limits(dlo, dhi)
    target = _round_within(min(dhi, max(dlo, lo, original - a.precool.offset_c)), dlo, dhi, 1)
    return target if target < original else None


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


def _round_within(value: float, lo: float, hi: float, ndigits: int) -> float:
    """`value` rounded to the write resolution without leaving [lo, hi] (limits need not be round)."""
    q = 10.0**ndigits
    out = round(value, ndigits)
    if out > hi:
        out = math.floor(hi * q + 1e-9) / q
    if out < lo:
        out = math.ceil(lo * q - 1e-9) / q
    return out


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
        dlo, dhi = device.setpoint_limits_c()
        lo, hi = a.comfort_limits(dlo, dhi)
        heating = getattr(device.config, "mode", "cooling") == "heating"
        if a.setpoint_c is not None:
            target = a.setpoint_c
        else:
            offset = a.setpoint_offset_c or 0.0
            target = original - offset if heating else original + offset
        # The action's comfort limits first, then the device's, which no action can widen.
        target = min(dhi, max(dlo, min(hi, max(lo, target))))
        target = _round_within(target, dlo, dhi, 1)
        if (not heating and target <= original) or (heating and target >= original):
            raise NotApplicable("setpoint already at or beyond the shed value")
        return target
    if isinstance(a, LightingAction):
        if not isinstance(device, Dimmable) or original is None:
            raise NotApplicable("dim level unknown")
        level = 0.0 if a.switch_off else float(a.level_pct or 0.0)
        floor = max(device.min_level_pct(), a.floor_pct or 0.0)
        # Levels are written as whole percent: round, but never below a fractional floor.
        level = _round_within(max(level, floor), math.ceil(floor - 1e-9), 100.0, 0)
        if level >= original:
            raise NotApplicable("already dimmed")
        return level
    if isinstance(a, EvChargerAction):
        if not isinstance(device, CurrentLimited) or original is None:
            raise NotApplicable("current limit unknown")
        lo, hi = device.current_range_a()
        cap = min(hi, _ev_cap_a(a, device, lo))
        cap = 0.0 if cap == 0 else _round_within(cap, lo, hi, 1)
        if cap >= original:
            raise NotApplicable("already capped")
        return cap
    if isinstance(a, StorageAction):
        if not isinstance(device, Dispatchable):
            raise NotApplicable("not a storage device")
        soc = device.soc_pct()
        # The action may keep more in reserve than the device, never less.
        reserve = max(a.reserve_soc_pct or 0.0, device.reserve_soc_pct())
        if soc is None or soc <= reserve:
            raise NotApplicable(f"state of charge {soc} at or below reserve {reserve} %")
        value = _round_within(
            min(a.discharge_kw, device.max_discharge_kw()), 0.0, device.max_discharge_kw(), 1
        )
        if value <= 0:
            raise NotApplicable("nothing to discharge")
        if original is not None and original >= value:
            raise NotApplicable("already discharging at or above this power")
        return value
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
