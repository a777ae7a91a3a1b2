"""Test helpers: an MQTT observer that records what the agent says, and event builders."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt

from agent.platform.clock import ScaledClock


class Observer:
    """A provider-side MQTT client: publishes events, records every message under the site's root."""

    def __init__(self, host: str, port: int, root: str, client_id: str = "test-provider") -> None:
        self.host, self.port, self.root, self.client_id = host, port, root, client_id
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._new = asyncio.Event()

    async def __aenter__(self) -> Observer:
        self._client = aiomqtt.Client(self.host, self.port, identifier=self.client_id)
        await self._client.__aenter__()
        await self._client.subscribe(f"{self.root}/#", qos=1)
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
        if self._client:
            await self._client.__aexit__(None, None, None)

    async def _loop(self) -> None:
        assert self._client is not None
        async for m in self._client.messages:
            self._record(m)

    def _record(self, m: aiomqtt.Message) -> None:
        raw = m.payload if isinstance(m.payload, (bytes, str)) else b""
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # it sees the hostile payloads tests publish, too
            body = {"_raw": raw}
        self.messages.append((str(m.topic), body))
        self._new.set()

    async def publish(self, suffix: str, payload: dict[str, Any] | str | bytes) -> None:
        assert self._client is not None
        data = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
        await self._client.publish(f"{self.root}/{suffix}", data, qos=1)

    def on(self, suffix: str) -> list[dict[str, Any]]:
        return [b for t, b in self.messages if t == f"{self.root}/{suffix}"]

    def under(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        return [(t, b) for t, b in self.messages if t.startswith(f"{self.root}/{prefix}")]

    async def wait_for(
        self, predicate: Callable[[str, dict[str, Any]], bool], timeout: float = 20.0
    ) -> dict[str, Any]:
        """The first recorded message (past or future) matching `predicate`."""
        async with asyncio.timeout(timeout):
            while True:
                for t, b in self.messages:
                    if predicate(t, b):
                        return b
                self._new.clear()
                await self._new.wait()

    async def wait_online(self, timeout: float = 15.0) -> None:
        await self.wait_for(lambda t, b: t.endswith("/status") and b.get("state") == "online", timeout)


def event_payload(
    event_id: str, start_ts: float, duration_s: float, tz: str = "Asia/Shanghai", **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": event_id,
        "modification_number": 0,
        "status": "far",
        "program": "contracted",
        "start": datetime.fromtimestamp(start_ts, ZoneInfo(tz)).isoformat(),
        "duration_s": duration_s,
        "target": {"reduce_pct_of_peak": 10},
    }
    body.update(extra)
    return body


def write_config(cfg: Any, path: Any) -> Any:
    """Write a SiteConfig as YAML (what an operator would have on disk)."""
    import yaml

    data = cfg.model_dump(mode="json", exclude_none=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def dr_agent() -> list[str]:
    """The `dr-agent` of the interpreter running the tests (not whatever is first on PATH)."""
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "dr-agent"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "agent.cli"]


def agent_command(config_path: Any, clock_spec: str | None = None) -> list[str]:
    cmd = [*dr_agent(), "run", "-c", str(config_path), "--log-format", "json"]
    if clock_spec:
        cmd += ["--clock", clock_spec]
    return cmd


class FastForwardClock(ScaledClock):
    """A ScaledClock that can run faster for a while, e.g. through the quiet lead-up to an event
    (the agent polling, gathering the real-time baseline's 15 minutes of history), and back at the
    test's own speed before anything is controlled. Simulated time stays continuous: each change of
    speed moves the origin to the present."""

    def set_speed(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError("clock speed must be > 0")
        now = self.now()
        self.origin_sim, self.origin_wall, self.speed = now, time.time(), speed

    async def fast_forward(self, until: float, speed: float = 120.0) -> None:
        """Run at `speed` until simulated time `until`, then at the speed it had."""
        normal = self.speed
        self.set_speed(speed)
        try:
            while (left := until - self.now()) > 0:
                await self.sleep(left)
        finally:
            self.set_speed(normal)
