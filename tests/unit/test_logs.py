"""Log lines: key=value pairs become JSON fields; journald gets syslog priorities; failures are
loud once, quiet while they repeat, loud again on recovery."""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile

import pytest

from agent.platform.logs import FailureLog, JsonFormatter, parse_pairs, setup_logging


def test_pairs_are_parsed_with_quotes_and_spaces() -> None:
    msg = "event_id=ev-7 device=chiller-1 event=poll_failed error='bms: timeout after 1 s' n=3"
    assert parse_pairs(msg) == {
        "event_id": "ev-7",
        "device": "chiller-1",
        "event": "poll_failed",
        "error": "bms: timeout after 1 s",
        "n": "3",
    }
    assert parse_pairs('reason="it\'s \\"late\\"" x=1')["reason"] == 'it\'s "late"'
    assert parse_pairs("plain prose, no pairs") == {}
    # Reserved names never overwrite the record's own fields.
    assert "level" not in parse_pairs("level=evil msg=evil ok=1")


def record(msg: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("dr_agent.device", level, __file__, 1, msg, None, None)


def test_json_line_carries_event_and_device_context() -> None:
    line = JsonFormatter().format(
        record("device=ev-3 event_id=e1 event=unavailable error='gone'", logging.ERROR)
    )
    body = json.loads(line)
    assert "\n" not in line
    assert body["level"] == "error" and body["logger"] == "dr_agent.device"
    assert (body["device"], body["event_id"], body["event"], body["error"]) == (
        "ev-3",
        "e1",
        "unavailable",
        "gone",
    )
    assert body["msg"].startswith("device=ev-3")


def test_json_when_not_a_tty_text_when_forced() -> None:
    out = io.StringIO()
    setup_logging("info", "auto", out)
    logging.getLogger("dr_agent").info("event=ready site=%s", "x")
    assert json.loads(out.getvalue())["site"] == "x"
    out = io.StringIO()
    setup_logging("info", "text", out)
    logging.getLogger("dr_agent").info("event=ready")
    assert " INFO    dr_agent event=ready" in out.getvalue()


def test_syslog_priority_prefix_only_on_the_journal_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryFile("w+") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup_logging("debug", "json", f)
        log = logging.getLogger("dr_agent")
        log.warning("event=poll_failed device=a")
        log.error("event=unavailable device=a")
        log.info("event=ready")
        f.seek(0)
        lines = f.read().splitlines()
    assert [ln[:3] for ln in lines] == ["<4>", "<3>", "<6>"]
    assert json.loads(lines[0][3:])["event"] == "poll_failed"
    # Another stream (a pipe, a file) gets no prefix even with JOURNAL_STREAM set.
    out = io.StringIO()
    setup_logging("info", "json", out)
    logging.getLogger("dr_agent").warning("event=x")
    assert out.getvalue().startswith("{")


def test_failure_log_is_loud_once_quiet_then_loud_on_recovery(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("dr_agent.test")
    fl = FailureLog(log, "broker", device="x")
    with caplog.at_level(logging.DEBUG, logger="dr_agent.test"):
        fl.ok()  # nothing was failing: silent
        for i in range(5):
            fl.failed(f"refused {i}")
        fl.ok()
        fl.ok()
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    quiet = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert [r.getMessage().split()[0] for r in loud] == ["event=broker_failed", "event=broker_recovered"]
    assert "device=x" in loud[0].getMessage() and "failures=5" in loud[1].getMessage()
    assert len(quiet) == 4 and not fl.failing
