"""Writes to devices with a durable revert journal: shed, restore, and recover after a crash.

Every shed write first records the value it replaces (once per device and
role while shed), then writes and reads back. Restore writes the journalled
original back and closes the entry. After a crash-restart the open entries
say exactly what to put back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from agent.store import AsyncStore
from drivers.device import Device, WriteError
from strategies.engine import within_limits

log = logging.getLogger("dr_agent.actuator")


class LimitViolation(Exception):
    """A write would breach a device's configured comfort/safety limit: never sent."""


class Actuator:
    def __init__(self, devices: Mapping[str, Device], store: AsyncStore) -> None:
        self.devices = devices
        self.store = store
        self.writes = 0
        self.limit_refusals = 0

    async def original(self, device: str, role: str) -> float | None:
        """The pre-event value: the open journal entry's original if shed, else the latest reading."""
        entries = await self.store.journal_open(device, role)
        if entries:
            return entries[0].original
        return self.devices[device].reading(role)

    async def shed(
        self, device: str, role: str, value: float | bool, event_id: str | None, step: str
    ) -> float:
        """Journal the original, then write `value` and read it back. Returns the read-back value."""
        dev = self.devices[device]
        problem = within_limits(dev, role, value)
        if problem:
            self.limit_refusals += 1
            raise LimitViolation(f"device {device}: {problem}")
        entries = await self.store.journal_open(device, role)
        if not entries:
            original = dev.reading(role)
            if original is None:
                raise WriteError(f"device {device}: current {role} unknown, refusing to shed blind")
            await self.store.journal_record(device, role, original, float(value), event_id, step)
        else:
            await self.store.journal_record(device, role, entries[0].original, float(value), event_id, step)
        back = await dev.write_role(role, value)
        self.writes += 1
        log.info("event_id=%s device=%s step=%s action=shed %s=%s", event_id, device, step, role, value)
        return back

    async def restore(self, device: str, role: str, reason: str, event_id: str | None = None) -> bool:
        """Write back the journalled original. Returns True if the device took it (or nothing was open)."""
        entries = await self.store.journal_open(device, role)
        if not entries:
            return True
        original = entries[0].original
        dev = self.devices.get(device)
        if dev is None:
            await self.store.journal_restored(device, role, f"device no longer configured ({reason})")
            await self.store.audit(f"restore {role}: device no longer configured", event_id, device)
            return True
        if original is None:
            await self.store.journal_restored(device, role, f"no original recorded ({reason})")
            return True
        value: float | bool = bool(original) if role == "switch" else original
        try:
            await dev.write_role(role, value)
        except WriteError as exc:
            log.error("event_id=%s device=%s action=restore_failed error=%r", event_id, device, str(exc))
            await self.store.audit(f"restore {role}={original} failed: {exc}", event_id, device)
            return False
        self.writes += 1
        await self.store.journal_restored(device, role, reason)
        await self.store.audit(f"restored {role}={original} ({reason})", event_id, device)
        log.info(
            "event_id=%s device=%s action=restore %s=%s reason=%s", event_id, device, role, original, reason
        )
        return True

    async def restore_all(self, reason: str) -> list[str]:
        """Restore every open journal entry (shutdown, crash recovery). Returns what could not be restored."""
        failed = []
        entries = await self.store.journal_open()
        seen: set[tuple[str, str]] = set()
        for e in reversed(entries):
            key = (e.device, e.role)
            if key in seen:
                continue
            seen.add(key)
            if not await self.restore(e.device, e.role, reason, e.event_id):
                failed.append(f"{e.device}.{e.role}")
        return failed
