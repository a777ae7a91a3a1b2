"""Small capability protocols: what strategies and the controller may ask of a device.

Strategies speak these, never Modbus. A device kind implements the ones it
can; `isinstance(dev, Dimmable)` tells at run time.
"""

from __future__ import annotations

from typing import Any, Protocol, _ProtocolMeta, runtime_checkable

#: Per capability, the classes found to implement it (kept outside the protocol: typing would take
#: an attribute of it for one more member to check).
_IMPLEMENTERS: dict[type, set[type]] = {}


class _Capability(_ProtocolMeta):
    """`isinstance(dev, Dimmable)` that remembers the classes found to implement a capability:
    typing checks every member on every call (about 10 us in Python 3.11), and a shed asks twice
    per device on the way to its write. Only a class that has every member itself is remembered;
    anything else (an object whose members are its own attributes) is checked in full each time."""

    def __instancecheck__(cls, instance: Any) -> bool:
        implementers = _IMPLEMENTERS.setdefault(cls, set())
        if type(instance) in implementers:
            return True
        if not super().__instancecheck__(instance):
            return False
        members = [n for n, v in vars(cls).items() if callable(v) and not n.startswith("_")]
        if all(callable(getattr(type(instance), n, None)) for n in members):
            implementers.add(type(instance))
        return True


class DeviceSettings(Protocol):
    """The configured facts every device has (its pydantic config); kinds add their own fields."""

    @property
    def name(self) -> str: ...

    @property
    def zone(self) -> str | None: ...

    @property
    def rated_kw(self) -> float | None: ...


class Controllable(Protocol):
    """What strategies need of any device: its name, kind and configured limits, and its power."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def config(self) -> DeviceSettings: ...

    def power_kw(self) -> float | None:
        """Active power in kW (positive = consumption), None when unknown."""


@runtime_checkable
class WriteLimited(Protocol, metaclass=_Capability):
    """A kind with configured limits on what may be written (comfort band, floor, current range)."""

    def limit_violation(self, role: str, value: float) -> str | None:
        """None if `value` for `role` respects the device's configured limits, else why not."""


@runtime_checkable
class PowerMeter(Protocol, metaclass=_Capability):
    def power_kw(self) -> float | None:
        """Active power in kW (positive = consumption), None when unknown."""


@runtime_checkable
class Diagnosable(Protocol, metaclass=_Capability):
    def diagnostics(self) -> dict[str, Any]: ...


@runtime_checkable
class SetpointControl(Protocol, metaclass=_Capability):
    """HVAC: a temperature setpoint within comfort limits."""

    def setpoint_c(self) -> float | None: ...

    def setpoint_limits_c(self) -> tuple[float, float]: ...


@runtime_checkable
class Dimmable(Protocol, metaclass=_Capability):
    def level_pct(self) -> float | None: ...

    def min_level_pct(self) -> float: ...


@runtime_checkable
class CurrentLimited(Protocol, metaclass=_Capability):
    """EV charger: a current limit in A per phase."""

    def current_limit_a(self) -> float | None: ...

    def current_range_a(self) -> tuple[float, float]: ...

    def kw_per_amp(self) -> float: ...


@runtime_checkable
class Dispatchable(Protocol, metaclass=_Capability):
    """Storage: discharge (positive kW) within SOC and inverter limits."""

    def soc_pct(self) -> float | None: ...

    def max_discharge_kw(self) -> float: ...

    def reserve_soc_pct(self) -> float: ...


@runtime_checkable
class Switchable(Protocol, metaclass=_Capability):
    def is_on(self) -> bool | None: ...
