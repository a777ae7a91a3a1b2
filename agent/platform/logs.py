"""Logging set-up: key=value lines on a terminal, one JSON object per line otherwise (journald).

Messages are written key=value (`event_id=... device=... event=...`). The JSON
formatter keeps the line as `msg` and lifts those pairs into fields of their
own (`event`, `event_id`, `device`, `step`, ...), so a journal or a log
shipper indexes them without parsing prose. Under systemd (JOURNAL_STREAM
names our stderr) every line starts with a syslog priority, `<4>` for a
warning, so `journalctl -u dr-agent -p warning` shows exactly the warnings.

The rule for anything that can fail over and over (a device, the broker, a
file): the first failure is loud, repeats are quiet, the recovery is loud.
`FailureLog` does that bookkeeping for one such thing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any, TextIO

# key=value, key='quoted value' or key="quoted value" (values from %r are quoted).
_PAIR = re.compile(r"""(?:^|\s)([a-z_][a-z0-9_]*)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s'"]\S*)""")
_RESERVED = {"ts", "level", "logger", "msg", "exc"}
# syslog priorities (sd-daemon(3)): what journald stores as PRIORITY=.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def parse_pairs(message: str) -> dict[str, str]:
    """The key=value pairs of a log message, quotes removed; the first of a repeated key wins."""
    out: dict[str, str] = {}
    for key, raw in _PAIR.findall(message):
        if key in out or key in _RESERVED:
            continue
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            raw = raw[1:-1].replace("\\'", "'").replace('\\"', '"')
        out[key] = raw
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and the message's key=value pairs as fields."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        body: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": msg,
        }
        body.update(parse_pairs(msg))
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


class PriorityPrefix(logging.Formatter):
    """Wraps a formatter and puts `<N>` (the syslog priority) in front of each line, for journald."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        level = max((lv for lv in _PRIORITY if lv <= record.levelno), default=logging.DEBUG)
        # A multi-line traceback must stay one journal entry per line with the same priority.
        text = self.inner.format(record)
        prefix = f"<{_PRIORITY[level]}>"
        return "\n".join(prefix + line for line in text.split("\n"))


def on_journal(stream: TextIO) -> bool:
    """True when `stream` is the journald stream systemd connected (JOURNAL_STREAM=dev:inode)."""
    want = os.environ.get("JOURNAL_STREAM", "")
    if not want:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str = "info", fmt: str = "auto", stream: object = None) -> None:
    """Text on a terminal, JSON otherwise (`fmt` forces one); syslog priorities on journald."""
    out: Any = stream or sys.stderr
    handler = logging.StreamHandler(out)
    use_json = fmt == "json" or (fmt == "auto" and not getattr(out, "isatty", lambda: False)())
    formatter: logging.Formatter
    if use_json:
        formatter = JsonFormatter()
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s %(message)s", "%H:%M:%S")
        formatter.converter = time.localtime
    if on_journal(out):
        formatter = PriorityPrefix(formatter)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pymodbus", "aiomqtt", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


class FailureLog:
    """First failure loud, repeats quiet (debug, counted), recovery loud, for one thing that can fail.

    fl = FailureLog(log, "state_file", path=str(path))
    fl.failed(str(exc))   # warning the first time, debug after
    fl.ok()               # "recovered after N failures" once, if it was failing
    """

    def __init__(
        self, logger: logging.Logger, what: str, level: int = logging.WARNING, **context: object
    ) -> None:
        self.log = logger
        self.what = what
        self.level = level
        self.context = " ".join(f"{k}={v}" for k, v in context.items())
        self.failures = 0
        self.first_ts: float | None = None

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def failed(self, error: str, exc_info: BaseException | None = None) -> None:
        """Count a failure; `exc_info` adds the traceback to the first (loud) line only."""
        self.failures += 1
        ctx = f" {self.context}" if self.context else ""
        if self.failures == 1:
            self.first_ts = time.monotonic()
            self.log.log(
                self.level,
                "event=%s_failed%s error=%r (repeats at debug)",
                self.what,
                ctx,
                error,
                exc_info=exc_info,
            )
        else:
            self.log.debug("event=%s_failed%s n=%d error=%r", self.what, ctx, self.failures, error)

    def ok(self) -> None:
        if not self.failures:
            return
        ctx = f" {self.context}" if self.context else ""
        lasted = time.monotonic() - (self.first_ts or time.monotonic())
        self.log.log(
            self.level,
            "event=%s_recovered%s failures=%d lasted_s=%.0f",
            self.what,
            ctx,
            self.failures,
            lasted,
        )
        self.failures = 0
        self.first_ts = None
