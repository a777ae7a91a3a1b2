"""diagnose's verdicts without the network: clock, exit codes, the screen, JSON, the daemon's liveness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from agent.cli.diagnose import (
    Check,
    ClockFacts,
    check_clock,
    check_service,
    exit_code,
    probe_clock,
    render,
    to_json,
)
from agent.config.load import load_site_config
from agent.runtime.statefile import liveness

REPO = Path(__file__).resolve().parents[2]
CFG, _ = load_site_config(REPO / "config/demo-site.yaml")


def test_clock_verdicts() -> None:
    ok = check_clock(CFG, ClockFacts("Asia/Shanghai", True, "timedatectl"))
    assert [c.status for c in ok] == ["ok", "ok"]
    # Same offset, other name: fine (Asia/Chongqing is UTC+8 too).
    assert check_clock(CFG, ClockFacts("Asia/Chongqing", True, "kernel", 0.002))[0].status == "ok"
    tz, sync = check_clock(CFG, ClockFacts("Etc/UTC", False, "kernel", 16.0))
    assert tz.status == "warn" and "timedatectl set-timezone Asia/Shanghai" in tz.hint
    assert sync.status == "warn" and "NOT synchronized" in sync.detail and "set-ntp true" in sync.hint
    unknown = check_clock(CFG, ClockFacts(None, None, "unknown"))
    assert [c.status for c in unknown] == ["warn", "warn"]
    assert "cannot tell" in unknown[1].detail


def test_probe_clock_answers_on_this_box() -> None:
    facts = probe_clock()
    assert facts.source in ("timedatectl", "kernel", "unknown")
    assert facts.synchronized in (True, False, None)


def test_exit_codes_screen_and_json() -> None:
    ok = Check("a", "ok", "fine", "never shown")
    warn = Check("b", "warn", "hmm", "do this")
    fail = Check("c", "fail", "broken", "fix that")
    assert exit_code([ok]) == 0 and exit_code([ok, warn]) == 1 and exit_code([warn, fail, ok]) == 2
    text = render([ok, warn, fail], header="dr-agent diagnose: site x")
    lines = text.splitlines()
    assert lines[0] == "dr-agent diagnose: site x"
    assert lines[1].startswith("✔ a") and "never shown" not in text
    assert lines[2].startswith("! b") and lines[3].strip() == "→ do this"
    assert lines[4].startswith("✘ c") and lines[5].strip() == "→ fix that"
    assert lines[-1] == "3 checks: 1 failed, 1 warnings"
    assert "\x1b[" not in text and "\x1b[31m" in render([fail], color=True)
    body = to_json([ok, fail])
    assert body["exit_code"] == 2
    assert body["checks"][1] == {
        "name": "c",
        "status": "fail",
        "detail": "broken",
        "hint": "fix that",
        "data": {},
    }


def test_liveness_of_the_state_file() -> None:
    now = time.time()
    me = {"pid": os.getpid(), "state": "running", "updated_at": now - 1, "started_at": now - 3600}
    assert liveness(me, now)[0] == "running" and "up 60 min" in liveness(me, now)[1]
    assert liveness({**me, "updated_at": now - 60}, now)[0] == "stale"
    assert liveness({**me, "state": "stopped"}, now)[0] == "stopped"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    assert liveness({**me, "pid": int(gone.stdout)}, now)[0] == "crashed"
    assert liveness(None, now)[0] == "absent"
    svc = check_service(CFG, {**me, "state": "stopped"}, {"state": "stopped"})
    assert (
        svc.status == "fail"
        and "systemctl start dr-agent" in svc.hint
        and "broker says stopped" in svc.detail
    )


def test_invalid_config_is_one_failed_check(tmp_path: Path) -> None:
    bad = tmp_path / "site.yaml"
    bad.write_text((REPO / "config/demo-site.yaml").read_text().replace("peak_kw: 1000", "peak_kw: -1"))
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "diagnose", "-c", str(bad), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    body = json.loads(proc.stdout)
    assert proc.returncode == body["exit_code"] == 2
    (c,) = body["checks"]
    assert c["name"] == "config" and c["status"] == "fail" and "peak_kw" in c["detail"]
    assert "dr-agent validate" in c["hint"]


async def test_the_installed_example_config_is_valid_and_builds() -> None:
    from agent.runtime.daemon import build_devices

    proc = subprocess.run(  # noqa: ASYNC221 (the async is for pymodbus's serial client below)
        [sys.executable, "-m", "agent.cli", "validate", "-c", "config/site.example.yaml"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    cfg, warnings = load_site_config(REPO / "config/site.example.yaml")
    assert warnings == []
    assert {e.protocol for e in cfg.modbus.endpoints} == {"tcp", "rtu", "rtu_over_tcp"}
    assert cfg.contract.band_pct == (5.0, 20.0) and cfg.contract.allowed_hours == ("10:00", "15:00")
    transports, devices = build_devices(cfg)  # no I/O: transports connect on first use
    assert set(devices) == {d.name for d in cfg.devices}
    for t in transports.values():
        await t.close()
