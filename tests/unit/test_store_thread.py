"""The store's one thread: calls run in order, the revert journal's ahead of queued bookkeeping."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from agent.platform.store import URGENT_CALLS, AsyncStore, Store


async def test_journal_calls_go_ahead_of_queued_bookkeeping_and_each_kind_keeps_its_order(
    tmp_path: Path,
) -> None:
    store = AsyncStore(Store(tmp_path / "agent.sqlite"))
    ran: list[str] = []
    gate = threading.Event()

    def busy() -> None:  # a long flush under way
        gate.wait(5)
        ran.append("busy")

    def work(name: str) -> str:
        ran.append(name)
        return name

    try:
        first = asyncio.ensure_future(store.call(busy))
        await asyncio.sleep(0.05)  # the thread has taken it
        queued = [
            asyncio.ensure_future(store.call(work, "outbox-1")),
            asyncio.ensure_future(store.call(work, "outbox-2")),
            asyncio.ensure_future(store.call(work, "journal-1", urgent=True)),
            asyncio.ensure_future(store.call(work, "journal-2", urgent=True)),
        ]
        await asyncio.sleep(0.05)
        gate.set()
        assert await asyncio.gather(*queued) == ["outbox-1", "outbox-2", "journal-1", "journal-2"]
        await first
        assert ran == ["busy", "journal-1", "journal-2", "outbox-1", "outbox-2"]
    finally:
        gate.set()
        await store.close()


async def test_the_journal_methods_are_the_urgent_ones_and_errors_reach_the_caller(tmp_path: Path) -> None:
    store = AsyncStore(Store(tmp_path / "agent.sqlite"))
    try:
        assert {"journal_open", "journal_record_many", "journal_restored"} <= URGENT_CALLS
        assert "outbox_put" not in URGENT_CALLS and "add_batch" not in URGENT_CALLS
        assert await store.journal_open() == []

        def fails() -> None:
            raise ValueError("broken")

        with pytest.raises(ValueError, match="broken"):
            await store.call(fails)
        assert await store.journal_open() == []  # the thread lives on
    finally:
        await store.close()
