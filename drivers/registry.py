"""Device kinds keyed by `kind`: each kind is one module with a Config and a Device class.

`drivers/kinds/__init__.py` imports every kind module so they register; a new
kind is one new module (see `drivers/_blueprint.py`). Registering a kind twice
is an error, not a silent override.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from drivers.device import Device, DeviceConfigBase


@dataclass(frozen=True)
class Kind:
    name: str
    config: type[DeviceConfigBase]
    device: type[Device]


KINDS: dict[str, Kind] = {}


def register(config: type[DeviceConfigBase]) -> Callable[[type[Device]], type[Device]]:
    """Class decorator: `@register(HvacConfig) class Hvac(Device): kind = "hvac"`."""

    def deco(cls: type[Device]) -> type[Device]:
        if cls.kind in KINDS:
            raise ValueError(f"device kind {cls.kind!r} is registered twice")
        literal = config.model_fields["kind"].annotation
        if getattr(literal, "__args__", (None,))[0] != cls.kind:
            raise ValueError(f"{config.__name__}.kind must be Literal[{cls.kind!r}]")
        KINDS[cls.kind] = Kind(cls.kind, config, cls)
        return cls

    return deco


def kinds() -> dict[str, Kind]:
    import drivers.kinds  # noqa: F401  (registers the built-in kinds)

    return KINDS
