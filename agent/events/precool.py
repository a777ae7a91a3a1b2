"""Pre-cooling before an event: store cold in the building so a later setpoint rise is not felt.

An HVAC action with `precool: {offset_c, lead_s}` lowers the cooling setpoint
by offset_c from lead_s before control starts. Any kind's action may prepare
its device this way: `lead_s()` and `lead_value()` of its action model say
when and what (drivers/actions.py); the write goes to the step's shed role. The writes go through the
actuator (limit check, revert journal), tagged `precool:<step>`, so a crash,
a cancellation or the start of control puts the original setpoint back
exactly. At control start the pre-cool ends; the strategy's own step then
raises the setpoint from the original value.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from agent.config.model import SiteConfig
from agent.control.actuator import LimitViolation
from agent.events.ports import Actuation
from drivers.device import Device, WriteError
from strategies.engine import build_steps, precool_value

if TYPE_CHECKING:
    from agent.events.lifecycle import EventRecord

log = logging.getLogger("dr_agent.precool")

PREFIX = "precool:"


def lead_s(cfg: SiteConfig, program: str) -> float:
    """The longest pre-cooling lead of the program's strategy, s (0: none)."""
    strategy = cfg.strategy_for(program)
    return max((a.lead_s() for stage in strategy.stages for a in stage.actions), default=0.0)


async def precool(
    cfg: SiteConfig, devices: Mapping[str, Device], actuation: Actuation, rec: EventRecord, now: float
) -> None:
    """Before control starts: write each pre-cool setpoint once, when its lead time begins."""
    ev = rec.event
    lead = lead_s(cfg, ev.program)
    if ev.test_event or not lead or now < rec.control_start - lead:
        return
    for step in build_steps(cfg.strategy_for(ev.program), devices):
        step_lead = step.action.lead_s()
        if not step_lead or now < rec.control_start - step_lead:
            continue
        dev = devices[step.device]
        if not dev.health.available or await actuation.shed_now(step.device, step.role):
            continue  # unknown state, or already pre-cooled (or shed by another event)
        value = precool_value(step, dev, dev.reading(step.role))
        if value is None:
            continue
        rec.precooled = True  # before the write: one that fails half way may still have landed
        try:
            await actuation.shed(step.device, step.role, value, ev.event_id, PREFIX + step.id)
        except (LimitViolation, WriteError) as exc:
            log.warning(
                "event_id=%s device=%s action=precool_failed error=%r", ev.event_id, step.device, str(exc)
            )
            continue
        log.info("event_id=%s device=%s action=precool %s=%s", ev.event_id, step.device, step.role, value)


async def end_precool(actuation: Actuation, event_id: str, why: str) -> None:
    """Put back every setpoint pre-cooled for this event (control starts, or the event is off)."""
    for e in await actuation.shed_now():
        if e.event_id == event_id and (e.step or "").startswith(PREFIX):
            await actuation.restore(e.device, e.role, why, event_id)
