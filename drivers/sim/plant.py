"""A simulated site: device models behind Modbus TCP servers, a site meter that adds them up.

Built from the same device configs the agent reads, so the demo, `simulate`
and the tests describe one site once. Only the CLI's demo/simulate and the
tests import this module; the production path never does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from drivers.device import DeviceConfigBase
from drivers.profile import load_profile
from drivers.sim.bank import RegisterBank
from drivers.sim.models import (
    BaseLoad,
    DeviceModel,
    EvChargerModel,
    HvacModel,
    LightingModel,
    MeterModel,
    RelayModel,
    StorageModel,
)
from drivers.sim.server import SimServer

log = logging.getLogger("dr_agent.sim")


class SimClock(Protocol):
    speed: float

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


@dataclass
class SimEndpoint:
    name: str
    host: str
    port: int


def _model_for(cfg: DeviceConfigBase, bank: RegisterBank) -> DeviceModel:
    kind = getattr(cfg, "kind", "")
    rated = cfg.rated_kw or 10.0
    c: Any = cfg
    if kind == "meter":
        return MeterModel(bank)
    if kind == "hvac":
        return HvacModel(bank, rated_kw=rated)
    if kind == "lighting":
        return LightingModel(bank, rated_kw=rated)
    if kind == "ev_charger":
        return EvChargerModel(
            bank,
            max_current_a=c.max_current_a,
            phases=c.phases,
            voltage_v=c.voltage_v,
            vehicle_max_a=min(c.max_current_a, rated * 1000 / (c.phases * c.voltage_v)),
        )
    if kind == "storage":
        return StorageModel(bank, capacity_kwh=c.capacity_kwh, max_kw=c.max_discharge_kw)
    if kind == "relay":
        return RelayModel(bank, rated_kw=rated)
    raise ValueError(f"no simulator model for device kind {kind!r}")


@dataclass
class SimulatedPlant:
    """The whole simulated site. `step()` advances physics; `serve()` exposes it over Modbus TCP."""

    peak_kw: float
    meter_name: str
    base: BaseLoad
    models: dict[str, DeviceModel] = field(default_factory=dict)
    banks: dict[str, RegisterBank] = field(default_factory=dict)
    placement: dict[str, tuple[str, int]] = field(default_factory=dict)  # device -> (endpoint, unit)
    servers: dict[str, SimServer] = field(default_factory=dict)
    last_step: float | None = None

    @classmethod
    def build(
        cls,
        devices: Sequence[DeviceConfigBase],
        *,
        peak_kw: float,
        meter_name: str,
        seed: int = 1,
        tz_offset_s: float = 8 * 3600,
        noise_pct: float = 0.5,
    ) -> SimulatedPlant:
        controllable_kw = sum(
            (d.rated_kw or 0.0) for d in devices if getattr(d, "kind", "") not in ("meter", "storage")
        )
        share = max(0.2, 1.0 - controllable_kw / peak_kw * 0.8)
        plant = cls(
            peak_kw=peak_kw,
            meter_name=meter_name,
            base=BaseLoad(
                peak_kw=peak_kw, share=share, seed=seed, tz_offset_s=tz_offset_s, noise_pct=noise_pct
            ),
        )
        for d in devices:
            bank = RegisterBank(load_profile(d.profile), register_offset=d.register_offset)
            plant.banks[d.name] = bank
            plant.models[d.name] = _model_for(d, bank)
            plant.placement[d.name] = (d.endpoint, d.unit_id)
        if meter_name not in plant.models:
            raise ValueError(f"site meter {meter_name!r} is not among the devices")
        return plant

    def step(self, now: float) -> None:
        dt = 1.0 if self.last_step is None else max(0.0, now - self.last_step)
        self.last_step = now
        if dt == 0:
            return
        self.base.step(now, dt)
        total = self.base.kw(now)
        for name, m in self.models.items():
            if name == self.meter_name:
                continue
            m.step(now, dt)
            total += m.load_kw()
        meter = self.models[self.meter_name]
        assert isinstance(meter, MeterModel)
        meter.show(total, dt)

    def site_kw(self) -> float:
        meter = self.models[self.meter_name]
        assert isinstance(meter, MeterModel)
        return meter.total_kw

    async def serve(self, endpoints: Sequence[SimEndpoint]) -> None:
        """Start one Modbus TCP server per endpoint, with each device at its unit id."""
        for ep in endpoints:
            banks = {unit: self.banks[dev] for dev, (epn, unit) in self.placement.items() if epn == ep.name}
            if not banks:
                continue
            server = SimServer(banks, host=ep.host, port=ep.port)
            await server.start()
            self.servers[ep.name] = server

    async def run(self, clock: SimClock, period_s: float = 1.0) -> None:
        """Advance physics on `clock` forever (cancel to stop)."""
        wall_period = max(0.01, period_s / clock.speed) if clock.speed != float("inf") else 0
        while True:
            self.step(clock.now())
            await asyncio.sleep(wall_period)

    async def stop(self) -> None:
        for s in self.servers.values():
            await s.stop()
        self.servers.clear()
