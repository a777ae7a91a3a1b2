"""What the process's side components read of the running agent, as a Protocol.

The composition root (agent/runtime/daemon.py) hands itself to the metrics collector
(agent/runtime/metrics.py) and the state file writer (agent/runtime/statefile.py); they
are typed against `AgentView`, never against `Agent`: nothing but the command line imports
the daemon (the import contracts in setup.cfg). The config reload has its own, writable
port (`agent.runtime.reload.Reloadable`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agent.config.model import SiteConfig
    from agent.control.actuator import Actuator
    from agent.control.controller import Controller
    from agent.events.lifecycle import EventRecord
    from agent.platform.clock import Clock
    from agent.platform.store import AsyncStore
    from agent.runtime.mqtt import MqttLink
    from agent.runtime.supervisor import Supervisor
    from drivers.device import Device


class AgentView(Protocol):
    """The running agent, read only: process, configuration, the events in hand, devices, MQTT,
    supervised components. Read at scrape or write time; nothing here is changed."""

    @property
    def cfg(self) -> SiteConfig: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def store(self) -> AsyncStore: ...
    @property
    def started_at(self) -> float: ...
    @property
    def polled_once(self) -> asyncio.Event: ...
    @property
    def last_cycle_s(self) -> float | None: ...
    @property
    def config_status(self) -> Mapping[str, Any]: ...
    @property
    def outbox_pending(self) -> int: ...
    @property
    def metrics_port(self) -> int | None: ...
    @property
    def actuator(self) -> Actuator: ...
    @property
    def controller(self) -> Controller: ...
    @property
    def mqtt(self) -> MqttLink | None: ...
    @property
    def supervisor(self) -> Supervisor: ...
    @property
    def devices(self) -> Mapping[str, Device]: ...
    @property
    def transports(self) -> Mapping[str, Any]: ...
    @property
    def events(self) -> Mapping[str, EventRecord]: ...

    def running(self) -> EventRecord | None:
        """The event being controlled now, if any."""
        ...

    def live_state(self) -> dict[str, Any]:
        """The running event's live report, else the site load alone."""
        ...
