"""One recovery time: a device on an endpoint that is backing off retries with the endpoint, not after it.

Before, the endpoint's connect backoff (up to 30 s) and the device's own
retry backoff (up to 30 s) stacked, so a device came back up to ~60 s
(38 s measured) after its gateway, where the docs say 30 s.
"""

from __future__ import annotations

from drivers.device import UNAVAILABLE_AFTER_FAILURES
from drivers.modbus import ModbusIOError
from drivers.profile import Function, load_profile
from drivers.registry import kinds


class Down:
    """An endpoint whose connect is backing off: every request fails at once, saying when it retries."""

    name = "gw"

    def __init__(self, retry_in_s: float | None) -> None:
        self.retry_in_s = retry_in_s

    async def read(self, unit: int, function: Function, address: int, count: int) -> list[int]:
        if self.retry_in_s is None:
            raise ModbusIOError("gw", "no response within 1 s")
        raise ModbusIOError("gw", "not connected", retry_in_s=self.retry_in_s)

    async def write_registers(self, unit: int, address: int, values: list[int]) -> None:
        raise AssertionError("no writes")

    async def write_coil(self, unit: int, address: int, value: bool) -> None:
        raise AssertionError("no writes")


def meter(transport: Down, now: list[float]):  # type: ignore[no-untyped-def]
    k = kinds()["meter"]
    cfg = k.config(name="m", kind="meter", endpoint="gw", unit_id=1, profile="eastron_sdm630")
    dev = k.device(cfg, transport, load_profile("eastron_sdm630"))  # type: ignore[arg-type]
    dev.clock = lambda: now[0]
    return dev


async def test_device_retries_when_its_endpoint_does_never_later() -> None:
    now = [1000.0]
    dev = meter(Down(retry_in_s=7.5), now)
    for _ in range(UNAVAILABLE_AFTER_FAILURES + 5):
        assert not await dev.poll()
        # Never a second backoff on top of the endpoint's: due exactly when the endpoint reconnects.
        if not dev.health.available:
            assert dev.health.next_poll_at == now[0] + 7.5
        now[0] = max(now[0], dev.health.next_poll_at)
    assert dev._retry.attempt == 0


async def test_a_silent_unit_backs_off_within_the_cap() -> None:
    now = [0.0]
    dev = meter(Down(retry_in_s=None), now)
    for _ in range(40):
        assert not await dev.poll()
        assert dev.health.next_poll_at - now[0] <= dev.retry_cap_s
        now[0] = max(now[0], dev.health.next_poll_at)
