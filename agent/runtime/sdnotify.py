"""systemd service notifications (sd_notify(3)) in pure Python.

The agent tells systemd when it is ready, reloading or stopping, and feeds the
watchdog from its control loop. Every call is a single non-blocking datagram,
safe to make from the event loop; outside systemd (no ``NOTIFY_SOCKET``) every
call is a no-op. Failures are logged, never raised: a lost notification must
not take the agent down.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    """Sends state changes to the service manager named by ``NOTIFY_SOCKET``.

    ``environ`` and ``pid`` default to the process's own; tests pass their own.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if environ is None else environ
        self._pid = os.getpid() if pid is None else pid
        self._address = _parse_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._sock: socket.socket | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that listens."""
        return self._address is not None

    def ready(self, status: str | None = None) -> None:
        """Start-up (or a reload) is complete; ``status`` is shown by systemctl."""
        fields = {"READY": "1"}
        if status is not None:
            fields["STATUS"] = status
        self.send(fields)

    def reloading(self) -> None:
        """A configuration reload has begun; finish it with :meth:`ready`.

        MONOTONIC_USEC lets Type=notify-reload (systemd >= 253) match this
        message to the reload request; older versions ignore it.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send({"RELOADING": "1", "MONOTONIC_USEC": str(usec)})

    def stopping(self) -> None:
        """Shutdown has begun (devices are being restored)."""
        self.send({"STOPPING": "1"})

    def status(self, text: str) -> None:
        """One line of free-form status for ``systemctl status``."""
        self.send({"STATUS": text})

    def watchdog(self) -> None:
        """Keep-alive; send at least twice per :meth:`watchdog_interval_s`."""
        self.send({"WATCHDOG": "1"})

    def extend_timeout(self, seconds: float) -> None:
        """Ask for ``seconds`` more before the start/stop timeout fires.

        For a staggered restore on stop that outlasts TimeoutStopSec.
        """
        self.send({"EXTEND_TIMEOUT_USEC": str(max(0, int(seconds * 1_000_000)))})

    def watchdog_interval_s(self) -> float | None:
        """The watchdog timeout in seconds, or None when no watchdog applies to us.

        None when WATCHDOG_USEC is unset or invalid, or WATCHDOG_PID names
        another process (the variables were inherited by a child).
        """
        if self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None:
            try:
                if int(self._watchdog_pid) != self._pid:
                    return None
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        return usec / 1_000_000

    def send(self, fields: Mapping[str, str]) -> bool:
        """Send raw ``KEY=value`` fields; True when the datagram went out.

        Newlines inside a value are replaced by spaces so a status text can
        never inject a field of its own.
        """
        if self._address is None:
            return False
        message = "\n".join(f"{key}={' '.join(str(value).splitlines())}" for key, value in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            # A full queue (EAGAIN) or a vanished manager: report the first
            # failure loudly, repeats quietly.
            if not self._failing:
                self._failing = True
                log.warning(
                    "sd_notify failed socket=%s error=%s (repeats logged at debug)",
                    _display(self._address),
                    exc,
                )
            else:
                log.debug("sd_notify failed again error=%s", exc)
            return False
        if self._failing:
            self._failing = False
            log.info("sd_notify recovered socket=%s", _display(self._address))
        return True

    def close(self) -> None:
        """Close the socket; later calls reopen it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _parse_address(value: str) -> bytes | None:
    """NOTIFY_SOCKET as a sendto() address: a path, or ``@name`` for abstract."""
    if value.startswith("/"):
        return os.fsencode(value)
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    if value:
        # e.g. vsock:CID:PORT (systemd >= 253 in VMs): not used on gateways.
        log.warning("NOTIFY_SOCKET=%s not supported; notifications disabled", value)
    return None


def _display(address: bytes) -> str:
    return "@" + os.fsdecode(address[1:]) if address.startswith(b"\0") else os.fsdecode(address)
