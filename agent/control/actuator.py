"""Writes to devices with a durable revert journal: shed, restore, and recover after a crash.

Every shed write first records the value it replaces (once per device and
role while shed), then writes and reads back. Restore writes the journalled
original back and closes the entry. After a crash-restart the open entries
say exactly what to put back. While the process lives it also keeps the
originals in memory, so a database that fails mid-event (a full disk) cannot
keep a device shed: restore then works from memory, and the journal entry is
closed (or restored again, harmlessly) once the database answers.

Never shed what could not be undone: before the first write of a shed, the
device's current value is read fresh and must be plausible and writable back
(`Device.snapshot`), else the shed is refused with the reason. The journal
keeps the exact registers it replaced (the role's point and its enable
flags), and a restore writes those back verbatim.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.platform.store import AsyncStore, JournalEntry, JournalRow
from drivers.actions import NotApplicable
from drivers.device import Device, RawRegisters, Snapshot, WriteError
from strategies.engine import within_limits

log = logging.getLogger("dr_agent.actuator")


#: How long a current value read ahead of a shed (`Actuator.read_ahead`) stays usable as its original.
READ_AHEAD_MAX_AGE_S = 2.0


class LimitViolation(Exception):
    """A write would breach a device's configured comfort/safety limit: never sent."""


#: A shed's value worked out from the device's pre-event value (a dim level or a setpoint relative
#: to it); raises NotApplicable when there is nothing to shed.
ValueOf = Callable[[float | None], float | bool]

#: Why `shed_many` may refuse one shed and go on with the others.
REFUSALS = (LimitViolation, WriteError, NotApplicable)
#: What `shed_many` returns for a shed instead of raising: a refusal, or the database failing.
_RETURNED = (*REFUSALS, sqlite3.Error)


@dataclass(frozen=True)
class Shed:
    """One shed write of `Actuator.shed_many`: `value` to `role` of `device`, for `event_id`'s `step`.

    `value` is fixed, or worked out from the pre-event value as soon as that is known (`ValueOf`)."""

    device: str
    role: str
    value: float | bool | ValueOf
    event_id: str | None
    step: str

    def value_for(self, original: float | None) -> float | bool:
        return self.value(original) if callable(self.value) else self.value


class _JournalBatches:
    """Journal rows written as they come, in as few transactions as the database thread allows.

    The first row goes at once; rows that come while its transaction is under way go together in
    the next. A shed waits for its own row only, so a device whose original is in is written while
    slower devices are still being read, and the journal still holds each original before its write.
    """

    def __init__(self, store: AsyncStore) -> None:
        self._store = store
        self._waiting: list[tuple[JournalRow, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, row: JournalRow) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((row, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name="journal batches")
        await done

    async def _write(self) -> None:
        batch: list[tuple[JournalRow, asyncio.Future[None]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    await self._store.journal_record_many([row for row, _ in batch])
                except Exception as exc:
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                else:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            # Cancelled (the agent stopping): whoever still waits is not journalled, so not written.
            for _, done in batch + self._waiting:
                if not done.done():
                    done.cancel()
            self._waiting = []
            self._writer = None


def fail_safe_of(dev: Device) -> str:
    """What a device does on its own when the agent cannot put it back (its config and profile):
    a charger's failsafe current, a battery's setpoint revert timer, a watchdog register."""
    parts = [f"{role}={value:g}" for role, value in dev.setup_writes() if dev.point_for(role) is not None]
    w = dev.profile.watchdog
    if w is not None:
        parts.append(f"watchdog {w.point} (falls back when no longer fed)")
    return ", ".join(parts) if parts else "none: it keeps the shed value until restored by hand"


class Actuator:
    def __init__(self, devices: Mapping[str, Device], store: AsyncStore) -> None:
        self.devices = devices
        self.store = store
        self.writes = 0
        self.limit_refusals = 0
        #: (device, role) -> the original journalled for it, mirrored for when the database fails.
        self._originals: dict[tuple[str, str], float | None] = {}
        self._raw_originals: dict[tuple[str, str], RawRegisters] = {}
        #: (device, role) -> event id of a restore that failed (device unreachable): retried when it answers.
        self.failed_restores: dict[tuple[str, str], str | None] = {}
        #: (device, role) -> (when, the device's write count then, the fresh read under way): read ahead.
        self._ahead: dict[tuple[str, str], tuple[float, int, asyncio.Task[Snapshot]]] = {}
        #: The open journal read with them: (when, the store's journal changes then, the read).
        self._ahead_journal: tuple[float, int, asyncio.Task[list[JournalEntry]]] | None = None
        self._journal = _JournalBatches(store)

    def read_ahead(self, keys: Iterable[tuple[str, str]]) -> int:
        """Start reading, now, the current values sheds of these (device, role) would replace: an
        event that starts at once has its first stage's originals read while it is decided,
        persisted and answered, not after. The read is as fresh as the rule asks (after the event
        arrived); a shed takes it only if younger than READ_AHEAD_MAX_AGE_S and nothing was written
        to the device since it started, else it reads again. Returns how many reads started."""
        now = time.monotonic()
        started = 0
        for key in keys:
            dev = self.devices.get(key[0])
            if dev is None or not dev.ready or not dev.health.available:
                continue
            old = self._ahead.get(key)
            if old is not None and now - old[0] < READ_AHEAD_MAX_AGE_S and not old[2].done():
                continue
            task = asyncio.create_task(dev.snapshot(key[1]), name=f"read-ahead {key[0]}.{key[1]}")
            task.add_done_callback(_quiet)
            self._ahead[key] = (now, dev.write_count, task)
            started += 1
        if started:
            # The shed needs the open journal too (is a device shed already?): read it meanwhile.
            journal = asyncio.ensure_future(self.store.journal_open())
            journal.add_done_callback(_quiet)
            self._ahead_journal = (now, self.store.journal_changes, journal)
        return started

    async def _open_journal(self) -> list[JournalEntry]:
        """The open journal entries: as read ahead if the journal has not changed since, else read now."""
        ahead, self._ahead_journal = self._ahead_journal, None
        if ahead is not None:
            when, changes, task = ahead
            if time.monotonic() - when <= READ_AHEAD_MAX_AGE_S and self.store.journal_changes == changes:
                await asyncio.wait([task])
                fine = not task.cancelled() and task.exception() is None
                if fine and self.store.journal_changes == changes:
                    return task.result()
        entries: list[JournalEntry] = await self.store.journal_open()
        return entries

    async def _ahead_snapshots(self, keys: Sequence[tuple[str, str]]) -> list[Snapshot | None]:
        """Per (device, role), the value read ahead if it is still the device's: younger than
        READ_AHEAD_MAX_AGE_S, read without error, nothing written to the device since it started;
        else None."""
        now = time.monotonic()
        usable: list[tuple[int, asyncio.Task[Snapshot]] | None] = []
        for device, role in keys:
            ahead = self._ahead.get((device, role))
            fresh = ahead is not None and now - ahead[0] <= READ_AHEAD_MAX_AGE_S
            if ahead is None or not fresh or self.devices[device].write_count != ahead[1]:
                usable.append(None)
            else:
                usable.append((ahead[1], ahead[2]))
        waiting = [u[1] for u in usable if u is not None and not u[1].done()]
        if waiting:
            # All at once, and not `await task`: a cancelled caller must not cancel the reads.
            await asyncio.wait(waiting)
        out: list[Snapshot | None] = []
        for (device, _role), u in zip(keys, usable, strict=True):
            if u is None:
                out.append(None)
                continue
            writes, task = u
            bad = task.cancelled() or task.exception() is not None
            out.append(None if bad or self.devices[device].write_count != writes else task.result())
        return out

    async def _snapshot(self, device: str, role: str) -> Snapshot:
        """The current value a shed replaces: read ahead if still valid, else read now."""
        key = (device, role)
        got = (await self._ahead_snapshots([key]))[0]
        ahead = self._ahead.pop(key, None)
        if got is not None:
            return got
        if ahead is not None:
            ahead[2].cancel()
        return await self.devices[device].snapshot(role)

    async def original(self, device: str, role: str) -> float | None:
        """The pre-event value: the open journal entry's original if shed, else the value read
        ahead, else the latest reading (`originals` for one)."""
        return (await self.originals([(device, role)]))[0]

    async def originals(self, keys: Sequence[tuple[str, str]]) -> list[float | None]:
        """The pre-event value of several (device, role) at once, in one read of the journal: the
        open entry's original if shed, else the value read ahead, else the latest reading."""
        # The journal is read while the reads ahead come in (or was read with them), not after.
        journal = asyncio.ensure_future(self._open_journal())
        try:
            ahead = await self._ahead_snapshots(keys)
        finally:
            entries = await journal
        open_by_key = _by_key(entries)
        out: list[float | None] = []
        for k, snap in zip(keys, ahead, strict=True):
            if k in open_by_key:
                out.append(open_by_key[k].original)
            else:
                # A value read ahead is newer than the last poll, and it is what the shed will
                # journal: the step's value is worked out from the same original (a zone
                # un-dimmed by hand a moment ago is dimmed, not skipped as "already dimmed").
                out.append(snap.value if snap is not None else self.devices[k[0]].reading(k[1]))
        return out

    async def shed(
        self, device: str, role: str, value: float | bool, event_id: str | None, step: str
    ) -> float:
        """Journal the original, then write `value` and read it back (`shed_many` for one).
        Returns the read-back value; raises what refused it."""
        result = (await self._shed_together([Shed(device, role, value, event_id, step)]))[0]
        if isinstance(result, BaseException):
            raise result
        return result

    async def shed_many(self, sheds: Sequence[Shed]) -> list[float | BaseException]:
        """Several sheds at once (a stage entering), each device on its own as soon as it answers:
        its current value read fresh (or as read ahead), journalled as its original, then written
        and read back, while slower devices are still being read. Originals that come in together
        share one transaction (`_JournalBatches`); the journal holds each before its write goes out.
        A (device, role) shed already keeps its journalled original and is not read. Two sheds of
        one (device, role) go one after the other.

        Returns, per shed, the read-back value or the exception that stopped it: a refusal
        (REFUSALS: a limit, a device that cannot be read, written or put back, nothing to shed), or
        a database error, for which that shed was not written (the caller books the others first).
        """
        keys = [(s.device, s.role) for s in sheds]
        if len(set(keys)) == len(keys):
            return await self._shed_together(sheds)
        out: list[float | BaseException] = []
        for s in sheds:
            out += await self._shed_together([s])
        return out

    async def _shed_together(self, sheds: Sequence[Shed]) -> list[float | BaseException]:
        """`shed_many` of distinct (device, role): each `_shed_one` on its own, at once."""
        open_by_key = _by_key(await self._open_journal())
        results = await asyncio.gather(
            *(self._shed_one(s, open_by_key.get((s.device, s.role))) for s in sheds), return_exceptions=True
        )
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, _RETURNED):
                raise r
        return results

    async def _shed_one(self, s: Shed, entry: JournalEntry | None) -> float:
        """One shed of `shed_many`: `entry` is its open journal entry if shed already."""
        dev = self.devices[s.device]
        key = (s.device, s.role)
        value = None if callable(s.value) else s.value
        if value is not None:
            self._check_limits(dev, s.role, value)  # a fixed value is checked before any read
        snap = None
        original: float | None
        if entry is None:
            # Never shed what could not be put back: read it fresh, check it, keep its exact registers.
            snap = await self._snapshot(s.device, s.role)
            original = snap.value
        else:
            original = entry.original
        if value is None:
            value = s.value_for(original)
            self._check_limits(dev, s.role, value)
        raw = None if snap is None else json.dumps(snap.raw)
        await self._journal.record((s.device, s.role, original, float(value), s.event_id, s.step, raw))
        if snap is not None:
            self._raw_originals.setdefault(key, snap.raw)
        self._originals.setdefault(key, original)
        try:
            back = await dev.write_role(s.role, value)
        except WriteError:
            if snap is not None:
                # The write may have reached the device (its answer lost with the connection):
                # put the original back now, or as soon as the device answers (failed_restores).
                await self.restore(s.device, s.role, "shed write failed: undone", s.event_id)
            raise
        self.writes += 1
        log.info(
            "event_id=%s device=%s step=%s action=shed %s=%s", s.event_id, s.device, s.step, s.role, value
        )
        return back

    def _check_limits(self, dev: Device, role: str, value: float | bool) -> None:
        problem = within_limits(dev, role, value)
        if problem:
            self.limit_refusals += 1
            raise LimitViolation(f"device {dev.name}: {problem}")

    async def restore(self, device: str, role: str, reason: str, event_id: str | None = None) -> bool:
        """Write back the journalled original. Returns True if the device took it (or nothing was open)."""
        key = (device, role)
        try:
            entries = await self.store.journal_open(device, role)
        except sqlite3.Error as exc:
            if key not in self._originals:
                raise
            log.error("device=%s event=journal_unreadable restoring_from=memory error=%r", device, str(exc))
            return await self._restore_from_memory(device, role, reason, event_id)
        if not entries:
            self._originals.pop(key, None)
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
        try:
            await self._put_back(dev, role, original, entries[0].original_raw)
        except WriteError as exc:
            log.error("event_id=%s device=%s action=restore_failed error=%r", event_id, device, str(exc))
            self.failed_restores[key] = event_id
            await self.store.audit(f"restore {role}={original} failed: {exc}", event_id, device)
            return False
        self.writes += 1
        self.failed_restores.pop(key, None)
        self._originals.pop(key, None)
        self._raw_originals.pop(key, None)
        try:
            await self.store.journal_restored(device, role, reason)
            await self.store.audit(f"restored {role}={original} ({reason})", event_id, device)
        except sqlite3.Error as exc:
            # The device is back; an entry left open is only restored again (to the same value) later.
            log.error("device=%s event=journal_not_closed error=%r", device, str(exc))
        log.info(
            "event_id=%s device=%s action=restore %s=%s reason=%s", event_id, device, role, original, reason
        )
        return True

    @staticmethod
    async def _put_back(dev: Device, role: str, original: float, original_raw: str | None) -> None:
        """The exact registers the shed replaced; rows journalled before they were kept get the value."""
        if original_raw:
            raw: RawRegisters = json.loads(original_raw)
            await dev.write_raw(raw)
        else:
            await dev.write_role(role, bool(original) if role == "switch" else original)

    async def _restore_from_memory(self, device: str, role: str, reason: str, event_id: str | None) -> bool:
        original = self._originals.get((device, role))
        dev = self.devices.get(device)
        if dev is None or original is None:
            return False
        raw = self._raw_originals.get((device, role))
        try:
            await self._put_back(dev, role, original, None if raw is None else json.dumps(raw))
        except WriteError as exc:
            log.error("event_id=%s device=%s action=restore_failed error=%r", event_id, device, str(exc))
            self.failed_restores[(device, role)] = event_id
            return False
        self.writes += 1
        self.failed_restores.pop((device, role), None)
        self._originals.pop((device, role), None)
        self._raw_originals.pop((device, role), None)
        log.warning(
            "event_id=%s device=%s action=restore %s=%s reason=%s journal=left_open (database failing;"
            " it is closed or harmlessly restored again later)",
            event_id,
            device,
            role,
            original,
            reason,
        )
        try:
            await self.store.journal_restored(device, role, f"{reason} (restored from memory)")
        except sqlite3.Error:
            pass
        return True

    async def retry_failed_restores(self, held: set[tuple[str, str]]) -> list[str]:
        """Restore again what failed to restore (unreachable at the event's end, a shed write in
        doubt) once the device answers: a healed endpoint must not leave a device shed until the
        next restart. A (device, role) a live event's step `held` again is that event's to
        restore. Returns the device.role names restored."""
        done = []
        for (device, role), event_id in list(self.failed_restores.items()):
            dev = self.devices.get(device)
            if (device, role) in held:
                self.failed_restores.pop((device, role), None)
                continue
            if dev is None or not dev.health.available:
                continue  # the poll loop finds out when it answers again; no write into a timeout
            if await self.restore(device, role, "restore retried: the device answers again", event_id):
                log.warning("event_id=%s device=%s event=restore_recovered role=%s", event_id, device, role)
                done.append(f"{device}.{role}")
        return done

    async def restore_all(self, reason: str) -> list[str]:
        """Restore every open journal entry (shutdown, crash recovery). Returns what could not be restored.

        Each device left shed is logged and audited with its own fail-safe (fail_safe_of), so the
        operator knows what it will do by itself and what needs a hand.
        """
        failed: list[tuple[str, str, str | None]] = []
        try:
            entries = await self.store.journal_open()
        except sqlite3.Error as exc:
            log.error(
                "event=journal_unreadable restoring_from=memory n=%d error=%r", len(self._originals), str(exc)
            )
            for device, role in list(self._originals):
                if not await self._restore_from_memory(device, role, reason, None):
                    failed.append((device, role, None))
        else:
            seen: set[tuple[str, str]] = set()
            for e in reversed(entries):
                key = (e.device, e.role)
                if key in seen:
                    continue
                seen.add(key)
                if not await self.restore(e.device, e.role, reason, e.event_id):
                    failed.append((e.device, e.role, e.event_id))
        for device, role, event_id in failed:
            dev = self.devices.get(device)
            fail_safe = fail_safe_of(dev) if dev is not None else "unknown (device not configured)"
            log.critical(
                "event_id=%s device=%s event=left_shed role=%s reason=%r fail_safe=%r",
                event_id,
                device,
                role,
                reason,
                fail_safe,
            )
            with contextlib.suppress(sqlite3.Error):
                await self.store.audit(
                    f"left shed {role} ({reason}); its own fail-safe: {fail_safe}", event_id, device
                )
        return [f"{device}.{role}" for device, role, _ in failed]


def _by_key(entries: Iterable[JournalEntry]) -> dict[tuple[str, str], JournalEntry]:
    """Open journal entries by (device, role), the first of each."""
    out: dict[tuple[str, str], JournalEntry] = {}
    for e in entries:
        out.setdefault((e.device, e.role), e)
    return out


def _quiet(task: asyncio.Future[Any]) -> None:
    """A read ahead that nobody takes (the event was refused meanwhile) must not log its error."""
    if not task.cancelled():
        task.exception()
