"""`dr-agent diagnose`: every check a field technician needs, each with a verdict and a one-line fix.

Checks, in order: the config; the clock (timezone, synchronisation); disk
space for the database; the broker (TCP, TLS, credentials, subscribe and
publish on the site's topics); each Modbus endpoint and each device's points
(values, units, latency, the Modbus exception code on failure); whether a
device is shed right now (the revert journal); the last events and
settlements; the daemon itself (state file) and its /metrics.

Diagnose only reads, with two exceptions it announces: an MQTT round trip on
`<root>/out/diagnose`, and `--test-shed`, which writes one device through the
same revert journal the daemon uses. It opens its own Modbus and MQTT
connections (its own client id), so it runs beside a running daemon; a serial
port the daemon holds is reported from the daemon's state instead. It never
prints a secret: the password is only ever said to be "set" or "not set".
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import socket
import sqlite3
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from agent.config.model import SiteConfig
from agent.platform.store import Store
from agent.runtime.statefile import liveness, read_state, state_path

Status = Literal["ok", "warn", "fail"]
MARK = {"ok": "✔", "warn": "!", "fail": "✘"}
COLOR = {"ok": "\x1b[32m", "warn": "\x1b[33m", "fail": "\x1b[31m"}
DIAG_EVENT_ID = "diagnose-test-shed"

MODBUS_HINTS = {
    1: "the device does not support this function: wrong profile for this model?",
    2: "register address not on this device: the profile does not match the model/firmware",
    3: "value refused by the device: check the profile's data type and count",
    4: "the device reports an internal failure: check it on site, power-cycle if safe",
    6: "device busy: raise timeout_s / inter_frame_delay_ms for this endpoint",
    10: "the gateway has no path to this unit: check the gateway's serial settings",
    11: "no answer behind the gateway: check unit_id, RS-485 wiring (A/B), termination and baud rate",
}


@dataclass
class Check:
    """One verdict: `name` is stable (tooling keys on it), `hint` says what to do when not ok."""

    name: str
    status: Status
    detail: str
    hint: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClockFacts:
    system_tz: str | None
    synchronized: bool | None
    source: str
    est_error_s: float | None = None


@dataclass
class Options:
    min_free_mb: float = 200.0
    timeout_s: float = 5.0
    clock_probe: Callable[[], ClockFacts] | None = None
    config_path: str | None = None


def exit_code(checks: list[Check]) -> int:
    """0 all ok, 1 warnings, 2 failures."""
    if any(c.status == "fail" for c in checks):
        return 2
    return 1 if any(c.status == "warn" for c in checks) else 0


def to_json(checks: list[Check]) -> dict[str, Any]:
    return {"checks": [asdict(c) for c in checks], "exit_code": exit_code(checks)}


def render(checks: list[Check], *, color: bool = False, header: str = "") -> str:
    """One screen: a line per check, the hint under anything not ok."""
    width = min(40, max((len(c.name) for c in checks), default=10)) + 1
    lines = [header] if header else []
    for c in checks:
        mark = MARK[c.status]
        if color:
            mark = f"{COLOR[c.status]}{mark}\x1b[0m"
        lines.append(f"{mark} {c.name:<{width}} {c.detail}")
        if c.hint and c.status != "ok":
            lines.append(f"  {'':<{width}} → {c.hint}")
    warns = sum(c.status == "warn" for c in checks)
    fails = sum(c.status == "fail" for c in checks)
    summary = "all checks passed" if not warns and not fails else f"{fails} failed, {warns} warnings"
    lines.append(f"\n{len(checks)} checks: {summary}")
    return "\n".join(lines)


# -- clock -------------------------------------------------------------------------


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


def _system_tz() -> str | None:
    with contextlib.suppress(OSError):
        target = os.readlink("/etc/localtime")
        if "zoneinfo/" in target:
            return target.split("zoneinfo/", 1)[1]
    with contextlib.suppress(OSError):
        return Path("/etc/timezone").read_text().strip() or None
    return os.environ.get("TZ")


def probe_clock() -> ClockFacts:
    """Timezone and NTP state: timedatectl where systemd runs, else the kernel's adjtimex(2) status."""
    tz = _system_tz()
    exe = shutil.which("timedatectl")
    if exe:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [exe, "show", "-p", "Timezone", "-p", "NTPSynchronized"],
                capture_output=True,
                text=True,
                timeout=3,
            )
            if out.returncode == 0:
                props = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
                return ClockFacts(
                    props.get("Timezone") or tz, props.get("NTPSynchronized") == "yes", "timedatectl", None
                )
    # adjtimex with modes=0 only reads; TIME_ERROR (5) or STA_UNSYNC means not synchronised.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        tx = _Timex()
        rc = libc.adjtimex(ctypes.byref(tx))
        if rc >= 0:
            synced = rc != 5 and not (tx.status & 0x0040)
            return ClockFacts(tz, synced, "kernel", tx.esterror / 1e6)
    return ClockFacts(tz, None, "unknown")


def check_clock(cfg: SiteConfig, facts: ClockFacts) -> list[Check]:
    site_tz = cfg.site.timezone
    out = []
    now_site = datetime.now(ZoneInfo(site_tz)).strftime("%Y-%m-%d %H:%M:%S %Z")
    if facts.system_tz is None:
        out.append(
            Check(
                "clock.timezone",
                "warn",
                f"system timezone not set; site time {now_site}",
                f"timedatectl set-timezone {site_tz}",
            )
        )
    elif ZoneInfo(facts.system_tz).utcoffset(datetime.now()) != ZoneInfo(site_tz).utcoffset(datetime.now()):
        out.append(
            Check(
                "clock.timezone",
                "warn",
                f"system {facts.system_tz}, site {site_tz} (now {now_site})",
                f"timedatectl set-timezone {site_tz} (the agent schedules in site.timezone; logs use the system's)",
            )
        )
    else:
        out.append(Check("clock.timezone", "ok", f"{facts.system_tz}, now {now_site}"))
    err = "" if facts.est_error_s is None else f", estimated error {facts.est_error_s * 1000:.0f} ms"
    if facts.synchronized:
        out.append(Check("clock.sync", "ok", f"NTP synchronized ({facts.source}{err})"))
    elif facts.synchronized is None:
        out.append(
            Check(
                "clock.sync",
                "warn",
                "cannot tell whether the clock is synchronized",
                "check chrony/systemd-timesyncd by hand: event windows and settlements depend on the clock",
            )
        )
    else:
        out.append(
            Check(
                "clock.sync",
                "warn",
                f"NOT synchronized ({facts.source}{err})",
                "timedatectl set-ntp true, and allow UDP 123 out: event windows and settlements depend on the clock",
            )
        )
    return out


# -- disk ----------------------------------------------------------------------------


def check_disk(cfg: SiteConfig, min_free_mb: float) -> Check:
    db = cfg.storage.resolved().absolute()
    where = db.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    usage = shutil.disk_usage(where)
    free_mb = usage.free / 1e6
    size = (
        sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file())
        if db.parent.exists()
        else 0
    )
    detail = (
        f"{db.parent}: {_mb(free_mb)} free of {_mb(usage.total / 1e6)}; database {_mb(size / 1e6)} "
        f"(needs {_mb(min_free_mb)})"
    )
    data = {"path": str(db), "free_bytes": usage.free, "total_bytes": usage.total, "db_bytes": size}
    hint = "free space on that file system (journalctl --vacuum-size=200M, old logs, apt-get clean)"
    if free_mb < min_free_mb:
        return Check("disk", "fail", detail, hint + ": below the minimum the agent may stop recording", data)
    if free_mb < 2 * min_free_mb:
        return Check("disk", "warn", detail, hint, data)
    if not db.parent.exists():
        return Check(
            "disk",
            "warn",
            f"{db.parent} does not exist yet; {_mb(free_mb)} free",
            "start the agent once (systemd creates it)",
            data,
        )
    return Check("disk", "ok", detail, "", data)


def _mb(mb: float) -> str:
    return f"{mb / 1000:.1f} GB" if mb >= 1000 else f"{mb:.1f} MB" if mb >= 1 else f"{mb * 1000:.0f} kB"


# -- MQTT ---------------------------------------------------------------------------------


async def check_mqtt(cfg: SiteConfig, timeout_s: float) -> tuple[list[Check], dict[str, Any] | None]:
    """TCP, TLS, CONNECT, subscribe + publish round trip. Returns the checks and the retained status."""
    import aiomqtt

    m = cfg.mqtt
    where = f"{m.host}:{m.port}"
    out: list[Check] = []
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            _r, w = await asyncio.open_connection(m.host, m.port)
        w.close()
        with contextlib.suppress(OSError):
            await w.wait_closed()
        out.append(
            Check("mqtt.connect", "ok", f"{where} reachable in {(time.monotonic() - t0) * 1000:.1f} ms")
        )
    except TimeoutError:
        out.append(
            Check(
                "mqtt.connect",
                "fail",
                f"{where}: no answer in {timeout_s:g} s",
                f"firewall or routing: nc -vz {m.host} {m.port}",
            )
        )
        return out, None
    except socket.gaierror as exc:
        out.append(
            Check(
                "mqtt.connect",
                "fail",
                f"{m.host}: cannot resolve ({exc.strerror})",
                "check DNS (resolvectl status) or use the IP address",
            )
        )
        return out, None
    except OSError as exc:
        out.append(
            Check(
                "mqtt.connect",
                "fail",
                f"{where}: {exc.strerror or exc}",
                "is the broker running? is mqtt.port right (1883 plain, 8883 TLS)?",
            )
        )
        return out, None
    try:
        tls = cfg.mqtt.tls.context() if cfg.mqtt.tls is not None else None
    except (OSError, ssl.SSLError) as exc:
        out.append(
            Check(
                "mqtt.tls",
                "fail",
                f"cannot load TLS files: {exc}",
                "check mqtt.tls.ca_file/cert_file/key_file paths and permissions",
            )
        )
        return out, None
    if tls is not None:
        try:
            async with asyncio.timeout(timeout_s):
                _r, w = await asyncio.open_connection(m.host, m.port, ssl=tls)
            cert = w.get_extra_info("peercert") or {}
            w.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await w.wait_closed()
            days = None
            if cert.get("notAfter"):
                days = (ssl.cert_time_to_seconds(cert["notAfter"]) - time.time()) / 86400
            subject = dict(x[0] for x in cert.get("subject", ())).get("commonName", "?")
            detail = f"handshake ok, broker certificate {subject}" + (
                "" if days is None else f", expires in {days:.0f} days"
            )
            if days is not None and days < 30:
                out.append(
                    Check("mqtt.tls", "warn", detail, "ask the aggregator to renew the broker certificate")
                )
            else:
                out.append(Check("mqtt.tls", "ok", detail))
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            out.append(
                Check(
                    "mqtt.tls",
                    "fail",
                    f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}",
                    "check mqtt.tls.ca_file matches the broker's CA, the host name, and the clock (certificate dates)",
                )
            )
            return out, None
    password = m.password()
    who = f"user {m.username or '(anonymous)'}, password {'set' if password else 'not set'}"
    client_id = f"{m.client_id or 'dr-agent-' + cfg.site.id}-diagnose-{os.getpid()}"
    root = cfg.topic_root
    status: dict[str, Any] | None = None
    try:
        async with asyncio.timeout(timeout_s * 2):
            client = aiomqtt.Client(
                m.host,
                m.port,
                identifier=client_id,
                username=m.username,
                password=password,
                tls_context=tls,
                timeout=timeout_s,
                clean_session=True,
            )
            async with client:
                out.append(Check("mqtt.auth", "ok", f"accepted: {who}"))
                granted = await client.subscribe(f"{root}/in/event", qos=1)
                g = _granted(granted)
                probe_topic = f"{root}/out/diagnose"
                await client.subscribe(probe_topic, qos=1)
                await client.subscribe(f"{root}/status", qos=1)
                nonce = f"{os.getpid()}-{time.monotonic_ns()}"
                t1 = time.monotonic()
                await client.publish(probe_topic, json.dumps({"diagnose": nonce, "ts": time.time()}), qos=1)
                echoed = None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout_s):
                        async for msg in client.messages:
                            body = _json(msg.payload)
                            if str(msg.topic) == f"{root}/status":
                                status = body
                            elif body.get("diagnose") == nonce:
                                echoed = (time.monotonic() - t1) * 1000
                                if status is not None:
                                    break
                                # The retained status, if any, arrives right after SUBACK.
                                with contextlib.suppress(TimeoutError):
                                    async with asyncio.timeout(0.3):
                                        async for msg2 in client.messages:
                                            if str(msg2.topic) == f"{root}/status":
                                                status = _json(msg2.payload)
                                                break
                                break
                if g is not None and g >= 0x80:
                    out.append(
                        Check(
                            "mqtt.topics",
                            "fail",
                            f"subscribe to {root}/in/event refused (code {g})",
                            "the broker's ACL must let this user read <root>/in/#",
                        )
                    )
                elif echoed is None:
                    out.append(
                        Check(
                            "mqtt.topics",
                            "fail",
                            f"subscribed {root}/in/event, but a publish to {probe_topic} never came back",
                            "the broker's ACL must let this user write <root>/out/# and <root>/status",
                        )
                    )
                else:
                    out.append(
                        Check(
                            "mqtt.topics",
                            "ok",
                            f"subscribed {root}/in/event (QoS {g}); {probe_topic} round trip {echoed:.1f} ms",
                        )
                    )
    except aiomqtt.MqttCodeError as exc:
        rc = getattr(exc.rc, "value", exc.rc)
        if rc in (4, 5, 134, 135):
            # Mosquitto answers "not authorised" to a wrong password too (3.1.1), so name both causes.
            hint = (
                "wrong user name or password: check mqtt.username and /etc/dr-agent/credentials/mqtt-password "
                "(then systemctl restart dr-agent); if both are right, ask the aggregator to enable this user"
            )
        elif rc in (2, 133):
            hint = "client id refused: set mqtt.client_id as the aggregator assigned it"
        else:
            hint = "see the broker's log for why it refused the connection"
        out.append(Check("mqtt.auth", "fail", f"refused: {_redact(str(exc), password)} ({who})", hint))
    except (aiomqtt.MqttError, TimeoutError) as exc:
        out.append(
            Check(
                "mqtt.auth",
                "fail",
                f"no MQTT session: {_redact(str(exc), password) or 'timeout'} ({who})",
                "is it an MQTT broker on that port? TLS needed (mqtt.tls)?",
            )
        )
    return out, status


def _granted(granted: Any) -> int | None:
    with contextlib.suppress(Exception):
        g = granted[0]
        return int(getattr(g, "value", g))
    return None


def _json(payload: Any) -> dict[str, Any]:
    try:
        raw = payload if isinstance(payload, (bytes, str)) else b""
        body = json.loads(raw)
        return body if isinstance(body, dict) else {}
    except ValueError:
        return {}


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


# -- Modbus ---------------------------------------------------------------------------------


def _fmt_value(v: Any, unit: str) -> str:
    if isinstance(v, float):
        v = f"{v:.2f}".rstrip("0").rstrip(".")
    return f"{v} {unit}".strip()


async def check_modbus(
    cfg: SiteConfig, journal: list[Any], daemon: dict[str, Any] | None, timeout_s: float
) -> list[Check]:
    """Each endpoint, then each device on it: one real poll, values with units, shed state from the journal."""
    from agent.runtime.daemon import build_devices

    transports, devices = build_devices(cfg)
    _TZ.update({n: ZoneInfo(cfg.site.timezone) for n in devices})
    for d in devices.values():
        d.read_only = True  # diagnose only reads: the daemon does the start-up writes
    shed: dict[str, list[Any]] = {}
    for e in journal:
        shed.setdefault(e.device, []).append(e)
    running_daemon = daemon is not None
    live_event = ((daemon or {}).get("live") or {}).get("event_id")
    daemon_devices = {d["name"]: d for d in (daemon or {}).get("devices", [])}
    out: list[Check] = []
    try:
        for ep in cfg.modbus.endpoints:
            on_ep = [d for d in devices.values() if d.config.endpoint == ep.name]
            t = transports[ep.name]
            addr = ep.serial_port if ep.protocol == "rtu" else f"{ep.host}:{ep.port}"
            if ep.protocol == "rtu" and running_daemon:
                out.append(
                    Check(
                        f"modbus.{ep.name}",
                        "ok",
                        f"rtu {addr}: held by the running agent; devices from its state",
                    )
                )
                for d in on_ep:
                    out.append(_device_from_daemon(d, daemon_devices.get(d.name), shed.get(d.name, [])))
                continue
            t0 = time.monotonic()
            first_ok = None
            for d in on_ep:
                ok = await d.poll()
                if first_ok is None:
                    first_ok = ok
                if not ok and not t.stats.reconnects:
                    # Never connected: the endpoint line says why; do not repeat it per device.
                    out.append(
                        Check(
                            f"device.{d.name}",
                            "fail",
                            f"{d.kind} unit {d.unit_id}: not polled, endpoint {ep.name} unreachable",
                            f"fix modbus.{ep.name} first",
                        )
                    )
                    continue
                out.append(_device_check(d, ok, shed.get(d.name, []), live_event))
            if t.connected or first_ok:
                out.insert(
                    len(out) - len(on_ep),
                    Check(
                        f"modbus.{ep.name}",
                        "ok",
                        f"{ep.protocol} {addr} connected; {len(on_ep)} devices polled in {(time.monotonic() - t0) * 1000:.0f} ms",
                    ),
                )
            else:
                err = t.stats.last_error or "cannot connect"
                hint = (
                    f"is {ep.serial_port} the adapter (ls -l /dev/serial/by-id/), is the user in dialout?"
                    if ep.protocol == "rtu"
                    else f"check power and cable of the device/gateway at {addr}; nc -vz {ep.host} {ep.port}"
                )
                out.insert(
                    len(out) - len(on_ep),
                    Check(f"modbus.{ep.name}", "fail", f"{ep.protocol} {addr}: {err}", hint),
                )
    finally:
        for t in transports.values():
            with contextlib.suppress(Exception):
                await t.close()
    for name, entries in shed.items():
        if name not in devices:
            out.append(
                Check(
                    f"device.{name}",
                    "warn",
                    f"shed per the journal ({_shed_text(entries, ZoneInfo(cfg.site.timezone))}) but no longer configured",
                    "put it back by hand; the journal row is closed at the agent's next start",
                )
            )
    return out


#: Site timezone per device name, for the "shed since" times (set by check_modbus).
_TZ: dict[str, ZoneInfo] = {}


def _shed_text(entries: list[Any], tz: ZoneInfo | None = None) -> str:
    e = entries[-1]
    since = datetime.fromtimestamp(e.ts, tz).strftime("%m-%d %H:%M:%S")
    return f"SHED {e.role} {entries[0].original:g} -> {e.written:g} since {since} by {e.event_id or '-'}"


def _silent(error: str | None) -> bool:
    """The transport's words for a unit that did not answer on a connected endpoint."""
    e = error or ""
    return "no response within" in e or "timeout" in e or "no response" in e


def _device_check(d: Any, ok: bool, entries: list[Any], live_event: str | None = None) -> Check:
    diag = d.diagnostics()
    h = d.health
    name = f"device.{d.name}"
    if not ok:
        code = h.exception_code
        hint = MODBUS_HINTS.get(code or 0) or (
            f"unit {d.unit_id} not answering: check unit id/wiring (and the device's power); "
            "timeout_s for slow devices"
            if _silent(h.last_error)
            else f"endpoint {d.config.endpoint} unreachable: see modbus.{d.config.endpoint}"
        )
        detail = f"{d.kind} unit {d.unit_id}: {h.last_error}" + (
            f" (Modbus exception {code})" if code else ""
        )
        return Check(name, "fail", detail, hint, diag)
    from strategies.engine import SHED_ROLE

    # Power first, then what a shed writes, then the other mapped roles: the lines a technician checks.
    first = ("power_kw", SHED_ROLE.get(d.kind, ""))
    points = sorted(
        (p for p in d.profile.points if p.name in d.values),
        key=lambda p: first.index(p.role) if p.role in first else 2 if p.role else 3,
    )
    shown = [f"{p.name} {_fmt_value(d.values[p.name], p.unit)}" for p in points[:4]]
    detail = f"{d.kind}: {', '.join(shown)}; {d.requests_per_poll} req, {h.latency_ms:.1f} ms"
    if d.kind != "meter":
        detail += "; " + (_shed_text(entries, _TZ.get(d.name)) if entries else "not shed")
    diag["shed"] = [asdict(e) for e in entries]
    if h.rejected:
        # A value outside its plausible range is not a reading: the device is not fit to shed.
        why = "; ".join(f"{n} {r}" for n, r in h.rejected.items())
        hints = [d.profile.point(n).hint for n in h.rejected if d.profile.point(n).hint]
        hint = hints[0] if hints else "check the device's scale and units against its profile"
        return Check(name, "fail", f"{d.kind}: rejected {why}; not shed while so", hint, diag)
    if entries and entries[-1].event_id != live_event:
        return Check(
            name, "fail", f"{detail}: NOT restored (journal row open)", _RESTORE_HINT.format(d.name), diag
        )
    return Check(name, "ok", detail, "", diag)


_RESTORE_HINT = (
    "dr-agent restore -c CONFIG --device {0} writes the original back and closes the row "
    "(--fixed-by-hand if put back on site)"
)


def _device_from_daemon(d: Any, st: dict[str, Any] | None, entries: list[Any]) -> Check:
    name = f"device.{d.name}"
    if st is None:
        return Check(
            name,
            "warn",
            "not in the running agent's state (config changed since it started?)",
            "systemctl reload dr-agent",
        )
    shed = (
        "; " + (_shed_text(entries, _TZ.get(d.name)) if entries else "not shed") if d.kind != "meter" else ""
    )
    if st is not None and st.get("rejected"):
        why = "; ".join(f"{n} {r}" for n, r in st["rejected"].items())
        return Check(
            name, "fail", f"{d.kind}: rejected {why} (via the agent)", "check the device's scale", st
        )
    power = "" if st.get("power_kw") is None else f"{st['power_kw']:.1f} kW, "
    if not st["available"]:
        code = st.get("exception_code")
        return Check(
            name,
            "fail",
            f"{d.kind} unit {d.unit_id}: {st.get('last_error')} (via the agent){shed}",
            MODBUS_HINTS.get(code or 0, "check power, unit_id and RS-485 wiring"),
            st,
        )
    return Check(name, "ok", f"{d.kind}: {power}{st.get('latency_ms')} ms (via the agent){shed}", "", st)


# -- database: journal, events, settlements ------------------------------------------------------


def open_read_only(path: Path) -> Store | None:
    """The agent's store opened read-only (no schema writes), or None when there is no database yet."""
    if not path.exists():
        return None
    s = Store.__new__(Store)
    s.path = path
    s.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
    return s


def fix_ownership(db: Path) -> None:
    """Run as root, SQLite may create -wal/-shm owned by root: hand them back to the database's owner."""
    if os.geteuid() != 0 or not db.exists():
        return
    st = db.stat()
    for p in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        with contextlib.suppress(OSError):
            if p.exists() and (p.stat().st_uid, p.stat().st_gid) != (st.st_uid, st.st_gid):
                os.chown(p, st.st_uid, st.st_gid)


def check_history(cfg: SiteConfig, store: Store | None, tz: ZoneInfo) -> list[Check]:
    if store is None:
        return [Check("events", "ok", "no database yet: the agent has not run here")]
    rows = store.events()
    out = []
    if not rows:
        out.append(Check("events", "ok", "no events received yet"))
    else:
        last = rows[-3:]
        parts = []
        for r in reversed(last):
            start = datetime.fromisoformat(r["payload"]["start"]).astimezone(tz)
            parts.append(f"{r['event_id']} {r['state']} (opt {r['opt']}, {start:%m-%d %H:%M})")
        out.append(
            Check("events", "ok", f"{len(rows)} in total; last: " + "; ".join(parts), data={"events": last})
        )
    sets = store.settlements(3)
    if not sets:
        out.append(Check("settlements", "ok", "none yet"))
    else:
        s = sets[0]
        out.append(
            Check(
                "settlements",
                "ok",
                f"{s['event_id']}: verified {s['verified_reduction_kw']:.1f} kW = "
                f"{s['verified_reduction_pct_of_peak']:.1f} % of peak, in band {s['in_band_fraction'] * 100:.0f} % "
                f"of minutes, est. {s.get('estimated_incentive_cny', 0):.0f} CNY",
                data={"settlements": sets},
            )
        )
    return out


def check_storage(cfg: SiteConfig, store: Store, now: float) -> Check:
    """The database against its budget, and the days of history each baseline rule has."""
    from agent.settlement.history import DAY_S, TEMPERATURE_KEY, plan_retention, rule_lookback_days

    st = cfg.storage
    used = store.usage_bytes()
    meter = cfg.site.meter
    plan = plan_retention(st, len([d for d in cfg.devices if d.name != meter]))
    minute = store.oldest("readings_1m", meter)
    raw = store.oldest_raw({meter})
    minute_d = 0.0 if minute is None else max(0.0, (now - minute) / DAY_S)
    raw_d = 0.0 if raw is None else max(0.0, (now - raw) / DAY_S)
    rules: dict[str, dict[str, float]] = {}
    short: list[str] = []
    for rule, need in rule_lookback_days().items():
        has = raw_d if rule.startswith("realtime") else minute_d
        kept = plan.raw_s / DAY_S if rule.startswith("realtime") else plan.meter_minute_days
        rules[rule] = {"needs_days": round(need, 4), "has_days": round(has, 4), "kept_days": round(kept, 4)}
        if kept < need:
            short.append(f"{rule} needs {need:g} d, the budget keeps {kept:.0f} d")
    pct = used / (st.max_mb * 2**20) * 100

    def span(days: float) -> str:
        return f"{days:.1f} d" if days >= 1 else f"{days * 1440:.0f} min"

    shown = ", ".join(
        f"{r} {span(min(v['has_days'], v['needs_days']))}/{span(v['needs_days'])}" for r, v in rules.items()
    )
    detail = (
        f"{_mb(used / 1e6)} of a {st.max_mb:g} MB budget ({pct:.0f} %); meter history: 1-min {span(minute_d)},"
        f" poll-rate {span(raw_d)}; rules (history/look-back): {shown}"
    )
    if plan.shortened:
        detail += f"; shortened to fit: {', '.join(plan.shortened)}"
    data = {
        "used_bytes": used,
        "budget_mb": st.max_mb,
        "meter_minute_days": round(minute_d, 2),
        "meter_raw_days": round(raw_d, 2),
        "rules": rules,
        "retention": {
            "raw_s": plan.raw_s,
            "device_raw_s": plan.device_raw_s,
            "meter_minute_days": plan.meter_minute_days,
            "device_minute_days": plan.device_minute_days,
            "quarter_days": plan.quarter_days,
            "shortened": list(plan.shortened),
        },
        "temperature_key": TEMPERATURE_KEY,
    }
    hint = "raise storage.max_mb (docs/operations.md#storage) or keep fewer devices' history"
    if used > st.max_mb * 2**20:
        return Check("storage", "fail", detail, "the agent deletes the oldest history; " + hint, data)
    if short:
        return Check("storage", "warn", detail + "; " + "; ".join(short), hint, data)
    return Check("storage", "ok", detail, "", data)


# -- the daemon ------------------------------------------------------------------------------------


def check_service(cfg: SiteConfig, doc: dict[str, Any] | None, mqtt_status: dict[str, Any] | None) -> Check:
    from agent import __version__

    live, why = liveness(doc)
    announced = f"; broker says {mqtt_status.get('state')}" if mqtt_status else ""
    if live == "running" and doc is not None:
        devs = doc.get("devices", [])
        up = sum(1 for d in devs if d["available"])
        mq = "MQTT connected" if doc["mqtt"]["connected"] else "MQTT NOT connected"
        detail = f"running: {why}, dr-agent {doc.get('version')}; {mq}; {up}/{len(devs)} devices answering{announced}"
        if doc.get("version") != __version__:
            return Check(
                "service",
                "warn",
                detail,
                f"installed {__version__} differs from the running one: systemctl restart dr-agent",
                doc,
            )
        return Check(
            "service", "ok", detail, "", {k: doc.get(k) for k in ("pid", "version", "started_at", "state")}
        )
    hint = {
        "stopped": "systemctl start dr-agent",
        "absent": "systemctl start dr-agent (journalctl -u dr-agent -n 50 if it fails)",
        "crashed": "journalctl -u dr-agent -n 50 for why; systemctl restart dr-agent",
        "stale": "the agent stopped updating its state: systemctl restart dr-agent; journalctl -u dr-agent -n 50",
    }[live]
    return Check("service", "fail", f"not running: {why}{announced}", hint)


def check_metrics(cfg: SiteConfig, doc: dict[str, Any] | None, timeout_s: float) -> Check | None:
    if not cfg.metrics.enabled or doc is None or liveness(doc)[0] != "running":
        return None
    port = doc.get("metrics_port") or cfg.metrics.port
    host = "127.0.0.1" if cfg.metrics.host in ("0.0.0.0", "") else cfg.metrics.host
    url = f"http://{host}:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            text = r.read().decode()
        families = sum(1 for line in text.splitlines() if line.startswith("# TYPE"))
        return Check("metrics", "ok", f"{url}: {families} metric families")
    except OSError as exc:
        return Check(
            "metrics",
            "warn",
            f"{url}: {exc}",
            "metrics.host/port in the config; is another process on the port?",
        )


# -- all together ------------------------------------------------------------------------------------


def check_config(cfg: SiteConfig, config_path: str | None, warnings: list[str]) -> Check:
    from agent.config.yamlsource import expand_config_paths
    from agent.runtime.reload import config_digest

    files = [str(p) for p in expand_config_paths(Path(config_path))] if config_path else []
    digest = config_digest(config_path)[:12] if config_path else "-"
    extra = f" + {len(files) - 1} conf.d" if len(files) > 1 else ""
    detail = f"valid{extra}: site {cfg.site.id}, {len(cfg.devices)} devices, {len(cfg.strategies)} strategies, sha256 {digest}"
    if warnings:
        return Check(
            "config",
            "warn",
            f"{detail}; {len(warnings)} warnings: {warnings[0]}",
            "dr-agent validate -c FILE lists them",
            {"warnings": warnings},
        )
    return Check("config", "ok", detail, "", {"files": files})


async def diagnose(cfg: SiteConfig, opts: Options, warnings: list[str] | None = None) -> list[Check]:
    """Run every check; never raises for what it finds (a check that crashes becomes a failure)."""
    tz = ZoneInfo(cfg.site.timezone)
    checks = [check_config(cfg, opts.config_path, warnings or [])]
    checks += check_clock(cfg, (opts.clock_probe or probe_clock)())
    checks.append(check_disk(cfg, opts.min_free_mb))
    doc = read_state(state_path(cfg))
    daemon = doc if liveness(doc)[0] == "running" else None
    mqtt_checks, mqtt_status = await _guard("mqtt", check_mqtt(cfg, opts.timeout_s))
    checks += mqtt_checks
    if cfg.openadr is not None and "openadr" in cfg.event_sources:
        from agent.cli.diagnose_openadr import check_openadr  # the VTN: reachable, TLS, registered, last poll

        checks += (await _guard("openadr", _pair(check_openadr(cfg, opts.timeout_s))))[0]
    store = None
    journal: list[Any] = []
    try:
        store = await asyncio.to_thread(open_read_only, cfg.storage.resolved())
        if store is not None:
            journal = await asyncio.to_thread(store.journal_open)
    except sqlite3.Error as exc:
        checks.append(
            Check(
                "database",
                "fail",
                f"{cfg.storage.resolved()}: {exc}",
                "check the file's owner (dr-agent) and permissions",
            )
        )
    modbus, _ = await _guard("modbus", _pair(check_modbus(cfg, journal, daemon, opts.timeout_s)))
    checks += modbus
    try:
        checks += await asyncio.to_thread(check_history, cfg, store, tz)
        if store is not None:
            checks.append(await asyncio.to_thread(check_storage, cfg, store, time.time()))
    except (sqlite3.Error, KeyError, ValueError) as exc:
        checks.append(
            Check("events", "fail", f"cannot read events: {exc}", "the database may be from another version")
        )
    finally:
        if store is not None:
            store.db.close()
            fix_ownership(cfg.storage.resolved())
    checks.append(check_service(cfg, doc, mqtt_status))
    m = await asyncio.to_thread(check_metrics, cfg, doc, opts.timeout_s)
    if m is not None:
        checks.append(m)
    return checks


async def _pair(coro: Any) -> tuple[list[Check], None]:
    return await coro, None


async def _guard(what: str, coro: Any) -> tuple[list[Check], Any]:
    try:
        checks, data = await coro
        return checks, data
    except Exception as exc:  # a bug in one probe must not hide the others
        return [
            Check(
                what,
                "fail",
                f"the {what} check crashed: {type(exc).__name__}: {exc}",
                "report this as a dr-agent bug",
            )
        ], None


def _first_hint(dev: Any, exc: Exception) -> str:
    """The profile's hint for a rejected point named in the refusal, else how to look closer."""
    for p in dev.profile.points:
        if p.hint and p.name in str(exc):
            return str(p.hint)
    return "dr-agent diagnose shows the device's readings"


# -- --test-shed ---------------------------------------------------------------------------------------


async def shed_test(
    cfg: SiteConfig, device: str, seconds: float, confirm: Callable[[str], bool], timeout_s: float = 5.0
) -> list[Check]:
    """Shed one device by its first strategy step for `seconds`, read back, restore, report.

    The write goes through the revert journal like the daemon's own, so if
    this process dies mid-test the daemon restores the device at its next
    start. Refused while the device is shed or an event is running.
    """
    from agent.control.actuator import Actuator
    from agent.platform.store import AsyncStore
    from agent.runtime.daemon import build_devices
    from drivers.device import WriteError
    from strategies.engine import NotApplicable, build_steps, shed_value

    name = f"test-shed.{device}"
    if device not in {d.name for d in cfg.devices}:
        return [
            Check(
                name,
                "fail",
                f"no device {device!r} in the config",
                "dr-agent diagnose -c FILE lists the devices",
            )
        ]
    doc = read_state(state_path(cfg))
    live = (doc or {}).get("live") or {}
    if liveness(doc)[0] == "running" and live.get("event_id"):
        return [
            Check(
                name, "fail", f"event {live['event_id']} is running", "test after the event (dr-agent status)"
            )
        ]
    db = cfg.storage.resolved()
    if not db.exists():
        return [
            Check(name, "fail", f"no database at {db}", "start the agent once, so the revert journal exists")
        ]
    transports, devices = build_devices(cfg)
    dev = devices[device]
    # Write the shed point only: the start-up writes (a charger's failsafe) are the daemon's to do.
    dev.read_only = True
    steps = [s for strat in cfg.strategies for s in build_steps(strat, devices) if s.device == device]
    if not steps:
        return [Check(name, "fail", f"no strategy sheds {device}", "add it to a strategy stage first")]
    step = steps[0]
    store = AsyncStore(Store(db))
    checks: list[Check] = []
    try:
        if await store.journal_open(device):
            return [
                Check(
                    name,
                    "fail",
                    f"{device} is shed right now (journal)",
                    "wait for the restore, or systemctl restart dr-agent",
                )
            ]
        if not await dev.poll():
            return [
                Check(
                    name,
                    "fail",
                    f"{device} does not answer: {dev.health.last_error}",
                    "fix the device first (dr-agent diagnose)",
                )
            ]
        role = step.role
        try:
            original: float | None = (await dev.snapshot(role)).value
        except WriteError as exc:
            # Never shed what could not be put back: say why, write nothing.
            return [Check(name, "fail", f"refusing to shed {device}: {exc}", _first_hint(dev, exc), {})]
        power0 = dev.power_kw()
        try:
            value = shed_value(step, dev, original)
        except NotApplicable as exc:
            return [Check(name, "fail", f"step {step.id} does not apply now: {exc}", "")]
        question = (
            f"Shed {device} for {seconds:g} s: {role} {original} -> {value} (step {step.id}), then restore "
            f"{original}. Proceed? [y/N] "
        )
        if not confirm(question):
            return [Check(name, "warn", "cancelled; nothing was written", "")]
        actuator = Actuator(devices, store)
        t0 = time.monotonic()
        try:
            back = await actuator.shed(device, role, value, DIAG_EVENT_ID, f"diagnose/{step.id}")
            checks.append(
                Check(
                    f"{name}.write",
                    "ok",
                    f"{role} {original} -> {value}, read back {back} in {(time.monotonic() - t0) * 1000:.0f} ms",
                )
            )
            await asyncio.sleep(seconds)
            await dev.poll()
            power1 = dev.power_kw()
            effect = (
                f"power {power0:.1f} -> {power1:.1f} kW ({power0 - power1:+.1f} kW shed) after {seconds:g} s"
                if power0 is not None and power1 is not None
                else "power not measured by this device"
            )
            checks.append(
                Check(
                    f"{name}.effect", "ok", effect, data={"power_before_kw": power0, "power_after_kw": power1}
                )
            )
        except Exception as exc:
            checks.append(
                Check(
                    f"{name}.write",
                    "fail",
                    f"{type(exc).__name__}: {exc}",
                    "check the profile marks the point writable and the device accepts remote control",
                )
            )
        finally:
            writes = actuator.writes
            journalled = bool(await store.journal_open(device, role))
            restored = await actuator.restore(device, role, "diagnose test-shed done", DIAG_EVENT_ID)
            await dev.poll()
            now = dev.reading(role)
            if restored and not journalled:
                checks.append(
                    Check(f"{name}.restore", "warn", f"nothing to restore: nothing was written; reads {now}")
                )
            elif restored and actuator.writes == writes:
                checks.append(
                    Check(f"{name}.restore", "warn", f"journal closed without a write; {role} reads {now}")
                )
            elif restored:
                checks.append(Check(f"{name}.restore", "ok", f"{role} back to {original}, reads {now}"))
            else:
                checks.append(
                    Check(
                        f"{name}.restore",
                        "fail",
                        f"restore of {role}={original} failed; reads {now}",
                        "the daemon restores it at its next start: systemctl restart dr-agent",
                    )
                )
    finally:
        await store.close()
        fix_ownership(db)
        for t in transports.values():
            with contextlib.suppress(Exception):
                await t.close()
    return checks
