"""A simulated site: device models behind Modbus TCP servers, a site meter that adds them up.

Built from the same device configs the agent reads, so the demo, `simulate`
and the tests describe one site once. Only the CLI's demo/simulate and the
tests import this module; the production path never does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from drivers.device import DeviceConfigBase
from drivers.profile import load_profile
from drivers.registry import SimEnv, kinds
from drivers.sim.bank import RegisterBank
from drivers.sim.models import FACTORY_DAY, BaseLoad, DailyProfile, DeviceModel, EvSession, MeterModel
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


@dataclass
class PlantOptions:
    """How realistic the plant is: delays, meter quality, weather, vehicles. Defaults suit the demo."""

    profile: DailyProfile = field(default_factory=lambda: FACTORY_DAY)
    noise_pct: float = 0.5
    meter_noise_kw: float = 0.0
    meter_update_s: float = 1.0
    #: Actuation delay by device kind, s ("default" for the others).
    delay_s: dict[str, float] = field(default_factory=dict)
    outdoor_c: float = 32.0
    outdoor_swing_c: float = 0.0
    #: EV sessions by charger name; a charger not listed has a vehicle all day.
    ev_sessions: dict[str, list[EvSession]] = field(default_factory=dict)
    #: Storage state of charge at the start, %.
    storage_soc_pct: float = 80.0


def _model_for(
    cfg: DeviceConfigBase, bank: RegisterBank, opts: PlantOptions, seed: int, tz_offset_s: float
) -> DeviceModel:
    """The device's physics: its kind's simulator (drivers/kinds/<kind>.py) on its register bank."""
    kind = str(getattr(cfg, "kind", ""))
    k = kinds().get(kind)
    if k is None or k.simulator is None:
        raise ValueError(f"no simulator model for device kind {kind!r}")
    delay = opts.delay_s.get(kind, opts.delay_s.get("default", 0.0))
    env = SimEnv(
        rated_kw=cfg.rated_kw or 10.0, delay_s=delay, seed=seed, tz_offset_s=tz_offset_s, options=opts
    )
    model = k.simulator(cfg, bank, env)
    if not isinstance(model, DeviceModel):
        raise TypeError(f"the {kind} simulator returned {type(model).__name__}, not a DeviceModel")
    return model


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
        noise_pct: float | None = None,
        options: PlantOptions | None = None,
    ) -> SimulatedPlant:
        """The plant for these device configs; `options` make it as realistic as a benchmark needs."""
        opts = options or PlantOptions()
        if noise_pct is not None:
            opts = replace(opts, noise_pct=noise_pct)
        registry = kinds()
        controllable_kw = sum(
            (d.rated_kw or 0.0)
            for d in devices
            if (k := registry.get(str(getattr(d, "kind", "")))) is None or k.site_load
        )
        share = max(0.2, 1.0 - controllable_kw / peak_kw * 0.8)
        plant = cls(
            peak_kw=peak_kw,
            meter_name=meter_name,
            base=BaseLoad(
                peak_kw=peak_kw,
                profile=opts.profile,
                share=share,
                seed=seed,
                tz_offset_s=tz_offset_s,
                noise_pct=opts.noise_pct,
            ),
        )
        for d in devices:
            bank = RegisterBank(load_profile(d.profile), register_offset=d.register_offset)
            plant.banks[d.name] = bank
            plant.models[d.name] = _model_for(d, bank, opts, seed, tz_offset_s)
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
            m.advance(now, dt)
            total += m.load_kw()
        meter = self.models[self.meter_name]
        assert isinstance(meter, MeterModel)
        meter.show_total(now, total, dt)

    def fail(self, device: str, code: int = 4, failsafe: bool = True) -> None:
        """Make a device stop answering (Modbus exception `code`); with `failsafe` it reverts on its own."""
        self.banks[device].fail_with = code
        if failsafe:
            self.models[device].fail()

    def recover(self, device: str) -> None:
        self.banks[device].fail_with = None
        self.models[device].failed = False

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
