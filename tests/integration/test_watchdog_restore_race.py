"""A watchdog feed that rewrites the commanded value must never land after a restore: the demo's
battery (SunSpec storage, WSet rewritten every 10 s so it reverts on its own if the agent dies)
is shed, then restored while a feed is due. Real simulators over Modbus TCP, a real SQLite file;
the battery is read back over Modbus at the end."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from drivers.modbus import ModbusTransport
from tests.integration.test_parallel_shed import _read_back

if TYPE_CHECKING:
    from tests.conftest import Rig

KEY = ("battery", "power_setpoint_kw")


async def test_a_feed_due_during_a_restore_does_not_put_the_shed_value_back(rig: Rig) -> None:
    cfg, _plant, devices, act, store = rig
    battery = devices[KEY[0]]
    bus = cast(ModbusTransport, battery.transport)
    await battery.setup()
    before = (await _read_back(cfg, [KEY]))[KEY]
    assert await act.shed(*KEY, 8.1, "ev-1", "storage/1:battery") == 8.1
    assert battery.profile.watchdog is not None and battery.profile.watchdog.mode == "rewrite"

    # The endpoint is busy (a poll, say) as the event ends: the restore queues for it, then the
    # watchdog feed comes due and queues behind it.
    async with bus._lock:
        restore = asyncio.create_task(act.restore(*KEY, "event ended", "ev-1"))
        for _ in range(50):  # until the restore waits for the endpoint (its journal read done)
            await asyncio.sleep(0.01)
            if bus._lock._waiters:
                break
        assert bus._lock._waiters, "the restore never reached the endpoint"
        feed = asyncio.create_task(battery.maintain(now=1e12))
        await asyncio.sleep(0.05)
    assert await restore is True
    await feed

    assert (await _read_back(cfg, [KEY]))[KEY] == before
    assert await store.journal_open() == []
