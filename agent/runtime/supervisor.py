"""Supervision: each daemon component restarts on failure; none takes the site down with it.

A component is a long-running coroutine (`poll[<endpoint>]`, `control`,
`mqtt`, `flush`, `report`, `state`, `metrics`). When it raises, the supervisor
logs it (the first failure loudly with its traceback, repeats quietly,
recovery loudly once it has run `healthy_after_s` without failing), counts
the restart (`dr_agent_component_restarts_total`) and starts it again after a
capped full-jitter backoff (drivers/backoff.py, the same one devices and the
MQTT link use). A component with `max_failures` (the control path) that keeps
failing past it is given up on: the supervisor calls `on_fatal` with the
reason and the daemon stops safely (restores every shed, publishes `failed`,
exits non-zero). Cancellation is never caught: it is how the daemon stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent.platform.logs import FailureLog
from drivers.backoff import Backoff

log = logging.getLogger("dr_agent.supervisor")

#: A restarted component that ran this long (wall seconds) without failing has recovered.
HEALTHY_AFTER_S = 10.0


@dataclass
class Component:
    name: str
    run: Callable[[], Awaitable[None]]
    #: Consecutive failures (without a healthy run between) after which the agent stops safely;
    #: None restarts for ever. Only a component the site's safety depends on sets it.
    max_failures: int | None = None


@dataclass
class ComponentHealth:
    restarts: int = 0
    failing: bool = False
    last_error: str | None = None


def describe(exc: BaseException) -> str:
    """`Type: message` of an exception, or of the first leaf of an exception group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


class Supervisor:
    def __init__(
        self,
        sleep: Callable[[float], Awaitable[None]],
        on_fatal: Callable[[str], None],
        *,
        base_s: float = 0.5,
        cap_s: float = 30.0,
        healthy_after_s: float = HEALTHY_AFTER_S,
    ) -> None:
        """`sleep` is the agent clock's (simulated plants back off in plant time)."""
        self.sleep = sleep
        self.on_fatal = on_fatal
        self.base_s = base_s
        self.cap_s = cap_s
        self.healthy_after_s = healthy_after_s
        self.health: dict[str, ComponentHealth] = {}
        #: Why the agent gave up (component and error), once it did.
        self.fatal: str | None = None

    async def supervise(self, c: Component) -> None:
        """Run `c` until it returns (done) or is cancelled, restarting it whenever it raises."""
        h = self.health.setdefault(c.name, ComponentHealth())
        fl = FailureLog(log, "component", logging.ERROR, component=c.name)
        backoff = Backoff(base_s=self.base_s, cap_s=self.cap_s)
        loop = asyncio.get_running_loop()

        def healthy() -> None:
            fl.ok()
            backoff.succeeded()
            h.failing = False

        while True:
            timer = loop.call_later(self.healthy_after_s, healthy) if h.failing else None
            try:
                await c.run()
                return
            except Exception as exc:  # any failure of a component is contained here
                err = describe(exc)
                h.failing = True
                h.last_error = err
                fl.failed(err, exc_info=exc)
                if c.max_failures is not None and backoff.attempt + 1 >= c.max_failures:
                    self.fatal = f"{c.name}: {err}"
                    log.critical(
                        "event=component_given_up component=%s failures=%d error=%r",
                        c.name,
                        backoff.attempt + 1,
                        err,
                    )
                    self.on_fatal(self.fatal)
                    return
                h.restarts += 1
                delay = backoff.failed()
            finally:
                if timer is not None:
                    timer.cancel()
            await self.sleep(delay)
