"""The daemon's state file: what it is doing now, for `dr-agent status` and `dr-agent diagnose`.

Every few seconds the daemon writes one small JSON document next to its
database (`<db>.state.json`, e.g. /var/lib/dr-agent/dr-agent.state.json),
atomically (write a temporary file, then rename), from a worker thread. A
file rather than a socket: it needs no listener inside the daemon, it is
readable with the same permissions as the database, and a wedged daemon is
still visible (the file's `updated_at` stops moving). On a clean stop the
last write says `stopped`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent import __version__
from agent.events.model import FINAL_STATES
from agent.platform import failpoints
from agent.runtime.ports import AgentView

if TYPE_CHECKING:
    from agent.config.model import SiteConfig
    from agent.runtime.sdnotify import Notifier

log = logging.getLogger("dr_agent.state")

SCHEMA_VERSION = 1
WRITE_INTERVAL_S = 2.0
#: A running daemon's file older than this is stale: the daemon is wedged or gone.
STALE_AFTER_S = 15.0


class StateSource(AgentView, Protocol):
    """The agent as the state file reads it, and the systemd notifier its status line goes to."""

    @property
    def notifier(self) -> Notifier: ...


def state_path(cfg: SiteConfig) -> Path:
    """Where the daemon for `cfg` writes its state: beside its database."""
    db = cfg.storage.resolved()
    return db.with_name(db.stem + ".state.json")


def write_atomic(path: Path, body: dict[str, Any]) -> None:
    """Write JSON so a reader never sees half a file (temp file in the same directory, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            # dumps, not dump: dump encodes in Python (4x the time, in a thread that holds the
            # interpreter the event loop needs); dumps in C.
            f.write(json.dumps(body, separators=(",", ":"), default=str))
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_state(path: Path) -> dict[str, Any] | None:
    """The last state the daemon wrote, or None when there is none (never ran, or unreadable)."""
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user (dr-agent vs root)
        return True
    return True


def liveness(state: dict[str, Any] | None, now: float | None = None) -> tuple[str, str]:
    """Judge a state document: (running|stale|stopped|crashed|absent, one-line explanation)."""
    if state is None:
        return "absent", "no state file: the daemon has not run with this config"
    now = time.time() if now is None else now
    age = now - float(state.get("updated_at", 0))
    pid = int(state.get("pid", 0))
    if state.get("state") == "stopped":
        return "stopped", f"stopped cleanly {_ago(age)}"
    if pid and not pid_alive(pid):
        return "crashed", f"pid {pid} is gone; last update {_ago(age)} (crash or kill)"
    if age > STALE_AFTER_S:
        return "stale", f"pid {pid} has not updated its state for {age:.0f} s (wedged?)"
    return "running", f"pid {pid}, up {_duration(now - float(state.get('started_at', now)))}"


def _ago(age: float) -> str:
    return f"{_duration(age)} ago"


def _duration(s: float) -> str:
    s = max(0.0, s)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


async def snapshot(agent: AgentView, state: str | None = None) -> dict[str, Any]:
    """The document: process, config, MQTT, the running event, every device, the events in flight."""
    journal = await agent.store.journal_open()
    shed_by: dict[str, list[dict[str, Any]]] = {}
    for e in journal:
        shed_by.setdefault(e.device, []).append(
            {
                "role": e.role,
                "original": e.original,
                "written": e.written,
                "event_id": e.event_id,
                "step": e.step,
                "since": e.ts,
            }
        )
    devices = []
    for name, d in list(agent.devices.items()):
        h = d.health
        devices.append(
            {
                "name": name,
                "kind": d.kind,
                "endpoint": d.transport.name,
                "available": h.available,
                "latency_ms": None if h.latency_ms is None else round(h.latency_ms, 2),
                "consecutive_failures": h.consecutive_failures,
                "last_error": h.last_error,
                "exception_code": h.exception_code,
                "last_ok_ts": h.last_ok_ts,
                "power_kw": d.power_kw(),
                "shed": shed_by.get(name, []),
            }
        )
    mqtt = agent.mqtt
    events = [
        {
            "event_id": r.event.event_id,
            "state": r.state,
            "opt": r.opt.opt,
            "program": r.event.program,
            "start": r.event.start_ts,
            "end": r.event.end_ts,
        }
        for r in list(agent.events.values())
        if r.state not in FINAL_STATES
    ]
    if state is None:
        state = "running" if agent.polled_once.is_set() else "starting"
    return {
        "schema": SCHEMA_VERSION,
        "state": state,
        "pid": os.getpid(),
        # Tasks alive in the loop: a soak run (bench/soak.py) watches this for a leak.
        "tasks": len(asyncio.all_tasks()),
        "version": __version__,
        "site_id": agent.cfg.site.id,
        "started_at": agent.started_at,
        "updated_at": time.time(),
        "clock_now": agent.clock.now(),
        "config": dict(agent.config_status),
        "mqtt": {
            "broker": f"{agent.cfg.mqtt.host}:{agent.cfg.mqtt.port}",
            "topic_root": agent.cfg.topic_root,
            "connected": bool(mqtt and mqtt.connected.is_set()),
            "last_error": mqtt.last_error if mqtt else None,
            "published": mqtt.published if mqtt else 0,
            "outbox_pending": agent.outbox_pending,
        },
        "metrics_port": agent.metrics_port,
        "control": {
            "last_cycle_ms": None if agent.last_cycle_s is None else round(agent.last_cycle_s * 1000, 3)
        },
        "live": agent.live_state(),
        "components": {
            name: {"restarts": h.restarts, "failing": h.failing, "last_error": h.last_error}
            for name, h in sorted(agent.supervisor.health.items())
        },
        "events": events,
        "devices": devices,
    }


def status_line(doc: dict[str, Any]) -> str:
    """One line for `systemctl status` (sd_notify STATUS=)."""
    live = doc.get("live") or {}
    down = [d["name"] for d in doc.get("devices", []) if not d["available"]]
    mqtt = "MQTT up" if doc["mqtt"]["connected"] else "MQTT DOWN"
    health = f"{len(doc.get('devices', [])) - len(down)}/{len(doc.get('devices', []))} devices answering"
    if live.get("event_id"):
        realized = live.get("realized_kw")
        lo, hi = live.get("band_kw") or [0, 0]
        shed = "unknown" if realized is None else f"{realized:.0f} kW"
        return (
            f"event {live['event_id']} {live.get('phase', '')}: shed {shed} (band {lo:.0f}-{hi:.0f} kW), "
            f"{len(live.get('active_steps') or [])} steps; {health}; {mqtt}"
        )
    return f"idle; {health}; {mqtt}"


async def run_writer(agent: StateSource, interval_s: float = WRITE_INTERVAL_S) -> None:
    """Write the state file every `interval_s` (wall time); mirror a status line to systemd."""
    from agent.platform.logs import FailureLog

    path = state_path(agent.cfg)
    last_status = ""
    # Disk full or read-only: say so once; the agent keeps controlling.
    failures = FailureLog(log, "state_file", logging.ERROR, path=path)
    while True:
        failpoints.hit("state")
        try:
            doc = await snapshot(agent)
            await asyncio.to_thread(write_atomic, path, doc)
            line = status_line(doc)
            if line != last_status:
                agent.notifier.status(line)
                last_status = line
            failures.ok()
        except OSError as exc:
            failures.failed(str(exc))
        await asyncio.sleep(interval_s)


async def write_final(agent: AgentView) -> None:
    """The last write, on a clean stop: `dr-agent status` then says `stopped`, not `crashed`."""
    try:
        doc = await snapshot(agent, state="stopped")
        await asyncio.to_thread(write_atomic, state_path(agent.cfg), doc)
    except Exception as exc:  # the store may already be closing; never block the stop on this
        log.debug("event=state_file_final_failed error=%r", str(exc))
