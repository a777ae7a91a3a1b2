"""SIGKILL to `dr-agent run` in the middle of an event, of its restore, and of a database write.

Nothing runs on the way out of a SIGKILL: no restore, no `stopped`. The
restarted agent must pick up from its database alone: resume the event (or
finish restoring it), restore every device, deliver the settlement and every
live report with `seq` running on without a gap or a reused number.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from agent.config.model import SiteConfig
from tests.conftest import Mosquitto
from tests.faults.conftest import AgentProcess, observer, online, open_site, wait_until

pytestmark = pytest.mark.e2e


def slow_restore(cfg: SiteConfig) -> SiteConfig:
    """Restore steps 10 s apart (a quarter second of wall time): a kill can land between two."""
    strategies = [
        st.model_copy(update={"restore": st.restore.model_copy(update={"step_interval_s": 10.0})})
        for st in cfg.strategies
    ]
    return cfg.model_copy(update={"strategies": strategies})


@pytest.mark.parametrize("moment", ["mid-event", "mid-restore", "mid-db-write"])
async def test_sigkill_then_restart_finishes_the_event(broker: Mosquitto, tmp_path: Path, moment: str) -> None:
    duration = 300.0  # a restart costs seconds of wall time: minutes of this event's time
    tweak = slow_restore if moment == "mid-restore" else None
    async with open_site(broker, tmp_path, tweak=tweak) as site, observer(site) as obs:
        agent = AgentProcess(site)
        try:
            await agent.start()
            await online(obs)
            start = await site.send_event(obs, "kill-1", 60, duration)
            await site.wait_state(obs, "kill-1", "active")
            shed = await site.wait_shed(3)
            if moment == "mid-event":
                await site.sleep(30)
                await agent.kill()
            elif moment == "mid-restore":
                most = len(shed)

                def restoring() -> bool:
                    nonlocal most
                    n = len(site.shed())
                    most = max(most, n)
                    return site.clock.now() > start + duration and 0 < n < most

                await wait_until(restoring, site.at(duration) + 10, "the restore under way")
                await agent.kill()
                assert site.shed(), "the restore finished before the kill"
            else:
                # Another writer holds the database: the agent's next write (a report, the
                # journal, a reading batch) waits inside its transaction, and dies there.
                lock = sqlite3.connect(site.db_path, timeout=0, isolation_level=None)
                try:
                    lock.execute("BEGIN EXCLUSIVE")
                    await asyncio.sleep(1.0)
                    await agent.kill()
                    lock.execute("ROLLBACK")
                finally:
                    lock.close()
            killed_at = site.clock.now()
            left = site.shed()
            assert left, "nothing was left shed by the kill: the scenario proves nothing"
            await site.sleep(10)
            await agent.start()
            await online(obs, 2)
            await site.settled(obs, "kill-1", 60)
            await site.wait_restored()
            assert await agent.stop() == 0
        finally:
            await agent.close()
        assert killed_at < start + duration + 60
        site.check(obs, {"kill-1": (start, duration)})
        if moment != "mid-restore":
            assert "event=resumed" in agent.log_text(), "the restarted agent did not resume the event"
        conn = sqlite3.connect(site.db_path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            conn.close()
