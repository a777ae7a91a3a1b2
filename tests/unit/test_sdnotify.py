"""agent.runtime.sdnotify against real AF_UNIX datagram sockets (path and abstract)."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime.sdnotify import Notifier


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and its NOTIFY_SOCKET value (a filesystem path).

    A short directory under /tmp: sun_path is limited to 108 bytes.
    """
    with tempfile.TemporaryDirectory(prefix="sdn-", dir="/tmp") as tmp:
        path = str(Path(tmp) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(2)
        yield sock, path
        sock.close()


@pytest.fixture
def abstract_listener() -> Iterator[tuple[socket.socket, str]]:
    name = f"dr-agent-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    yield sock, "@" + name
    sock.close()


def fields(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_no_notify_socket_is_a_silent_no_op(caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier(environ={})
    assert not n.enabled
    with caplog.at_level(logging.DEBUG, logger="agent.runtime.sdnotify"):
        n.ready("up")
        n.watchdog()
        n.reloading()
        n.stopping()
        n.status("x")
        assert n.send({"READY": "1"}) is False
    assert n.watchdog_interval_s() is None
    assert caplog.records == []


def test_default_environ_is_the_process_environment(
    monkeypatch: pytest.MonkeyPatch, listener: tuple[socket.socket, str]
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    Notifier().watchdog()
    assert fields(sock) == {"WATCHDOG": "1"}


def test_messages_on_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier(environ={"NOTIFY_SOCKET": path})
    assert n.enabled

    n.ready()
    assert fields(sock) == {"READY": "1"}
    n.ready("polling 3 devices")
    assert fields(sock) == {"READY": "1", "STATUS": "polling 3 devices"}
    n.watchdog()
    assert fields(sock) == {"WATCHDOG": "1"}
    n.stopping()
    assert fields(sock) == {"STOPPING": "1"}
    n.status("event 42 active")
    assert fields(sock) == {"STATUS": "event 42 active"}
    n.extend_timeout(30)
    assert fields(sock) == {"EXTEND_TIMEOUT_USEC": "30000000"}
    n.close()


def test_reloading_carries_monotonic_usec(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier(environ={"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    got = fields(sock)
    assert got["RELOADING"] == "1"
    assert before <= int(got["MONOTONIC_USEC"]) <= after


def test_newlines_cannot_inject_fields(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    Notifier(environ={"NOTIFY_SOCKET": path}).status("line one\nREADY=1")
    assert fields(sock) == {"STATUS": "line one READY=1"}


def test_abstract_socket(abstract_listener: tuple[socket.socket, str]) -> None:
    sock, address = abstract_listener
    n = Notifier(environ={"NOTIFY_SOCKET": address})
    n.ready("up")
    assert fields(sock) == {"READY": "1", "STATUS": "up"}


def test_unsupported_address_disables(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.runtime.sdnotify"):
        n = Notifier(environ={"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled
    assert "not supported" in caplog.text


def test_missing_socket_logs_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    with tempfile.TemporaryDirectory(prefix="sdn-", dir="/tmp") as tmp:
        n = Notifier(environ={"NOTIFY_SOCKET": str(Path(tmp) / "gone")})
        with caplog.at_level(logging.DEBUG, logger="agent.runtime.sdnotify"):
            for _ in range(5):
                n.watchdog()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "gone" in warnings[0].getMessage()


def test_full_queue_never_blocks_then_recovers(
    listener: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    sock, path = listener
    n = Notifier(environ={"NOTIFY_SOCKET": path})
    start = time.monotonic()
    with caplog.at_level(logging.DEBUG, logger="agent.runtime.sdnotify"):
        # Nobody reads: the receiver's queue fills (net.unix.max_dgram_qlen,
        # 10 by default) and a blocking socket would hang here.
        for _ in range(500):
            n.watchdog()
        sent = sum(n.send({"WATCHDOG": "1"}) for _ in range(10))
    assert time.monotonic() - start < 2
    assert sent == 0
    assert [r.levelno for r in caplog.records].count(logging.WARNING) == 1

    sock.setblocking(False)
    while True:
        try:
            sock.recv(4096)
        except BlockingIOError:
            break
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="agent.runtime.sdnotify"):
        assert n.send({"WATCHDOG": "1"}) is True
    assert "recovered" in caplog.text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "2500000", "WATCHDOG_PID": "4242"}, 2.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "junk"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert Notifier(environ=env, pid=4242).watchdog_interval_s() == expected


def test_watchdog_pid_defaults_to_this_process() -> None:
    env = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(environ=env).watchdog_interval_s() == 1.0
