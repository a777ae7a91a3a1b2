"""Pre-cooling runs through the real agent: lowered before control starts, put back when it starts."""

from __future__ import annotations

import asyncio
import textwrap
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent.cli.simulate import simulate_event
from agent.config.load import load_site_config
from agent.events.model import DrEvent

SITE = """\
version: 1
site: {id: precool-test, timezone: Asia/Shanghai, meter: meter}
modbus:
  endpoints: [{name: bus, protocol: tcp, host: 127.0.0.1, port: 15999}]
devices:
  - {name: meter, kind: meter, endpoint: bus, unit_id: 1, profile: eastron_sdm630}
  - {name: ahu, kind: hvac, endpoint: bus, unit_id: 2, profile: generic_hvac, rated_kw: 80,
     setpoint_min_c: 22, setpoint_max_c: 27}
  - {name: lights, kind: lighting, endpoint: bus, unit_id: 3, profile: generic_lighting, rated_kw: 30}
contract: {peak_kw: 400, band_pct: [5, 20]}
strategies:
  - name: cool-first
    restore: {step_interval_s: 5, rebound_window_s: 120}
    stages:
      - name: hvac
        actions:
          - {kind: hvac, devices: [ahu], setpoint_offset_c: 2, precool: {offset_c: 1.5, lead_s: 240}}
      - name: lights
        actions:
          - {kind: lighting, devices: [lights], level_pct: 50}
"""


def test_precool_lowers_then_hands_over_to_the_shed_step(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(SITE))
    cfg, _warnings = load_site_config(path)
    tz = ZoneInfo(cfg.site.timezone)
    start = datetime(2026, 7, 1, 11, 0, tzinfo=tz)
    event = DrEvent.model_validate(
        {"event_id": "pc", "start": start.isoformat(), "duration_s": 300, "target": {"reduce_kw": 30}}
    )
    seen: list[tuple[float, float]] = []

    def on_tick(now: float, agent: Any, plant: Any) -> None:
        seen.append((now - event.start_ts, float(plant.banks["ahu"].get("setpoint_c"))))

    result = asyncio.run(simulate_event(cfg, event, lead_s=600, tail_s=900, on_tick=on_tick))
    assert result.settlement is not None and result.limit_violations == 0

    def at(offset: float) -> float:
        return next(sp for t, sp in seen if t >= offset)

    assert at(-500) == 24.0  # before the lead time: untouched
    assert at(-200) == 22.5  # pre-cooling: 24 - 1.5
    # Control starts: the pre-cool ends and the shed step raises from the original 24 °C.
    during = [sp for t, sp in seen if 30 <= t < 300]
    assert max(during) == 26.0 and min(during) >= 24.0
    assert seen[-1][1] == 24.0  # restored exactly after the event
