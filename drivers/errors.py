"""Errors a device sees from its transport, free of pymodbus.

`drivers.device`, the device kinds and everything that only speaks their
capabilities import these, so loading a kind (or a strategy) never loads the
Modbus client; `drivers.modbus` raises them.
"""

from __future__ import annotations


class ModbusIOError(Exception):
    """A request failed: no connection, timeout, or a Modbus exception response."""

    def __init__(
        self,
        endpoint: str,
        message: str,
        exception_code: int | None = None,
        *,
        retry_in_s: float | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.exception_code = exception_code
        #: Set when the endpoint itself is backing off: it retries the connection in this many seconds.
        self.retry_in_s = retry_in_s
        super().__init__(f"{endpoint}: {message}")
