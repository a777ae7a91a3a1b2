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
from typing import TYPE_CHECKING

from agent.control.actuator import LimitViolation
from drivers.device import WriteError
from strategies.engine import build_steps, precool_value

if TYPE_CHECKING:
    from agent.events.lifecycle import EventRecord
    from agent.runtime.daemon import Agent

log = logging.getLogger("dr_agent.precool")

PREFIX = "precool:"


def lead_s(agent: Agent, program: str) -> float:
    """The longest pre-cooling lead of the program's strategy, s (0: none)."""
    strategy = agent.cfg.strategy_for(program)
    return max((a.lead_s() for stage in strategy.stages for a in stage.actions), default=0.0)


async def precool(agent: Agent, rec: EventRecord, now: float) -> None:
    """Before control starts: write each pre-cool setpoint once, when its lead time begins."""
    ev = rec.event
    lead = lead_s(agent, ev.program)
    if ev.test_event or not lead or now < rec.control_start - lead:
        return
    for step in build_steps(agent.cfg.strategy_for(ev.program), agent.devices):
        step_lead = step.action.lead_s()
        if not step_lead or now < rec.control_start - step_lead:
            continue
        dev = agent.devices[step.device]
        if not dev.health.available or await agent.store.journal_open(step.device, step.role):
            continue  # unknown state, or already pre-cooled (or shed by another event)
        value = precool_value(step, dev, dev.reading(step.role))
        if value is None:
            continue
        try:
            await agent.actuator.shed(step.device, step.role, value, ev.event_id, PREFIX + step.id)
        except (LimitViolation, WriteError) as exc:
            log.warning(
                "event_id=%s device=%s action=precool_failed error=%r", ev.event_id, step.device, str(exc)
            )
            continue
        log.info("event_id=%s device=%s action=precool %s=%s", ev.event_id, step.device, step.role, value)


async def end_precool(agent: Agent, event_id: str, why: str) -> None:
    """Put back every setpoint pre-cooled for this event (control starts, or the event is off)."""
    for e in await agent.store.journal_open():
        if e.event_id == event_id and (e.step or "").startswith(PREFIX):
            await agent.actuator.restore(e.device, e.role, why, event_id)
