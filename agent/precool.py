"""Pre-cooling before an event: store cold in the building so a later setpoint rise is not felt.

An HVAC action with `precool: {offset_c, lead_s}` lowers the cooling setpoint
by offset_c from lead_s before control starts. The writes go through the
actuator (limit check, revert journal), tagged `precool:<step>`, so a crash,
a cancellation or the start of control puts the original setpoint back
exactly. At control start the pre-cool ends; the strategy's own step then
raises the setpoint from the original value.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from agent.actuator import LimitViolation
from drivers.device import WriteError
from strategies.engine import build_steps, precool_value
from strategies.model import HvacAction

if TYPE_CHECKING:
    from agent.daemon import Agent
    from agent.lifecycle import EventRecord

log = logging.getLogger("dr_agent.precool")

PREFIX = "precool:"


def lead_s(agent: Agent, program: str) -> float:
    """The longest pre-cooling lead of the program's strategy, s (0: none)."""
    strategy = agent.cfg.strategy_for(program)
    leads = [
        a.precool.lead_s
        for stage in strategy.stages
        for a in stage.actions
        if isinstance(a, HvacAction) and a.precool is not None
    ]
    return max(leads, default=0.0)


async def precool(agent: Agent, rec: EventRecord, now: float) -> None:
    """Before control starts: write each pre-cool setpoint once, when its lead time begins."""
    ev = rec.event
    lead = lead_s(agent, ev.program)
    if ev.test_event or not lead or now < rec.control_start - lead:
        return
    for step in build_steps(agent.cfg.strategy_for(ev.program), agent.devices):
        a = step.action
        if not isinstance(a, HvacAction) or a.precool is None or now < rec.control_start - a.precool.lead_s:
            continue
        dev = agent.devices[step.device]
        if not dev.health.available or await agent.store.journal_open(step.device, "setpoint_c"):
            continue  # unknown state, or already pre-cooled (or shed by another event)
        value = precool_value(step, dev, dev.reading("setpoint_c"))
        if value is None:
            continue
        try:
            await agent.actuator.shed(step.device, "setpoint_c", value, ev.event_id, PREFIX + step.id)
        except (LimitViolation, WriteError) as exc:
            log.warning(
                "event_id=%s device=%s action=precool_failed error=%r", ev.event_id, step.device, str(exc)
            )
            continue
        log.info("event_id=%s device=%s action=precool setpoint_c=%s", ev.event_id, step.device, value)


async def end_precool(agent: Agent, event_id: str, why: str) -> None:
    """Put back every setpoint pre-cooled for this event (control starts, or the event is off)."""
    for e in await agent.store.journal_open():
        if e.event_id == event_id and (e.step or "").startswith(PREFIX):
            await agent.actuator.restore(e.device, e.role, why, event_id)
