"""Configuration reload (SIGHUP, `systemctl reload dr-agent`) without dropping a running event.

`Reloader.request()` re-reads the config file plus conf.d/*.yaml, validates it
exactly as `dr-agent validate` does, and either rejects it (logged with every
error; the running config stays) or hands it to the agent's `reload`, which calls
`apply_config` between two control cycles (both see the agent as a `Reloadable`):

- contract, control tuning and strategies are swapped at once; a running
  event keeps its band, baseline and steps (new terms apply to later events);
- a device (or endpoint) whose config changed is rebuilt, unless a running
  event may still use it or it has an open revert-journal entry: then the old
  object is kept and the change applied once it is free ("deferred");
- what is stored follows the devices at once: each one's deadband from its
  rating, the retention plan for their number at the next flush;
- mqtt, metrics, storage and site.id are read at start only: a change to them
  is reported as needing a restart and the running values are kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from agent.config.load import ConfigError, load_site_config
from agent.config.model import SiteConfig
from agent.config.yamlsource import expand_config_paths
from agent.events.model import FINAL_STATES
from agent.runtime.devices import build_devices
from agent.settlement.history import TEMPERATURE_KEY, deadbands

if TYPE_CHECKING:
    from agent.control.controller import Controller, LoadFilter
    from agent.events.lifecycle import EventRecord
    from agent.platform.clock import Clock
    from agent.platform.store import AsyncStore
    from agent.runtime.mqtt import MqttLink
    from agent.runtime.sdnotify import Notifier
    from agent.settlement.history import Pruner, ReadingsBuffer
    from drivers.device import Device

log = logging.getLogger("dr_agent.reload")

RESTART_ONLY = ("mqtt", "metrics", "storage")
DEFERRED_RETRY_S = 5.0


@dataclass
class ReloadResult:
    ok: bool
    ts: float
    digest: str = ""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)


class Reloadable(Protocol):
    """What a reload reads of the running agent and swaps in it: the configuration, the devices
    and their transports (dicts shared with the actuator and controller, changed in place), the
    controller's and the filter's tuning; and the agent's own `reload`, which applies between
    two control cycles."""

    cfg: SiteConfig
    tz: ZoneInfo
    meter: Device

    @property
    def clock(self) -> Clock: ...
    @property
    def store(self) -> AsyncStore: ...
    @property
    def devices(self) -> dict[str, Device]: ...
    @property
    def transports(self) -> dict[str, Any]: ...
    @property
    def events(self) -> Mapping[str, EventRecord]: ...
    @property
    def controller(self) -> Controller: ...
    @property
    def filter(self) -> LoadFilter: ...
    @property
    def config_status(self) -> dict[str, Any]: ...
    @property
    def notifier(self) -> Notifier: ...
    @property
    def mqtt(self) -> MqttLink | None: ...
    @property
    def buffer(self) -> ReadingsBuffer: ...
    @property
    def pruner(self) -> Pruner: ...

    async def reload(self, new: SiteConfig) -> ReloadResult:
        """Apply `new` between two control cycles (calls `apply_config`)."""
        ...


def config_digest(path: str | Path) -> str:
    """sha256 over the main file and its conf.d fragments, in merge order (shown by status and diagnose)."""
    h = hashlib.sha256()
    for p in expand_config_paths(Path(path)):
        h.update(p.name.encode() + b"\0")
        try:
            h.update(p.read_bytes())
        except OSError:
            h.update(b"<unreadable>")
    return h.hexdigest()


def in_use(agent: Reloadable, open_journal_devices: set[str]) -> set[str]:
    """Devices a reload must not replace now: in a running event's steps, or shed per the journal."""
    names = set(open_journal_devices)
    for rec in agent.events.values():
        c = rec.control
        if c is None or rec.state in FINAL_STATES or c.phase == "done":
            continue
        names.update(s.device for s in c.steps)
        names.update(a.step.device for a in c.active)
    return names


def _endpoint(cfg: SiteConfig, name: str) -> Any:
    return next((e for e in cfg.modbus.endpoints if e.name == name), None)


async def apply_config(agent: Reloadable, new: SiteConfig) -> ReloadResult:
    """Swap `new` into a running agent; call between control cycles (the agent's reload holds the lock)."""
    old = agent.cfg
    res = ReloadResult(ok=True, ts=time.time())
    for section in RESTART_ONLY:
        if getattr(old, section) != getattr(new, section):
            res.restart_required.append(section)
    if old.site.id != new.site.id:
        res.restart_required.append("site.id")
    # Keep what only a restart can change, so status never claims what is not running.
    effective = new.model_copy(
        update={
            "mqtt": old.mqtt,
            "metrics": old.metrics,
            "storage": old.storage,
            "site": new.site.model_copy(update={"id": old.site.id}),
        }
    )

    busy = in_use(agent, {e.device for e in await agent.store.journal_open()})
    new_by_name = {d.name: d for d in effective.devices}
    keep: dict[str, Device] = {}
    rebuild: list[str] = []
    for name, dc in new_by_name.items():
        cur = agent.devices.get(name)
        if cur is None:
            rebuild.append(name)
            continue
        same = cur.config == dc and _endpoint(old, dc.endpoint) == _endpoint(effective, dc.endpoint)
        if same:
            keep[name] = cur
        elif name in busy:
            keep[name] = cur
            res.deferred.append(name)
        else:
            rebuild.append(name)
    for name, cur in agent.devices.items():
        if name not in new_by_name:
            if name in busy:
                keep[name] = cur
                res.deferred.append(name)
            else:
                res.changes.append(f"device -{name}")

    # Transports: reuse every endpoint whose config is unchanged (it keeps its connection).
    reusable = {
        n: t
        for n, t in agent.transports.items()
        if _endpoint(effective, n) is not None and _endpoint(effective, n) == _endpoint(old, n)
    }
    if rebuild:
        sub = effective.model_copy(update={"devices": [new_by_name[n] for n in rebuild]})
        transports, built = build_devices(sub, reusable, agent.clock)
    else:
        transports, built = dict(reusable), {}
    for name in rebuild:
        res.changes.append(f"device {'~' if name in agent.devices else '+'}{name}")
    merged = {n: keep.get(n) or built[n] for n in [*new_by_name, *[k for k in keep if k not in new_by_name]]}
    # Kept devices still hold their own transport objects; keep those open too.
    for d in merged.values():
        transports.setdefault(d.transport.name, d.transport)
    used = {id(d.transport) for d in merged.values()}
    retired = [t for t in agent.transports.values() if id(t) not in used]

    # In place: the actuator and the controller hold these same dicts.
    agent.devices.clear()
    agent.devices.update(merged)
    agent.transports.clear()
    agent.transports.update({n: t for n, t in transports.items() if id(t) in used})
    agent.meter = agent.devices[effective.site.meter]
    # What is stored follows the running devices: each one's deadband from its rating (a deferred
    # device keeps its old one until it is rebuilt), the retention plan sized for the new number
    # of devices at the next flush. A removed device's rows age out with the others' retention.
    changed = agent.buffer.reconfigure(
        {effective.site.meter, TEMPERATURE_KEY},
        deadbands([d.config for d in merged.values()], effective.storage.device_deadband_pct),
    )
    if changed:
        agent.pruner.replan()
        log.info("event=storage_deadbands_changed devices=%s", ",".join(changed))
    for section in ("contract", "control", "strategies"):
        if getattr(old, section) != getattr(effective, section):
            res.changes.append(section)
    if old.site != effective.site:
        res.changes.append("site")
    agent.cfg = effective
    agent.tz = ZoneInfo(effective.site.timezone)
    agent.controller.cfg = effective.control
    agent.controller.tz = agent.tz
    agent.filter.tau_s = effective.control.filter_s
    for t in retired:
        try:
            await t.close()
        except Exception as exc:  # a half-dead endpoint must not fail the reload
            log.debug("event=transport_close_failed error=%r", str(exc))
    return res


class Reloader:
    """Owns the config path of a running agent and turns SIGHUP into a validated reload."""

    def __init__(self, agent: Reloadable, path: str | Path) -> None:
        self.agent = agent
        self.path = Path(path)
        self._task: asyncio.Task[ReloadResult] | None = None
        self._deferred: asyncio.Task[None] | None = None
        self.reloads = 0
        self.rejected = 0
        agent.config_status.update(
            {
                "path": str(self.path),
                "files": [str(p) for p in expand_config_paths(self.path)],
                "digest": config_digest(self.path),
                "loaded_at": time.time(),
                "reloads": 0,
                "rejected": 0,
                "last_reload": None,
            }
        )

    def request(self) -> None:
        """Signal-handler entry: start a reload unless one is already running (then it covers this one)."""
        if self._task is not None and not self._task.done():
            log.info("event=config_reload_coalesced path=%s", self.path)
            return
        self._task = asyncio.get_running_loop().create_task(self.reload(), name="reload")

    async def reload(self) -> ReloadResult:
        """Load, validate, apply or reject; tell systemd RELOADING=1 ... READY=1 around it."""
        agent = self.agent
        agent.notifier.reloading()
        digest = config_digest(self.path)
        try:
            try:
                new, warnings = await asyncio.to_thread(load_site_config, self.path)
            except ConfigError as exc:
                res = ReloadResult(ok=False, ts=time.time(), digest=digest, errors=exc.lines)
            else:
                try:
                    res = await agent.reload(new)
                except Exception as exc:  # e.g. a profile that loads but cannot build a device
                    log.exception("event=config_reload_failed path=%s", self.path)
                    res = ReloadResult(ok=False, ts=time.time(), errors=[f"{self.path}: {exc}"])
                res.digest = digest
                res.warnings = warnings
        finally:
            agent.notifier.ready()
        self._record(res)
        if agent.mqtt is not None:
            # The provider sees which configuration the site runs (digest only: never the content).
            await agent.mqtt.publish_status(
                "online",
                config={
                    "digest": agent.config_status.get("digest"),
                    "reload": "applied" if res.ok else "rejected",
                    "errors": len(res.errors),
                    "ts": res.ts,
                },
            )
        if res.deferred:
            self._retry_deferred()
        return res

    def _record(self, res: ReloadResult) -> None:
        st = self.agent.config_status
        if res.ok:
            self.reloads += 1
            st.update(
                digest=res.digest, loaded_at=res.ts, files=[str(p) for p in expand_config_paths(self.path)]
            )
            log.info(
                "event=config_reloaded path=%s digest=%s changes=%s deferred=%s restart_required=%s warnings=%d",
                self.path,
                res.digest[:12],
                ",".join(res.changes) or "none",
                ",".join(res.deferred) or "none",
                ",".join(res.restart_required) or "none",
                len(res.warnings),
            )
            if res.restart_required:
                log.warning(
                    "event=config_needs_restart sections=%s (kept the running values; systemctl restart dr-agent)",
                    ",".join(res.restart_required),
                )
        else:
            self.rejected += 1
            log.error(
                "event=config_reload_rejected path=%s errors=%d kept=running_config details=%s",
                self.path,
                len(res.errors),
                json.dumps(res.errors, ensure_ascii=False),
            )
        st.update(reloads=self.reloads, rejected=self.rejected, last_reload=asdict(res))

    def _retry_deferred(self) -> None:
        if self._deferred is not None and not self._deferred.done():
            return
        self._deferred = asyncio.get_running_loop().create_task(
            self._apply_when_free(), name="reload-deferred"
        )

    async def _apply_when_free(self) -> None:
        """Re-apply the file once the devices a running event held are free again."""
        while True:
            await asyncio.sleep(DEFERRED_RETRY_S)
            last = self.agent.config_status.get("last_reload") or {}
            pending = set(last.get("deferred") or [])
            if not pending:
                return
            busy = in_use(self.agent, {e.device for e in await self.agent.store.journal_open()})
            if pending & busy:
                continue
            log.info("event=config_reload_deferred_apply devices=%s", ",".join(sorted(pending)))
            res = await self.reload()
            if not res.deferred:
                return
