"""`dr-agent demo`: settles inside the band (--json); with --keep-running, diagnose, status and report
work against it from a second process, and SIGTERM/SIGINT restore every device and exit 0."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import dr_agent

pytestmark = pytest.mark.e2e


def test_demo_json_settles_in_band(tmp_path: Path) -> None:
    cmd = dr_agent()
    db = tmp_path / "demo.sqlite"
    # Faster than the README's default (60x) to keep the suite short; same code path.
    proc = subprocess.run(
        [*cmd, "demo", "--json", "--speed", "120", "--duration-min", "20", "--keep-db", str(db)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(proc.stdout)
    for key in (
        "event_id",
        "baseline_kw",
        "measured_kw",
        "verified_reduction_kw",
        "band_pct",
        "in_band_fraction",
    ):
        assert key in s
    lo, hi = s["band_pct"]
    assert [lo, hi] == [5.0, 20.0]
    assert lo <= s["verified_reduction_pct_of_peak"] <= hi
    assert s["in_band_fraction"] >= 0.9
    # The verified figure is the formula over the reported energies.
    hours = s["duration_s"] / 3600
    assert s["verified_reduction_kw"] == pytest.approx(
        (s["baseline_kwh"] - s["measured_kwh"]) / hours, rel=1e-3
    )

    # The kept database holds the same settlement for `dr-agent report`.
    rep = subprocess.run(
        [*cmd, "report", "--db", str(db), s["event_id"], "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rep.returncode == 0, rep.stderr[-2000:]
    stored = json.loads(rep.stdout)
    assert stored["event_id"] == s["event_id"]
    assert stored["verified_reduction_kw"] == pytest.approx(s["verified_reduction_kw"])


class DemoProcess:
    """`dr-agent demo --keep-running` as a process, its stdout read line by line on a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*dr_agent(), "demo", "--keep-running", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._new = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._new:
                self.lines.append(line.rstrip("\n"))
                self._new.notify_all()
        with self._new:
            self._new.notify_all()

    def wait_line(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        """The first line matching `pattern` (searched from the start of the output)."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._new:
            while True:
                for line in self.lines[seen:]:
                    m = re.search(pattern, line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines[-40:]))
                self._new.wait(min(left, 1.0))

    def commands(self) -> dict[str, list[str]]:
        """The printed diagnose/status/report commands, as argv lists for this interpreter's dr-agent."""
        out = {}
        for verb in ("diagnose", "status", "report"):
            m = self.wait_line(rf"^\s+dr-agent ({verb} .*)$", 60)
            out[verb] = [*dr_agent(), *shlex.split(m.group(1))]
        return out

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=60)
        self._reader.join(timeout=10)
        return rc

    def kill(self) -> None:
        """Stop it if still up, and remove the folder it kept (the demo keeps it for the reader)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for line in self.lines:
            if m := re.search(r"^\s+config\s+(\S+)/demo-site\.yaml", line):
                shutil.rmtree(m.group(1), ignore_errors=True)


def run(argv: list[str], *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*argv, *more], capture_output=True, text=True, timeout=120)


def control_values(config: Path) -> dict[tuple[str, str], float]:
    """Every setpoint, level and current limit of the demo's devices, read over Modbus from here."""
    from agent.config.load import load_site_config
    from agent.runtime.daemon import build_devices

    cfg, _ = load_site_config(config)

    async def read() -> dict[tuple[str, str], float]:
        transports, devices = build_devices(cfg)
        values = {}
        try:
            for dev in devices.values():
                dev.read_only = True
                assert await dev.poll(), f"{dev.name}: {dev.health.last_error}"
                for role in ("setpoint_c", "level_pct", "current_limit_a"):
                    v = dev.reading(role) if dev.point_for(role) is not None else None
                    if v is not None:
                        values[(dev.name, role)] = v
        finally:
            for t in transports.values():
                await t.close()
        return values

    return asyncio.run(read())


def open_sheds(db: Path) -> tuple[int, int]:
    """(journal rows, rows not restored) of the demo's database."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        total = con.execute("SELECT count(*) FROM journal").fetchone()[0]
        still = con.execute("SELECT count(*) FROM journal WHERE restored_ts IS NULL").fetchone()[0]
    return int(total), int(still)


def test_keep_running_mid_event_diagnose_status_then_sigterm_restores() -> None:
    """diagnose and status from a second terminal during the event; SIGTERM restores and exits 0."""
    from agent.cli.diagnose import check_clock, probe_clock
    from agent.config.load import load_site_config

    # 120x to reach the event sooner; an hour long, so it is still on when the checks below are done.
    demo = DemoProcess("--speed", "120", "--duration-min", "60")
    try:
        config = Path(demo.wait_line(r"^\s+config\s+(\S+\.yaml)", 120).group(1))
        db = Path(demo.wait_line(r"^\s+database\s+(\S+)", 10).group(1))
        for key in ("broker", "modbus", "metrics"):
            demo.wait_line(rf"^\s+{key}\s+.*127\.0\.0\.1:\d+", 10)
        cmds = demo.commands()
        assert cmds["diagnose"][-2:] == ["-c", str(config)]
        assert cmds["report"][-3:-1] == ["--db", str(db)]
        before = control_values(config)  # the event starts 16 site minutes (8 s) after the demo
        demo.wait_line(r"is active", 120)
        demo.wait_line(r"\d+ steps? shed\s+in band", 120)
        shed_now = control_values(config)
        changed = {k for k, v in before.items() if shed_now.get(k) != v}
        assert changed, f"nothing reads as shed over Modbus mid-event: {shed_now}"

        diag = run(cmds["diagnose"], "--json")
        body = json.loads(diag.stdout)
        by_name = {c["name"]: c for c in body["checks"]}
        # The clock checks judge this machine (its timezone, NTP), not the demo: expect what they
        # say here; every other check is green.
        cfg, _ = load_site_config(config)
        host_clock = {c.name: c.status for c in check_clock(cfg, probe_clock())}
        for name, check in by_name.items():
            want = host_clock.get(name, "ok")
            assert check["status"] == want, f"{name}: {check}"
        for name in ("config", "mqtt.connect", "mqtt.topics", "service", "metrics", "events"):
            assert name in by_name, sorted(by_name)
        assert sum(name.startswith("device.") for name in by_name) == 11
        assert any(c["data"].get("shed") for c in body["checks"] if c["name"].startswith("device."))
        assert diag.returncode == body["exit_code"] == (1 if "warn" in host_clock.values() else 0)

        status = run(cmds["status"])
        assert status.returncode == 0, status.stdout + status.stderr
        assert "running" in status.stdout and "active" in status.stdout
        assert "SHED" in status.stdout

        rc = demo.stop(signal.SIGTERM)
        assert rc == 0, "\n".join(demo.lines[-20:]) + (demo.proc.stderr.read() if demo.proc.stderr else "")
        demo.wait_line(r"^devices restored: all 10 controllable devices read back over Modbus", 5)
        total, still = open_sheds(db)
        assert total > 0 and still == 0, (total, still)
    finally:
        demo.kill()


def test_keep_running_after_settlement_serves_report_until_sigint() -> None:
    """After the settlement the site and the agent keep running; the printed report command works."""
    demo = DemoProcess("--speed", "240", "--duration-min", "10")
    try:
        cmds = demo.commands()
        event_id = cmds["report"][-1]
        demo.wait_line(r"the event is settled; the site and the agent keep running", 180)
        rep = run(cmds["report"], "--format", "json")
        assert rep.returncode == 0, rep.stderr[-2000:]
        assert json.loads(rep.stdout)["event_id"] == event_id
        status = run(cmds["status"])
        assert status.returncode == 0, status.stdout + status.stderr
        assert "running" in status.stdout
        assert demo.proc.poll() is None  # still up after the event
        assert demo.stop(signal.SIGINT) == 0
        demo.wait_line(r"^devices restored:", 5)
    finally:
        demo.kill()
