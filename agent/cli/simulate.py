"""Run the production control code against the simulated plant, faster than real time.

The harness replaces only the clock (a manual clock advanced one control
period at a time) and the wire (loopback transports over the simulator's
register banks). Polling, the event lifecycle, the controller, restore and
settlement are the `Agent`'s own methods, so what `dr-agent simulate` and
the control benchmark measure is what runs on a gateway.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent.config.model import SiteConfig
from agent.control.controller import Controller
from agent.events.model import DrEvent
from agent.platform.clock import ManualClock
from agent.runtime.daemon import Agent
from drivers.sim.loopback import LoopbackTransport
from drivers.sim.plant import SimulatedPlant
from strategies.engine import within_limits

BASELINE_LEAD_S = 16 * 60


@dataclass
class SimResult:
    event_id: str
    timeline: list[dict[str, Any]] = field(default_factory=list)
    settlement: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    limit_violations: int = 0
    violations: list[str] = field(default_factory=list)
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def loopback_transports(cfg: SiteConfig, plant: SimulatedPlant) -> dict[str, LoopbackTransport]:
    out: dict[str, LoopbackTransport] = {}
    for ep in cfg.modbus.endpoints:
        banks = {unit: plant.banks[dev] for dev, (epn, unit) in plant.placement.items() if epn == ep.name}
        out[ep.name] = LoopbackTransport(ep.name, banks)
    return out


def count_violations(agent: Agent, plant: SimulatedPlant) -> list[str]:
    """Every device state that breaches its configured comfort/safety limit, read from the plant."""
    found = []
    for name, dev in agent.devices.items():
        bank = plant.banks[name]
        for role in ("setpoint_c", "level_pct", "current_limit_a", "power_setpoint_kw"):
            if bank.has(role) and dev.point_for(role) is not None:
                v = bank.get(role)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    problem = within_limits(dev, role, float(v))
                    if problem:
                        found.append(f"{name}: {problem}")
    return found


async def simulate_event(
    cfg: SiteConfig,
    event: DrEvent,
    *,
    seed: int = 1,
    plant: SimulatedPlant | None = None,
    lead_s: float = BASELINE_LEAD_S,
    tail_s: float = 3600.0,
    on_tick: Callable[[float, Agent, SimulatedPlant], None] | None = None,
    db_dir: Path | None = None,
    controller: Callable[[Agent], Controller] | None = None,
    lead_step_s: float = 5.0,
) -> SimResult:
    """Simulate one event from `lead_s` before its start until it is settled (or `tail_s` after its end).

    `controller` replaces the agent's controller (the control benchmark's naive variant);
    before control starts and after every device is back the clock moves `lead_step_s` at a
    time (nothing to control: only the meter's history is being gathered).
    """
    tz = ZoneInfo(cfg.site.timezone)
    start = event.start_ts - lead_s
    offset = datetime.fromtimestamp(start, tz).utcoffset()
    if plant is None:
        plant = SimulatedPlant.build(
            cfg.devices,
            peak_kw=cfg.contract.peak_kw,
            meter_name=cfg.site.meter,
            seed=seed,
            tz_offset_s=offset.total_seconds() if offset else 0.0,
        )
    clock = ManualClock(start)
    result = SimResult(event.event_id)
    with tempfile.TemporaryDirectory(prefix="dr-agent-sim-", dir=db_dir) as tmp:
        agent = Agent(
            cfg,
            clock,
            metrics=False,
            transports=loopback_transports(cfg, plant),
            store_path=str(Path(tmp) / "sim.sqlite"),
        )
        if controller is not None:
            agent.controller = controller(agent)
        agent.sink = lambda topic, payload: result.messages.append((topic, payload))
        period = cfg.control.period_s
        control_from = event.start_ts - event.ramp_up_s - max(period, cfg.control.filter_s * 3)
        plant.step(clock.now())
        await agent.poll_all()
        await agent.handle_event(event)
        result.response = next((p for t, p in result.messages if t.endswith("/out/response")), None)
        seen: set[str] = set()
        writes = -1
        scanned = 0
        try:
            while clock.now() < event.end_ts + tail_s:
                now = clock.now()
                plant.step(now)
                await agent.poll_all()
                await agent.control_cycle(now)
                state = agent.live_state()
                state["site_kw_raw"] = plant.site_kw()
                result.timeline.append(state)
                if agent.actuator.writes != writes:
                    # Device states change only when the agent writes: check limits then.
                    writes = agent.actuator.writes
                    for v in count_violations(agent, plant):
                        if v not in seen:
                            seen.add(v)
                            result.violations.append(f"{now:.0f}: {v}")
                if on_tick is not None:
                    on_tick(now, agent, plant)
                settled = [p for t, p in result.messages[scanned:] if "/out/settlement/" in t]
                scanned = len(result.messages)
                if settled:
                    result.settlement = settled[-1]
                    break
                # Before control starts and once every device is back (the recovery window), only
                # the meter's history matters: coarser steps cost nothing in accuracy there.
                idle = now + lead_step_s < control_from or (now > event.end_ts and agent.running() is None)
                clock.advance(lead_step_s if idle else period)
        finally:
            await agent.store.close()
    result.limit_violations = len(result.violations)
    if result.settlement is not None:
        result.settlement["limit_violations"] = result.limit_violations
    return result
