"""Injected clocks: production and simulation run the same control code.

`SystemClock` is wall time. `ScaledClock` runs faster than wall time from a
shared origin, so a simulator process and an agent process that are given the
same origin and speed agree on "now" without talking to each other.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """What the agent needs of time: epoch seconds now, and sleeping in that time."""

    speed: float

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    speed = 1.0

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """Simulated time = origin_sim + (wall - origin_wall) * speed."""

    def __init__(self, speed: float, origin_sim: float, origin_wall: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("clock speed must be > 0")
        self.speed = speed
        self.origin_sim = origin_sim
        self.origin_wall = time.time() if origin_wall is None else origin_wall

    def now(self) -> float:
        return self.origin_sim + (time.time() - self.origin_wall) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    def spec(self) -> str:
        """The --clock argument that reproduces this clock in another process."""
        return f"{self.speed:g}@{self.origin_sim:.6f}@{self.origin_wall:.6f}"

    @classmethod
    def from_spec(cls, spec: str) -> ScaledClock:
        speed, origin_sim, origin_wall = spec.split("@")
        return cls(float(speed), float(origin_sim), float(origin_wall))


class ManualClock:
    """A clock the caller advances; sleeping advances it. For unit tests and fast simulation."""

    speed = float("inf")

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        self._now += max(0.0, seconds)
        await asyncio.sleep(0)
