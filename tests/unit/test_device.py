"""Device health, value rejection, writes with read-back and watchdog feeding, over loopback banks."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

from drivers.device import UNAVAILABLE_AFTER_FAILURES, Device, WriteError
from drivers.profile import load_profile
from drivers.registry import kinds
from drivers.sim.bank import RegisterBank
from drivers.sim.loopback import LoopbackTransport
from drivers.sim.models import EvChargerModel, StorageModel


def make(
    kind: str, profile: str, unit: int = 1, **cfg: Any
) -> tuple[Device, RegisterBank, LoopbackTransport]:
    prof = load_profile(profile)
    bank = RegisterBank(prof)
    transport = LoopbackTransport("ep", {unit: bank})
    k = kinds()[kind]
    config = k.config.model_validate(
        {"name": f"{kind}-1", "kind": kind, "endpoint": "ep", "unit_id": unit, "profile": profile, **cfg}
    )
    return k.device(config, transport, prof), bank, transport


async def test_poll_reads_every_point_in_coalesced_requests() -> None:
    dev, bank, transport = make("meter", "eastron_sdm630")
    bank.set("power_kw", 123.4)
    assert await dev.poll()
    assert dev.power_kw() == pytest.approx(123.4, abs=1e-3)
    assert transport.stats.requests == dev.requests_per_poll == 3
    assert dev.points_per_poll == 13
    assert dev.health.last_ok_ts is not None and dev.health.latency_ms is not None


async def test_failures_invalidate_readings_and_mark_unavailable_then_recover() -> None:
    dev, bank, _t = make("meter", "eastron_sdm630")
    bank.set("power_kw", 50.0)
    assert await dev.poll()
    bank.offline = True
    assert not await dev.poll()
    # Never the last value: unknown at once.
    assert dev.power_kw() is None and dev.values == {}
    assert dev.health.available  # one miss is not yet an outage
    for _ in range(UNAVAILABLE_AFTER_FAILURES - 1):
        await dev.poll()
    assert not dev.health.available
    assert dev.health.consecutive_failures == UNAVAILABLE_AFTER_FAILURES
    assert "no response" in (dev.health.last_error or "")
    # Backed off: not due again at once, but within the cap.
    assert dev.health.next_poll_at <= time.monotonic() + dev.retry_cap_s
    bank.offline = False
    assert await dev.poll()
    assert dev.health.available and dev.health.consecutive_failures == 0
    assert dev.power_kw() == pytest.approx(50.0)


async def test_exception_codes_are_reported() -> None:
    dev, bank, _t = make("meter", "eastron_sdm630")
    bank.fail_with = 2
    assert not await dev.poll()
    assert dev.health.exception_code == 2


async def test_nan_and_implausible_values_are_rejected_per_point() -> None:
    dev, bank, _t = make("meter", "eastron_sdm630")
    bank.set("power_kw", math.nan)
    bank.set("frequency_hz", 0.0)
    bank.set("l1_voltage", 231.0)
    assert await dev.poll()  # the device answered; the bad values are unknown, the rest are fine
    assert dev.power_kw() is None
    assert dev.reading("frequency_hz") is None
    assert dev.values["l1_voltage"] == pytest.approx(231.0)
    assert set(dev.health.rejected) == {"total_system_power", "frequency"}
    bank.set("power_kw", 10.0)
    bank.set("frequency_hz", 50.0)
    await dev.poll()
    assert dev.power_kw() == pytest.approx(10.0) and dev.health.rejected == {}


async def test_out_of_range_write_sends_nothing() -> None:
    dev, _bank, transport = make("hvac", "intesis_dk_ac")
    await dev.poll()
    before = transport.stats.requests
    with pytest.raises(WriteError, match="outside the allowed range"):
        await dev.write_role("setpoint_c", 40.0)
    assert transport.stats.requests == before


async def test_write_reads_back_and_detects_a_device_that_ignores_it() -> None:
    dev, bank, _t = make("hvac", "intesis_dk_ac")
    assert await dev.write_role("setpoint_c", 25.5) == pytest.approx(25.5)
    assert bank.get("setpoint_c") == pytest.approx(25.5)

    def stubborn(key: str, value: object) -> None:
        bank.set_raw("setpoint", 220)  # the unit clamps to its own limit

    bank.on_write = stubborn
    with pytest.raises(WriteError, match="read back 22"):
        await dev.write_role("setpoint_c", 26.0)


async def test_then_write_sets_enable_flags_after_the_setpoint() -> None:
    dev, bank, _t = make("storage", "sunspec_storage", capacity_kwh=100, max_discharge_kw=50)
    StorageModel(bank, capacity_kwh=100, max_kw=50)
    assert await dev.poll()
    order: list[str] = []
    inner = bank.on_write
    assert inner is not None

    def spy(key: str, value: object) -> None:
        order.append(key)
        inner(key, value)  # type: ignore[arg-type]

    bank.on_write = spy
    assert await dev.write_role("power_setpoint_kw", 30.0) == pytest.approx(30.0)
    assert order == ["power_setpoint_kw", "WSetMod", "WSetEna"]
    assert bank.get("WSetEna") == 1 and bank.get("WSetMod") == 1  # 704: 1 = watts


async def test_charger_watchdog_is_fed_and_failsafe_takes_over_when_it_stops() -> None:
    dev, bank, _t = make(
        "ev_charger", "vestel_evc04", unit=255, failsafe_current_a=6, failsafe_timeout_s=20, heartbeat_s=5
    )
    model = EvChargerModel(bank, max_current_a=32)
    now = 0.0
    model.step(now, 1.0)
    assert await dev.poll()  # first contact writes the failsafe settings
    assert bank.get("failsafe_current_a") == 6 and bank.get("failsafe_timeout_s") == 20
    await dev.write_role("current_limit_a", 16)
    for _ in range(60):  # one minute with the agent alive: fed every 5 s
        now += 1.0
        await dev.maintain(now)
        model.step(now, 1.0)
    assert dev.health.watchdog_feeds == 12
    assert not model.failsafe_active
    assert model.power_kw == pytest.approx(16 * 0.69, rel=0.01)
    for _ in range(25):  # the agent dies: nobody feeds
        now += 1.0
        model.step(now, 1.0)
    assert model.failsafe_active
    for _ in range(20):
        now += 1.0
        model.step(now, 1.0)
    assert model.power_kw == pytest.approx(6 * 0.69, rel=0.01)
    # The agent comes back: feeding ends the failsafe.
    await dev.maintain(now + 10)
    model.step(now + 11, 1.0)
    assert not model.failsafe_active


async def test_counter_heartbeat_increments() -> None:
    dev, bank, _t = make("ev_charger", "generic_ev_charger")
    await dev.poll()
    seen = []
    for i in range(3):
        await dev.maintain(i * 10.0)
        seen.append(bank.get("heartbeat"))
    assert seen == [1, 2, 3]


async def test_storage_setpoint_is_renewed_only_while_commanded_and_reverts_without_agent() -> None:
    dev, bank, _t = make(
        "storage", "sunspec_storage", capacity_kwh=100, max_discharge_kw=50, setpoint_revert_s=30
    )
    model = StorageModel(bank, capacity_kwh=100, max_kw=50)
    assert await dev.poll()
    assert bank.get("setpoint_revert_s") == 30 and bank.get("WSetEnaRvrt") == 1
    assert dev.watchdog_interval_s() == pytest.approx(10.0)
    await dev.maintain(0.0)
    assert dev.health.watchdog_feeds == 0  # nothing commanded, nothing to renew
    await dev.write_role("power_setpoint_kw", 40.0)
    now = 0.0
    for _ in range(60):
        now += 1.0
        await dev.maintain(now)
        model.step(now, 1.0)
    assert model.setpoint_kw == 40.0 and dev.health.watchdog_feeds >= 5
    for _ in range(40):  # agent gone: the inverter reverts on its own
        now += 1.0
        model.step(now, 1.0)
    assert model.setpoint_kw == 0.0
    await dev.poll()
    assert dev.reading("power_setpoint_kw") == 0.0


async def test_unavailable_device_is_not_fed() -> None:
    dev, bank, transport = make("ev_charger", "generic_ev_charger")
    await dev.poll()
    bank.offline = True
    for _ in range(UNAVAILABLE_AFTER_FAILURES):
        await dev.poll()
    before = transport.stats.requests
    await dev.maintain(100.0)
    assert transport.stats.requests == before


def test_register_offset_moves_every_point() -> None:
    dev, _bank, _t = make("lighting", "intesis_dali_group", register_offset=60)
    assert dev.point_for("level_pct").address == 6460  # type: ignore[union-attr]


def test_kind_refuses_a_profile_without_its_roles() -> None:
    with pytest.raises(ValueError, match="maps no point to role 'setpoint_c'"):
        make("hvac", "generic_lighting")


def test_blueprint_kind_is_a_working_example() -> None:
    from drivers._blueprint import Heater, HeaterConfig
    from drivers.profile import Profile

    prof = Profile.model_validate(
        {
            "version": 1,
            "name": "heater",
            "kind": "heater",
            "points": [
                {"name": "p", "role": "power_kw", "function": "input_register", "address": 0, "scale": 0.1},
                {
                    "name": "lim",
                    "role": "power_limit_pct",
                    "function": "holding_register",
                    "address": 0,
                    "access": "rw",
                },
            ],
        }
    )
    assert Heater.check_profile(prof) == []
    with pytest.raises(ValueError, match="needs rated_kw"):
        HeaterConfig(name="h", kind="heater", endpoint="e", profile="x")
    cfg = HeaterConfig(name="h", kind="heater", endpoint="e", profile="x", rated_kw=30, revert_s=60)
    bank = RegisterBank(prof)
    dev = Heater(cfg, LoopbackTransport("e", {1: bank}), prof)
    assert dev.setup_writes() == [("limit_revert_s", 60)]
    assert dev.limit_range_pct() == (20.0, 100.0)
    assert "heater" not in kinds()  # the blueprint registers nothing


async def test_read_only_poll_skips_the_start_up_writes() -> None:
    # diagnose polls read-only: a charger's failsafe settings are the daemon's to write.
    dev, bank, _t = make("ev_charger", "vestel_evc04", unit=255, failsafe_current_a=6, failsafe_timeout_s=20)
    EvChargerModel(bank, max_current_a=32)
    before = (bank.get("failsafe_current_a"), bank.get("failsafe_timeout_s"))
    dev.read_only = True
    assert await dev.poll()
    assert (bank.get("failsafe_current_a"), bank.get("failsafe_timeout_s")) == before
    assert before != (6, 20)


async def test_a_poll_under_way_during_a_write_does_not_put_back_the_value_it_read_before() -> None:
    """A poll's reply read before a shed write lands after it: the read-back stays the reading
    (else an event right after a restore sees the restored zone as still dimmed, and skips it)."""
    dev, bank, transport = make("lighting", "generic_lighting")
    bank.set("level_pct", 80.0)
    assert await dev.poll()
    read_before_write = asyncio.Event()
    release = asyncio.Event()
    real_read = transport.read
    held = {"first": True}

    async def slow_read(unit: int, function: Any, address: int, count: int) -> Any:
        regs = await real_read(unit, function, address, count)
        if held["first"]:
            held["first"] = False
            read_before_write.set()
            await release.wait()  # the reply is on its way while the write goes out
        return regs

    transport.read = slow_read  # type: ignore[method-assign]
    poll = asyncio.create_task(dev.poll())
    await read_before_write.wait()
    assert await dev.write_role("level_pct", 40.0) == pytest.approx(40.0)
    release.set()
    assert await poll
    assert dev.reading("level_pct") == pytest.approx(40.0)
    assert bank.get("level_pct") == pytest.approx(40.0)
    # The next poll reads the device as it is, whatever was written before.
    bank.set("level_pct", 55.0)
    assert await dev.poll()
    assert dev.reading("level_pct") == pytest.approx(55.0)
