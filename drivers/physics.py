"""Device physics shared by every kind's simulator model: delayed actuation, change-only publishing.

A kind's model (`drivers/kinds/<kind>.py`) subclasses `DeviceModel`: it owns
the register bank the simulator serves for the device (laid out by the
device's profile) and advances with `advance(now, dt)` in simulated seconds.
Writes from a client land in the bank and take effect after the model's
actuation delay (a BMS or a charger does not obey the instant a register
changes). Power is always in kW, positive = consumption, except storage,
whose `output_kw` is positive when discharging. Models publish to their bank
only when a value changes, so an hour of plant time costs milliseconds.

Only the simulator (`drivers/sim/`) builds models; nothing here imports it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from drivers.codec import Value


class Bank(Protocol):
    """The register memory a model drives (drivers.sim.bank.RegisterBank), by point name or role."""

    on_write: Callable[[str, Value], None] | None

    def has(self, key: str) -> bool: ...

    def point(self, key: str) -> Any: ...

    def set(self, key: str, value: Value) -> None: ...

    def get(self, key: str) -> Value: ...


def lag(current: float, target: float, dt: float, tau_s: float) -> float:
    """First-order lag: how a physical quantity follows its command."""
    if tau_s <= 0:
        return target
    return target + (current - target) * math.exp(-dt / tau_s)


class DeviceModel:
    """Base of every device model: delayed actuation, change-only publishing."""

    def __init__(self, bank: Bank, delay_s: float = 0.0) -> None:
        self.bank = bank
        self.delay_s = delay_s
        self.now = 0.0
        self.failed = False
        self._queue: deque[tuple[float, str, Value]] = deque()
        self._shown: dict[str, Value] = {}
        bank.on_write = self.on_write

    def on_write(self, key: str, value: Value) -> None:
        """A client wrote `key`: the device obeys after its actuation delay."""
        if self.delay_s <= 0:
            self.apply(key, value)
        else:
            self._queue.append((self.now + self.delay_s, key, value))

    def apply(self, key: str, value: Value) -> None:
        """Take a command (after the delay). Models override this."""

    def advance(self, now: float, dt: float) -> None:
        """Apply commands that are due, then advance physics by `dt` seconds."""
        self.now = now
        q = self._queue
        while q and q[0][0] <= now:
            _t, key, value = q.popleft()
            self.apply(key, value)
        self.step(now, dt)

    def step(self, now: float, dt: float) -> None:
        raise NotImplementedError

    def load_kw(self) -> float:
        """Contribution to the site meter, kW (negative = generation / discharge)."""
        raise NotImplementedError

    def show(self, key: str, value: Value) -> None:
        """Set a register only if its value changed (encoding is the simulator's hot path)."""
        if self._shown.get(key) != value:
            self._shown[key] = value
            self.bank.set(key, value)

    def fail(self) -> None:
        """The device's controller fails: it stops answering and falls back to its own defaults."""
        self.failed = True
        self._queue.clear()
        self.failsafe()

    def failsafe(self) -> None:
        """What the device does on its own when it fails (default: keep the last command)."""
