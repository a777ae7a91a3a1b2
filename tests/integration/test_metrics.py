"""/metrics of a running agent mid-event: what docs/metrics.md lists, in base units, parseable.

Parsed with prometheus-client's own parser; where Prometheus's `promtool` is
installed it also lints the scrape and checks the shipped rules and config.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import urllib.request
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.platform.clock import ScaledClock
from agent.runtime.daemon import Agent
from tests.conftest import REPO, Mosquitto, serve_plant, site_config
from tests.helpers import Observer, event_payload
from tests.unit.test_metrics import catalogue

pytestmark = pytest.mark.integration


def exposed_name(family: object) -> str:
    name, kind = family.name, family.type  # type: ignore[attr-defined]
    return {"counter": name + "_total", "info": name + "_info"}.get(kind, name)


async def scrape(port: int) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    return await asyncio.to_thread(get)


async def test_metrics_mid_event_match_the_catalogue(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = site_config(mosquitto.port, tmp_path)
    tz = ZoneInfo(cfg.site.timezone)
    clock = ScaledClock(60.0, origin_sim=datetime(2026, 7, 1, 10, 30, tzinfo=tz).timestamp())
    plant, plant_task = await serve_plant(cfg, clock)
    agent = Agent(cfg, clock, metrics=True)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root) as obs:
            await obs.wait_online()
            idle = await scrape(agent.metrics_port or 0)
            await obs.publish("in/event", event_payload("m-1", clock.now() + 120, 1800))
            await obs.wait_for(lambda t, b: t.endswith("/out/report") and b.get("active_steps"), 20)
            text = await scrape(agent.metrics_port or 0)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        plant_task.cancel()
        await plant.stop()

    families = {exposed_name(f): f for f in text_string_to_metric_families(text)}
    cat = catalogue()
    assert set(families) == set(cat), set(families) ^ set(cat)
    for name, (kind, _labels) in cat.items():
        assert families[name].type == kind or (name.endswith("_info") and families[name].type == "info"), name

    def value(name: str, **labels: str) -> float:
        return next(
            s.value for s in families[name].samples if all(s.labels.get(k) == v for k, v in labels.items())
        )

    # Watts, not kW: the demo site's band is 5-20 % of 1 MW.
    assert value("dr_agent_event_band_lower_watts") == pytest.approx(50_000)
    assert value("dr_agent_event_band_upper_watts") == pytest.approx(200_000)
    assert value("dr_agent_event_target_watts") == pytest.approx(100_000)
    assert 300_000 < value("dr_agent_site_load_watts") < 1_200_000
    assert value("dr_agent_event_active") == 1 and value("dr_agent_event_active_steps") >= 1
    assert value("dr_agent_device_up", device="chiller-1", kind="hvac", endpoint="bms") == 1
    assert sum(s.value for s in families["dr_agent_device_shed"].samples) >= 1
    assert (
        value("dr_agent_build_info") == 1
        and families["dr_agent_build_info"].samples[0].labels["site"] == "demo-plant"
    )
    assert value("dr_agent_modbus_requests_total", endpoint="bms") > 0
    assert value("dr_agent_mqtt_connected") == 1 and value("dr_agent_ready") == 1
    assert value("dr_agent_events", state="active") == 1
    # Unknown is absent, not 0: no event, no baseline sample.
    idle_families = {exposed_name(f): f for f in text_string_to_metric_families(idle)}
    assert idle_families["dr_agent_event_baseline_watts"].samples == []
    assert idle_families["dr_agent_event_active"].samples[0].value == 0

    promtool_checks(text)


def promtool_checks(text: str) -> None:
    """The real Prometheus toolchain, when the box has it: lint the scrape, check rules and config."""
    promtool = shutil.which("promtool")
    if promtool:  # the real Prometheus toolchain, when the box has it
        lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr
        for args in (["check", "rules", "dr-agent.rules.yml"], ["check", "config", "prometheus.yml"]):
            r = subprocess.run(
                [promtool, *args], cwd=REPO / "config/prometheus", capture_output=True, text=True
            )
            assert r.returncode == 0, r.stdout + r.stderr
