"""Prometheus metrics, collected at scrape time from the agent's live state.

A custom collector reads the agent's state when Prometheus scrapes, so the
control and poll loops pay nothing per cycle. Conventions (docs/metrics.md is
the catalogue, and a test keeps it and this file in step):

- every name starts with `dr_agent_`; base units in the name: `_watts`,
  `_seconds`, `_bytes`, `_timestamp_seconds`; counters end in `_total`;
  0/1 gauges read as a sentence (`dr_agent_mqtt_connected`);
- power is in watts (Grafana shows kW by itself); the domain's kW become
  watts here and nowhere else;
- labels are bounded: `device`, `kind`, `endpoint` (from the config),
  `state`, `result`; never an event id (one series per event grows forever),
  which is what the `dr_agent_event_*` gauges without labels are for.

To add a metric: yield a family from `collect()` (or a helper it calls), add
a row to docs/metrics.md; tests/unit/test_metrics.py fails until both agree.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from agent import __version__
from agent.platform import failpoints
from agent.runtime.ports import AgentView

KW = 1000.0


def _w(kw: float | None) -> float | None:
    return None if kw is None else kw * KW


def _g(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    """A gauge without labels; absent (no sample) when the value is unknown, never a fake 0."""
    g = GaugeMetricFamily(name, doc)
    if value is not None:
        g.add_metric([], float(value))
    return g


def _c(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=float(value))


class MetricsHost(AgentView, Protocol):
    """The agent as the metrics server sees it: read at scrape time, told the port it bound."""

    metrics_port: int | None


class AgentCollector(Collector):
    def __init__(self, agent: AgentView) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        yield from self._process()
        yield from self._event()
        yield from self._devices()
        yield from self._modbus()
        yield from self._mqtt()
        yield from self._components()

    def _process(self) -> Iterator[Metric]:
        a = self.agent
        yield InfoMetricFamily(
            "dr_agent_build", "Agent version and site", value={"version": __version__, "site": a.cfg.site.id}
        )
        yield _g("dr_agent_start_time_seconds", "Unix time the agent process started", a.started_at)
        yield _g(
            "dr_agent_ready",
            "1 once devices were polled and the broker answered (or the grace period passed)",
            1.0 if a.polled_once.is_set() else 0.0,
        )
        yield _g(
            "dr_agent_control_cycle_duration_seconds", "Duration of the last control cycle", a.last_cycle_s
        )
        yield _c("dr_agent_device_writes_total", "Writes to devices (shed and restore)", a.actuator.writes)
        yield _c(
            "dr_agent_limit_refusals_total",
            "Writes refused before sending because they would breach a device limit",
            a.actuator.limit_refusals,
        )
        st = a.config_status
        reloads = CounterMetricFamily(
            "dr_agent_config_reloads_total", "Configuration reloads (SIGHUP), by result", labels=["result"]
        )
        reloads.add_metric(["applied"], float(st.get("reloads", 0)))
        reloads.add_metric(["rejected"], float(st.get("rejected", 0)))
        yield reloads
        last = st.get("last_reload")
        yield _g(
            "dr_agent_config_last_reload_successful",
            "1 if the last reload was applied, 0 if it was rejected",
            None if last is None else float(bool(last.get("ok"))),
        )
        yield _g(
            "dr_agent_config_loaded_timestamp_seconds",
            "Unix time the running configuration was loaded",
            st.get("loaded_at"),
        )
        try:
            free = shutil.disk_usage(a.store.sync.path.parent).free
        except (OSError, AttributeError):
            free = None
        yield _g("dr_agent_disk_free_bytes", "Free space on the database's file system", free)

    def _event(self) -> Iterator[Metric]:
        a = self.agent
        live = a.live_state()
        yield _g(
            "dr_agent_site_load_watts", "Filtered site load from the site meter", _w(live.get("measured_kw"))
        )
        yield _g(
            "dr_agent_event_active",
            "1 while an event is being controlled (shedding or restoring)",
            1.0 if live.get("event_id") else 0.0,
        )
        yield _g(
            "dr_agent_event_baseline_watts", "Baseline of the running event", _w(live.get("baseline_kw"))
        )
        yield _g(
            "dr_agent_event_target_watts",
            "Committed curtailment of the running event",
            _w(live.get("committed_kw")),
        )
        band = live.get("band_kw") or [None, None]
        yield _g(
            "dr_agent_event_band_lower_watts",
            "Bottom of the contracted curtailment band of the running event",
            _w(band[0]),
        )
        yield _g(
            "dr_agent_event_band_upper_watts",
            "Top of the contracted curtailment band of the running event",
            _w(band[1]),
        )
        yield _g(
            "dr_agent_event_realized_curtailment_watts",
            "Baseline minus filtered site load",
            _w(live.get("realized_kw")),
        )
        inb = live.get("in_band")
        yield _g(
            "dr_agent_event_in_band",
            "1 if the realized curtailment is inside the band",
            None if inb is None else float(inb),
        )
        steps = live.get("active_steps") or []
        yield _g("dr_agent_event_active_steps", "Shed steps currently applied", float(len(steps)))
        yield from self._control_quality()
        states = Counter(r.state for r in list(a.events.values()))
        ev = GaugeMetricFamily("dr_agent_events", "Events the agent knows, by state", labels=["state"])
        for state, n in sorted(states.items()):
            ev.add_metric([state], float(n))
        yield ev

    def _control_quality(self) -> Iterator[Metric]:
        """Control quality of the running or last event (docs/control.md); no event label (series stay few)."""
        q = self.agent.controller.quality()
        figures = (
            ("time_to_band_seconds", "Seconds from the start until in band to stay", "time_to_band_s", 1.0),
            ("in_band_ratio", "Share of 10-s windows in band, from band entry", "in_band_fraction", 1.0),
            ("tracking_error_ratio", "Mean absolute error to target, of peak", "tracking_error_pct", 0.01),
            ("overshoot_ratio", "Highest 10-s mean above the band top, of peak", "overshoot_pct", 0.01),
            ("rebound_peak_ratio", "Highest 1-min load over baseline, of peak", "rebound_peak_pct", 0.01),
            ("actuations", "Device writes the controller made for the event", "actuations", 1.0),
            ("degraded_seconds", "Seconds held blind (meter stale or down)", "degraded_s", 1.0),
            ("degraded", "1 while holding because the meter is stale or down", "degraded", 1.0),
        )
        for suffix, doc, key, scale in figures:
            value = None if q is None or q[1].get(key) is None else float(q[1][key]) * scale
            yield _g(f"dr_agent_event_control_{suffix}", doc, value)

    def _devices(self) -> Iterator[Metric]:
        a = self.agent
        rec = a.running()
        shed_devices = {s.step.device for s in rec.control.active} if rec and rec.control else set()
        up = GaugeMetricFamily(
            "dr_agent_device_up", "1 if the device answers its polls", labels=["device", "kind", "endpoint"]
        )
        power = GaugeMetricFamily(
            "dr_agent_device_power_watts", "Active power the device reports", labels=["device", "kind"]
        )
        shed = GaugeMetricFamily(
            "dr_agent_device_shed",
            "1 while a step of the running event holds the device shed",
            labels=["device"],
        )
        dur = GaugeMetricFamily(
            "dr_agent_device_poll_duration_seconds", "Duration of the device's last poll", labels=["device"]
        )
        last = GaugeMetricFamily(
            "dr_agent_device_last_success_timestamp_seconds",
            "Unix time of the last successful poll",
            labels=["device"],
        )
        polls = CounterMetricFamily("dr_agent_device_polls_total", "Polls of the device", labels=["device"])
        fails = CounterMetricFamily(
            "dr_agent_device_poll_failures_total", "Failed polls of the device", labels=["device"]
        )
        for name, d in list(a.devices.items()):
            h = d.health
            up.add_metric([name, d.kind, d.transport.name], 1.0 if h.available else 0.0)
            p = d.power_kw()
            if p is not None:
                power.add_metric([name, d.kind], p * KW)
            shed.add_metric([name], 1.0 if name in shed_devices else 0.0)
            if h.latency_ms is not None:
                dur.add_metric([name], h.latency_ms / 1000)
            if h.last_ok_ts is not None:
                last.add_metric([name], h.last_ok_ts)
            polls.add_metric([name], float(h.polls))
            fails.add_metric([name], float(h.failures))
        yield from (up, power, shed, dur, last, polls, fails)

    def _modbus(self) -> Iterator[Metric]:
        req = CounterMetricFamily(
            "dr_agent_modbus_requests_total", "Modbus requests sent", labels=["endpoint"]
        )
        err = CounterMetricFamily(
            "dr_agent_modbus_request_failures_total",
            "Modbus requests that failed (timeout, exception, connection)",
            labels=["endpoint"],
        )
        rec = CounterMetricFamily(
            "dr_agent_modbus_connects_total", "Connections opened to the endpoint", labels=["endpoint"]
        )
        con = GaugeMetricFamily(
            "dr_agent_modbus_connected", "1 while the endpoint's connection is open", labels=["endpoint"]
        )
        lat = GaugeMetricFamily(
            "dr_agent_modbus_request_duration_seconds",
            "Duration of the endpoint's last successful request",
            labels=["endpoint"],
        )
        for name, t in list(self.agent.transports.items()):
            stats = getattr(t, "stats", None)
            if stats is None:  # a simulation loopback has no wire to measure
                continue
            req.add_metric([name], float(stats.requests))
            err.add_metric([name], float(stats.failures))
            rec.add_metric([name], float(stats.reconnects))
            con.add_metric([name], 1.0 if getattr(t, "connected", False) else 0.0)
            lat.add_metric([name], float(stats.last_latency_s))
        yield from (req, err, rec, con, lat)

    def _mqtt(self) -> Iterator[Metric]:
        m = self.agent.mqtt
        yield _g(
            "dr_agent_mqtt_connected",
            "1 while connected to the broker",
            1.0 if m and m.connected.is_set() else 0.0,
        )
        yield _c(
            "dr_agent_mqtt_connects_total", "Successful connections to the broker", m.connects if m else 0
        )
        yield _c(
            "dr_agent_mqtt_messages_published_total",
            "Messages the broker acknowledged",
            m.published if m else 0,
        )
        yield _c(
            "dr_agent_mqtt_messages_received_total",
            "Messages received on subscribed topics",
            m.received if m else 0,
        )
        yield _g(
            "dr_agent_outbox_messages",
            "Messages waiting in the durable outbox",
            float(self.agent.outbox_pending),
        )

    def _components(self) -> Iterator[Metric]:
        health = dict(self.agent.supervisor.health)
        restarts = CounterMetricFamily(
            "dr_agent_component_restarts_total",
            "Restarts of a supervised component after it failed",
            labels=["component"],
        )
        failing = GaugeMetricFamily(
            "dr_agent_component_failing",
            "1 while a component is failing (restarted, not yet healthy again)",
            labels=["component"],
        )
        for name, h in sorted(health.items()):
            restarts.add_metric([name], float(h.restarts))
            failing.add_metric([name], 1.0 if h.failing else 0.0)
        yield restarts
        yield failing


class MetricsServer:
    """The /metrics HTTP server (a daemon thread) as a supervised component: `run()` serves and
    watches it; when it fails, the supervisor restarts it on the same port."""

    CHECK_S = 5.0

    def __init__(self, agent: MetricsHost, host: str, port: int) -> None:
        self.agent = agent
        self.host = host
        self.port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind and serve (if not already); returns the bound port (port 0 picks one, then kept)."""
        if self._server is None:
            registry = CollectorRegistry()
            registry.register(AgentCollector(self.agent))
            self._server, self._thread = start_http_server(self.port, addr=self.host, registry=registry)
            self.port = int(self._server.server_address[1])
        return self.port

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    async def run(self) -> None:
        try:
            # In a thread: binding looks up the host name (getfqdn), which may wait on DNS.
            self.agent.metrics_port = await asyncio.to_thread(self.start)
            while True:
                await asyncio.sleep(self.CHECK_S)
                failpoints.hit("metrics")
                if self._thread is not None and not self._thread.is_alive():
                    raise RuntimeError("the metrics server thread is gone")
        finally:
            await asyncio.to_thread(self.stop)
