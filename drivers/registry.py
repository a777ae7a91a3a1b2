"""Device kinds keyed by `kind`: each kind is one module with everything the agent knows of it.

A kind registers its site-config model and device class, and, when it can
shed, its strategy action (`drivers/actions.py`), its control traits and how
the simulator models it. The site config's device union, the strategy
language's action union, the controller and the simulated plant all look the
kind up here, so a new kind is one new module (see `drivers/_blueprint.py`),
imported by `drivers/kinds/__init__.py` or by whoever registers it (a plugin,
a test). Registering a kind twice is an error, not a silent override.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from drivers.actions import ActionBase, ControlTraits
from drivers.device import Device, DeviceConfigBase


@dataclass(frozen=True)
class SimEnv:
    """What the simulated plant tells a kind's simulator factory about the device it builds."""

    #: The device's rated_kw, or a stand-in when the config gives none.
    rated_kw: float
    #: Actuation delay of this device, s (the plant's per-kind setting).
    delay_s: float
    seed: int
    tz_offset_s: float
    #: The plant's options (drivers.sim.plant.PlantOptions): weather, vehicles, state of charge.
    options: Any


#: `simulator(config, bank, env) -> model`: builds the device's physics on its register bank
#: (a drivers.sim model). Only the simulator calls it, so the kind module imports the
#: simulator inside it and the production path never loads drivers.sim.
Simulator = Callable[[Any, Any, SimEnv], Any]


@dataclass(frozen=True)
class Kind:
    name: str
    config: type[DeviceConfigBase]
    device: type[Device]
    #: The strategy action that sheds this kind (None: a kind nothing sheds, like a meter).
    action: type[ActionBase] | None = None
    traits: ControlTraits = field(default_factory=ControlTraits)
    simulator: Simulator | None = None
    #: Its rated_kw is part of the site's consumption (False: a meter, a battery).
    site_load: bool = True

    @property
    def shed_role(self) -> str | None:
        return self.action.shed_role if self.action is not None else None


KINDS: dict[str, Kind] = {}
_DEFAULT_TRAITS = ControlTraits()
_listeners: list[Callable[[], None]] = []


def register(
    config: type[DeviceConfigBase],
    *,
    action: type[ActionBase] | None = None,
    traits: ControlTraits | None = None,
    simulator: Simulator | None = None,
    site_load: bool = True,
) -> Callable[[type[Device]], type[Device]]:
    """Class decorator: `@register(HvacConfig, action=HvacAction, ...) class Hvac(Device): kind = "hvac"`."""

    def deco(cls: type[Device]) -> type[Device]:
        if cls.kind in KINDS:
            raise ValueError(f"device kind {cls.kind!r} is registered twice")
        models: list[type[BaseModel]] = [config] if action is None else [config, action]
        for model in models:
            field_info = model.model_fields.get("kind")
            literal: Any = field_info.annotation if field_info is not None else None
            if getattr(literal, "__args__", (None,))[0] != cls.kind:
                raise ValueError(f"{model.__name__}.kind must be Literal[{cls.kind!r}]")
        if action is not None:
            if not action.shed_role:
                raise ValueError(f"{action.__name__}.shed_role must name the role a shed writes")
            if action.shed_role not in cls.writable_roles:
                raise ValueError(
                    f"{action.__name__}.shed_role {action.shed_role!r} must be one of "
                    f"{cls.__name__}.writable_roles {cls.writable_roles}"
                )
        KINDS[cls.kind] = Kind(cls.kind, config, cls, action, traits or ControlTraits(), simulator, site_load)
        _changed()
        return cls

    return deco


def deregister(name: str) -> None:
    """Remove a kind registered at run time (a test's kind, when the test ends)."""
    if KINDS.pop(name, None) is not None:
        _changed()


def on_change(callback: Callable[[], None]) -> None:
    """Call `callback` whenever a kind is registered or removed: models holding a union of the
    kinds (the site config's devices, the strategy actions) rebuild it."""
    _listeners.append(callback)


def _changed() -> None:
    for callback in _listeners:
        callback()


def kinds() -> dict[str, Kind]:
    import drivers.kinds  # noqa: F401  (registers the built-in kinds)

    return KINDS


def kind(name: str) -> Kind:
    """The registered kind `name` (KeyError if none)."""
    return kinds()[name]


def action_kinds() -> dict[str, type[ActionBase]]:
    """{kind: its action model} for every kind a strategy can shed, in registration order."""
    return {k.name: k.action for k in kinds().values() if k.action is not None}


def traits(action_kind: str) -> ControlTraits:
    """The control traits of the kind an action sheds (defaults for an unknown kind)."""
    k = KINDS.get(action_kind)
    return k.traits if k is not None else _DEFAULT_TRAITS
