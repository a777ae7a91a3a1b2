"""Device objects from the configuration: one transport per endpoint, one device per entry.

The daemon builds its devices here at start, a config reload rebuilds the changed ones, and the
command line (diagnose, restore, plan) builds them without a daemon.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.config.model import SiteConfig
from agent.platform.clock import Clock
from drivers.device import Device, Transport
from drivers.modbus import ModbusTransport
from drivers.profile import load_profile
from drivers.registry import kinds


def build_devices(
    cfg: SiteConfig, given: Mapping[str, Transport] | None = None, clock: Clock | None = None
) -> tuple[dict[str, Any], dict[str, Device]]:
    """One transport per endpoint (or the given ones) and one device object per configured device."""
    transports: dict[str, Any] = dict(given or {})
    for ep in cfg.modbus.endpoints:
        if ep.name in transports:
            continue
        transports[ep.name] = ModbusTransport(
            ep.name,
            protocol=ep.protocol,
            host=ep.host,
            port=ep.port,
            serial_port=ep.serial_port,
            baudrate=ep.baudrate,
            parity=ep.parity,
            stopbits=ep.stopbits,
            timeout_s=ep.timeout_s,
            inter_frame_delay_s=ep.inter_frame_delay_ms / 1000,
        )
    registry = kinds()
    devices: dict[str, Device] = {}
    for dc in cfg.devices:
        kind = registry[dc.kind]
        devices[dc.name] = dev = kind.device(dc, transports[dc.endpoint], load_profile(dc.profile))
        if clock is not None:
            dev.clock = clock.now  # retry backoff in the agent's time (simulation runs faster)
    return transports, devices
