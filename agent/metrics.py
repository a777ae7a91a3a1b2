"""Prometheus metrics, collected at scrape time from the agent's live state.

A custom collector reads the agent's state when Prometheus scrapes, so the
control and poll loops pay nothing per cycle. Names follow Prometheus
conventions (base units, `_total` for counters); docs/metrics.md lists them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from agent import __version__

if TYPE_CHECKING:
    from agent.daemon import Agent


def _g(name: str, doc: str, value: float | None, unit: str = "") -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, unit=unit)
    if value is not None:
        g.add_metric([], value)
    return g


class AgentCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Any]:
        a = self.agent
        yield InfoMetricFamily(
            "dr_agent", "Agent version and site", value={"version": __version__, "site": a.cfg.site.id}
        )
        live = a.live_state()
        yield _g(
            "dr_agent_site_load_kilowatts", "Filtered site load from the site meter", live.get("measured_kw")
        )
        yield _g("dr_agent_baseline_kilowatts", "Baseline of the running event", live.get("baseline_kw"))
        yield _g(
            "dr_agent_realized_curtailment_kilowatts", "Baseline minus site load", live.get("realized_kw")
        )
        yield _g(
            "dr_agent_target_kilowatts",
            "Committed curtailment of the running event",
            live.get("committed_kw"),
        )
        band = live.get("band_kw") or [None, None]
        yield _g("dr_agent_band_lower_kilowatts", "Bottom of the contracted band", band[0])
        yield _g("dr_agent_band_upper_kilowatts", "Top of the contracted band", band[1])
        yield _g(
            "dr_agent_in_band",
            "1 if realized curtailment is inside the band",
            None if live.get("in_band") is None else float(live["in_band"]),
        )
        yield _g(
            "dr_agent_event_active",
            "1 while an event is being controlled",
            1.0 if live.get("event_id") else 0.0,
        )
        yield _g(
            "dr_agent_active_steps",
            "Shed steps currently applied",
            float(len(live.get("active_steps") or [])),
        )
        yield CounterMetricFamily(
            "dr_agent_actuations", "Device writes by the agent", value=a.actuator.writes if a.actuator else 0
        )
        yield _g(
            "dr_agent_mqtt_connected",
            "1 while connected to the broker",
            1.0 if a.mqtt and a.mqtt.connected.is_set() else 0.0,
        )
        yield CounterMetricFamily(
            "dr_agent_mqtt_published",
            "Messages the broker acknowledged",
            value=a.mqtt.published if a.mqtt else 0,
        )
        yield _g("dr_agent_outbox_pending", "Messages waiting in the outbox", float(a.outbox_pending))
        yield _g(
            "dr_agent_control_cycle_seconds", "Duration of the last control cycle", a.last_cycle_s, unit=""
        )
        avail = GaugeMetricFamily(
            "dr_agent_device_available", "1 if the device answers its polls", labels=["device", "kind"]
        )
        lat = GaugeMetricFamily(
            "dr_agent_device_poll_latency_seconds", "Duration of the device's last poll", labels=["device"]
        )
        fails = CounterMetricFamily("dr_agent_device_poll_failures", "Failed polls", labels=["device"])
        for name, d in a.devices.items():
            avail.add_metric([name, d.kind], 1.0 if d.health.available else 0.0)
            if d.health.latency_ms is not None:
                lat.add_metric([name], d.health.latency_ms / 1000)
            fails.add_metric([name], d.health.failures)
        yield avail
        yield lat
        yield fails
        req = CounterMetricFamily("dr_agent_modbus_requests", "Modbus requests sent", labels=["endpoint"])
        err = CounterMetricFamily(
            "dr_agent_modbus_failures", "Modbus requests that failed", labels=["endpoint"]
        )
        con = GaugeMetricFamily(
            "dr_agent_modbus_connected", "1 while the endpoint's connection is open", labels=["endpoint"]
        )
        for name, t in a.transports.items():
            req.add_metric([name], t.stats.requests)
            err.add_metric([name], t.stats.failures)
            con.add_metric([name], 1.0 if t.connected else 0.0)
        yield req
        yield err
        yield con


def serve_metrics(agent: Agent, host: str, port: int) -> tuple[CollectorRegistry, int]:
    """Start the /metrics HTTP server (a daemon thread). Returns the registry and the bound port."""
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return registry, int(server.server_address[1])
