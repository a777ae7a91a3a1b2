"""The OpenADR VEN against a real openleadr VTN on loopback, with Mosquitto, Modbus TCP and SQLite.

The agent registers, an event arrives, the opt-in is seen at the VTN, the
simulated devices are shed (read back over Modbus) and held in the band,
TELEMETRY_USAGE reports reach the VTN; the VTN goes away and comes back (the
held reports arrive), forgets the registration (the VEN registers again), the
agent restarts mid-event (the event resumes), and a cancellation restores
every device. An event outside the contract gets an optOut and nothing is
shed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

# The openadr extra (./dev test installs it).
from openleadr import OpenADRServer, objects

from agent.config.model import SiteConfig
from agent.config.openadr import OpenAdrConfig
from agent.platform.clock import ScaledClock
from agent.runtime.daemon import Agent
from drivers.sim.server import free_port
from tests.conftest import Mosquitto, serve_plant, site_config
from tests.helpers import FastForwardClock, Observer
from tests.integration.test_supervision import changed, read_back

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning"),
]
logging.getLogger("openleadr").setLevel(logging.ERROR)

PREFIX = "/OpenADR2/Simple/2.0b"


@dataclass
class Vtn:
    """An openleadr VTN that records what the VEN did: registrations, opts, report values."""

    port: int
    tls: dict[str, str] = field(default_factory=dict)
    ven_fingerprint: str | None = None
    registrations: list[str] = field(default_factory=list)
    vens: dict[str, dict[str, Any]] = field(default_factory=dict)
    opts: list[tuple[str, str]] = field(default_factory=list)
    reports: dict[str, list[tuple[datetime, float]]] = field(default_factory=dict)
    server: Any = None

    def build(self) -> None:
        s = self.tls
        self.server = OpenADRServer(
            vtn_id="TEST-VTN",
            http_port=self.port,
            http_host="127.0.0.1",
            requested_poll_freq=timedelta(seconds=1),
            ven_lookup=self.lookup,
            show_fingerprint=False,
            cert=s.get("cert"),
            key=s.get("key"),
            http_cert=s.get("cert"),
            http_key=s.get("key"),
            http_ca_file=s.get("ca"),
        )
        self.server.add_handler("on_create_party_registration", self.on_register)
        self.server.add_handler("on_register_report", self.on_register_report)

    async def start(self) -> None:
        self.build()
        await self.server.run()

    def lookup(self, ven_id: str) -> dict[str, Any] | None:
        return self.vens.get(ven_id)

    async def on_register(self, info: dict[str, Any]) -> tuple[str, str]:
        name = info["ven_name"]
        ven_id = f"ven-{name}"
        self.vens[ven_id] = {
            "ven_id": ven_id,
            "ven_name": name,
            "fingerprint": self.ven_fingerprint,
            "registration_id": f"reg-{len(self.registrations)}",
        }
        self.registrations.append(ven_id)
        return ven_id, self.vens[ven_id]["registration_id"]

    async def on_register_report(
        self,
        ven_id: str,
        resource_id: str,
        measurement: str,
        unit: str,
        scale: str,
        min_sampling_interval: timedelta,
        max_sampling_interval: timedelta,
    ) -> tuple[Any, timedelta, timedelta]:
        def collect(values: list[tuple[datetime, float]]) -> None:
            self.reports.setdefault(resource_id, []).extend(values)

        # Every 10 s, sent every 30 s (agent clock).
        return collect, timedelta(seconds=10), timedelta(seconds=30)

    def on_opt(self, ven_id: str, event_id: str, opt_type: str) -> None:
        self.opts.append((event_id, opt_type))

    def add_event(self, ven_id: str, event_id: str, start: datetime, minutes: float, delta_kw: float) -> None:
        self.server.add_event(
            ven_id=ven_id,
            event_id=event_id,
            signal_name="LOAD_DISPATCH",
            signal_type="delta",
            intervals=[
                objects.Interval(dtstart=start, duration=timedelta(minutes=minutes), signal_payload=-delta_kw)
            ],
            callback=self.on_opt,
            market_context="http://dr.example/contracted",
            recovery_period=timedelta(seconds=120),
        )

    async def stop(self) -> None:
        await self.server.stop()


@contextlib.asynccontextmanager
async def vtn_on_loopback(**kw: Any) -> AsyncIterator[Vtn]:
    vtn = Vtn(free_port(), **kw)
    await vtn.start()
    try:
        yield vtn
    finally:
        with contextlib.suppress(Exception):
            await vtn.stop()


def with_openadr(cfg: SiteConfig, vtn: Vtn, **extra: Any) -> SiteConfig:
    scheme = "https" if vtn.tls else "http"
    oadr = OpenAdrConfig(
        vtn_url=f"{scheme}://127.0.0.1:{vtn.port}{PREFIX}", ven_name="site-1", poll_interval_s=0.3, **extra
    )
    return cfg.model_copy(update={"event_sources": ["mqtt", "openadr"], "openadr": oadr})


async def until(predicate: Any, timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert predicate(), what


async def stop_agent(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 20)


@dataclass
class Running:
    """An agent running on a served plant; ``before`` is the plant read back before the agent started."""

    cfg: SiteConfig
    clock: ScaledClock
    before: Any
    agent: Agent = field(init=False)
    stop: asyncio.Event = field(init=False)
    task: asyncio.Task[None] = field(init=False)

    def start(self) -> None:
        self.agent = Agent(self.cfg, self.clock, metrics=False)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.agent.run(self.stop))

    async def halt(self) -> None:
        await stop_agent(self.stop, self.task)

    async def restored(self, timeout: float = 30) -> None:
        """Wait until every journal entry is closed (the devices written back)."""
        async with asyncio.timeout(timeout):
            while await self.agent.store.journal_open():  # noqa: ASYNC110
                await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def agent_on_plant(cfg: SiteConfig, clock: ScaledClock) -> AsyncIterator[Running]:
    """Serve the simulated plant, read it back, start the agent; stop both on the way out."""
    plant, plant_task = await serve_plant(cfg, clock)
    run = Running(cfg, clock, await read_back(cfg))
    run.start()
    try:
        yield run
    finally:
        await run.halt()
        plant_task.cancel()
        await plant.stop()


async def test_openadr_event_opt_in_shed_in_band_reports_outage_reregister_restart_and_cancel(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with vtn_on_loopback() as vtn:
        cfg = with_openadr(site_config(mosquitto.port, tmp_path), vtn)
        tz = ZoneInfo(cfg.site.timezone)
        # A year ahead of the wall clock: the VTN (wall time) sees the event as far, never completed.
        clock = FastForwardClock(
            30.0, origin_sim=datetime(datetime.now(tz).year + 1, 7, 1, 10, 30, tzinfo=tz).timestamp()
        )
        async with agent_on_plant(cfg, clock) as run:
            before, agent = run.before, run.agent
            async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root) as obs:
                await obs.wait_online()
                await until(lambda: vtn.registrations, 20, "the VEN never registered")
                ven_id = vtn.registrations[0]
                start = datetime.fromtimestamp(clock.now() + 16 * 60, tz)  # 15 min of history first
                vtn.add_event(ven_id, "ev-1", start, 20, delta_kw=100)

                # Opt-in seen at the VTN; the response and state on MQTT carry the source-keyed id.
                await until(lambda: ("ev-1", "optIn") in vtn.opts, 20, "no optIn at the VTN")
                resp = await obs.wait_for(
                    lambda t, b: t.endswith("/out/response") and b["event_id"] == "oadr:ev-1", 10
                )
                assert resp["opt"] == "in" and resp["committed_kw"] == pytest.approx(100.0), resp
                # The history (polls only, nothing controlled) at 120x; the event at the test's 30x.
                await clock.fast_forward(start.timestamp() - 60)
                await obs.wait_for(
                    lambda t, b: t.endswith("/out/event/oadr:ev-1") and b["state"] == "active", 60
                )
                await clock.sleep(start.timestamp() + 240 - clock.now())

                # Shedding on the simulated devices, read back over Modbus, held in the band.
                during = await read_back(cfg)
                assert changed(before, during), "nothing was shed"
                reports = [r for r in obs.on("out/report") if r["event_id"] == "oadr:ev-1"]
                assert reports and reports[-1]["in_band"] is True, reports[-3:]

                # TELEMETRY_USAGE at the VTN: demand, baseline, realized shed.
                await until(
                    lambda: len(vtn.reports.get("realized_shed", [])) >= 3, 30, "no telemetry at the VTN"
                )
                assert {"site_demand", "baseline", "realized_shed"} <= vtn.reports.keys()
                assert max(v for _t, v in vtn.reports["realized_shed"]) > 50.0, vtn.reports["realized_shed"]

                # The VTN goes away: the event runs on, reports are held and arrive when it is back.
                await vtn.stop()
                await until(lambda: agent.ven.status.reachable is False, 20, "the outage went unseen")
                await until(lambda: agent.ven.status.reports_held >= 2, 60, "no report held back")
                held = agent.ven.status.reports_held
                assert changed(before, await read_back(cfg)), "the outage stopped the shedding"
                n_before = len(vtn.reports["site_demand"])
                await vtn.server.run()  # the same VTN, back on its port
                await until(lambda: agent.ven.status.reports_held == 0, 30, "held reports never delivered")
                assert len(vtn.reports["site_demand"]) >= n_before + held

                # The VTN forgets the registration: the VEN registers again, the event carries on.
                vtn.vens.clear()
                await until(lambda: len(vtn.registrations) >= 2, 30, "no re-registration")
                await asyncio.sleep(1.0)
                assert agent.events["oadr:ev-1"].state == "active"

            # The agent restarts mid-event: the stored event resumes (no new opt at the VTN).
            await run.halt()
            opts = list(vtn.opts)
            run.start()
            agent = run.agent
            async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root, "after-restart") as obs:
                await obs.wait_for(
                    lambda t, b: t.endswith("/out/event/oadr:ev-1") and b["state"] == "active", 30
                )
                await until(
                    lambda: agent.ven is not None and agent.ven.status.registered, 20, "no registration"
                )
                await until(lambda: bool(agent.lifecycle.shedding()), 20, "the event did not resume")
                runtime = agent.events["oadr:ev-1"].runtime
                assert runtime is not None and runtime.get("resumed") is True
                await clock.sleep(90)
                assert changed(before, await read_back(cfg)), "nothing shed after the restart"
                assert vtn.opts == opts

                # The VTN cancels: devices are restored, read back over Modbus.
                vtn.server.cancel_event(ven_id, "ev-1")
                await obs.wait_for(
                    lambda t, b: t.endswith("/out/event/oadr:ev-1") and b["state"] == "cancelled", 30
                )
                await run.restored()
                assert not changed(before, await read_back(cfg)), "not restored after the cancellation"


async def test_event_outside_the_contract_gets_opt_out_and_nothing_is_shed(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with vtn_on_loopback() as vtn:
        cfg = with_openadr(site_config(mosquitto.port, tmp_path), vtn)
        tz = ZoneInfo(cfg.site.timezone)
        year = datetime.now(tz).year + 1
        clock = FastForwardClock(30.0, origin_sim=datetime(year, 7, 1, 15, 55, tzinfo=tz).timestamp())
        async with agent_on_plant(cfg, clock) as run:
            before, agent = run.before, run.agent
            async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root) as obs:
                await until(lambda: vtn.registrations, 20, "the VEN never registered")
                # 16:00-16:10: outside the contract's allowed hours (10:00-15:00).
                vtn.add_event(vtn.registrations[0], "late-1", datetime(year, 7, 1, 16, 0, tzinfo=tz), 10, 100)
                await until(lambda: ("late-1", "optOut") in vtn.opts, 20, "no optOut at the VTN")
                resp = await obs.wait_for(
                    lambda t, b: t.endswith("/out/response") and b["event_id"] == "oadr:late-1", 10
                )
                assert resp["opt"] == "out" and resp["code"] == "outside_allowed_hours", resp
                # Up to a minute before the event at 120x; its first two minutes at the test's 30x.
                await clock.fast_forward(datetime(year, 7, 1, 15, 59, tzinfo=tz).timestamp())
                await clock.sleep(datetime(year, 7, 1, 16, 2, tzinfo=tz).timestamp() - clock.now())
                assert not changed(before, await read_back(cfg)), "something was shed"
                assert agent.events["oadr:late-1"].control is None
