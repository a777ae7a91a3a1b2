"""Device and endpoint configuration rules the drivers rely on."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.config.model import ModbusConfig
from drivers.registry import kinds


def test_two_endpoints_on_one_line_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"both use 10\.0\.0\.5:502"):
        ModbusConfig.model_validate(
            {
                "endpoints": [
                    {"name": "a", "host": "10.0.0.5"},
                    {"name": "b", "protocol": "rtu_over_tcp", "host": "10.0.0.5"},
                ]
            }
        )
    with pytest.raises(ValidationError, match="both use /dev/ttyUSB0"):
        ModbusConfig.model_validate(
            {
                "endpoints": [
                    {"name": "a", "protocol": "rtu", "serial_port": "/dev/ttyUSB0"},
                    {"name": "b", "protocol": "rtu", "serial_port": "/dev/ttyUSB0", "baudrate": 19200},
                ]
            }
        )
    ok = ModbusConfig.model_validate(
        {"endpoints": [{"name": "a", "host": "10.0.0.5"}, {"name": "b", "host": "10.0.0.5", "port": 503}]}
    )
    assert len(ok.endpoints) == 2


def test_charger_heartbeat_must_fit_inside_its_failsafe_timeout() -> None:
    cfg = kinds()["ev_charger"].config
    base = {"name": "ev", "kind": "ev_charger", "endpoint": "e", "profile": "vestel_evc04"}
    with pytest.raises(ValidationError, match="at most half of failsafe_timeout_s"):
        cfg.model_validate({**base, "heartbeat_s": 15, "failsafe_timeout_s": 20})
    with pytest.raises(ValidationError, match="must not exceed max_current_a"):
        cfg.model_validate({**base, "failsafe_current_a": 40})
    assert cfg.model_validate({**base, "heartbeat_s": 5, "failsafe_timeout_s": 20}).heartbeat_s == 5
