"""The one retry backoff of the agent: capped exponential with full jitter.

Used for an unavailable device, a lost Modbus connection, the MQTT reconnect
loop and every supervised component's restart (agent/runtime/supervisor.py). It lives
in `drivers/` because drivers may not import `agent/`, and the agent may import
drivers. Full jitter (a uniform delay between 0 and the capped exponential,
AWS architecture blog) spreads retries of many gateways after a shared outage.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

#: 2**32 times any sane base is far above every cap; a bigger exponent would overflow a float
#: after ~1,024 attempts (hours of a broker outage), so the exponent stops growing here.
MAX_EXPONENT = 32


@dataclass
class Backoff:
    """Full-jitter exponential backoff: `failed()` gives the next delay, `succeeded()` resets."""

    base_s: float = 0.5
    cap_s: float = 30.0
    attempt: int = 0
    not_before: float = 0.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self) -> float:
        """The next delay without counting an attempt: uniform in [0, min(cap, base * 2**attempt)]."""
        return self.rng.uniform(0, min(self.cap_s, self.base_s * 2 ** min(self.attempt, MAX_EXPONENT)))

    def failed(self, now: float = 0.0) -> float:
        """Count a failure; returns the delay before the next try (also kept as `not_before`)."""
        delay = self.delay()
        self.attempt += 1
        self.not_before = now + delay
        return delay

    def succeeded(self) -> None:
        self.attempt = 0
        self.not_before = 0.0
