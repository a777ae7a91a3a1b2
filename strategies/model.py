"""The strategy language facility managers write: stages of actions on devices or groups.

A strategy is an ordered list of stages; a stage holds actions; an action is
one of the registered device kinds' action models (each defined with its kind
in `drivers/kinds/`), with typed, bounded parameters. The controller adds
the resulting steps in order while the site needs more curtailment and takes
them back last-in-first-out when it needs less. docs/strategies.md is the
user's guide; every field here carries the description editors show.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, model_validator
from pydantic_core import CoreSchema

from drivers.actions import ActionBase
from drivers.kinds.ev_charger import EvChargerAction
from drivers.kinds.hvac import HvacAction, Precool
from drivers.kinds.lighting import LightingAction
from drivers.kinds.relay import RelayAction
from drivers.kinds.storage import StorageAction
from drivers.registry import action_kinds, on_change

# The built-in kinds' actions, for the code and tests that name one.
__all__ = [
    "Action",
    "ActionBase",
    "EvChargerAction",
    "HvacAction",
    "LightingAction",
    "Precool",
    "RelayAction",
    "StorageAction",
]

Program = Literal["contracted", "realtime", "price"]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _AnyAction:
    """The action union, built from the kind registry each time a model's schema is built.

    Every kind that can shed contributes its action model (`drivers/kinds/<kind>.py`),
    discriminated by `kind`; registering a kind later (a plugin, a test) rebuilds the
    models below (`_rebuild`), so a strategy can use it without an edit here.
    """

    @classmethod
    def resolved_type(cls) -> Any:
        """The union as it stands now (validate reads it to list an action's fields and suggest one)."""
        models = tuple(action_kinds().values())
        union: Any = models[0]
        for m in models[1:]:
            union = union | m
        if len(models) == 1:
            return union
        return Annotated[union, Field(discriminator="kind")]

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return handler.generate_schema(cls.resolved_type())


if TYPE_CHECKING:
    # For the type checker an action is "the common fields plus the kind's rules".
    Action = ActionBase
else:
    Action = _AnyAction


class Stage(BaseModel):
    """A named group of actions; stages are applied in order, their actions in order."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=_NAME, title="Stage name", description="Stage name, shown in plans and reports."
    )
    description: str = Field(default="", title="Description", description="What this stage is for.")
    actions: list[Action] = Field(
        min_length=1, title="Actions", description="Actions of this stage, applied in order."
    )


class RestorePolicy(BaseModel):
    """How shed devices come back after the event: staggered, ramped, without a rebound peak."""

    model_config = ConfigDict(extra="forbid")

    step_interval_s: float = Field(
        default=5.0,
        ge=0,
        le=600,
        title="Step interval (s)",
        description="Seconds between restoring one step and the next (last shed, first restored).",
    )
    ramp_s: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        title="Ramp (s)",
        description="Spread the whole restore over at least this long, s: the interval between steps "
        "becomes max(step_interval_s, ramp_s / number of shed steps).",
    )
    rebound_cap_factor: float | None = Field(
        default=1.05,
        ge=1.0,
        le=2.0,
        title="Rebound cap",
        description="During the recovery window, hold back the next restore while site load would exceed "
        "baseline x this factor. null = no cap.",
    )
    rebound_window_s: float = Field(
        default=900.0,
        ge=0,
        le=7200,
        title="Recovery window (s)",
        description="Length of the post-event recovery window in which the rebound cap applies, s.",
    )

    hvac_release_step_c: float = Field(
        default=0.5,
        ge=0,
        le=10,
        title="HVAC release step (°C)",
        description="Walk HVAC setpoints back in steps of this many °C (0 = all at once), so compressors "
        "do not all restart flat out.",
    )
    hvac_release_interval_s: float = Field(
        default=60.0,
        ge=0,
        le=1800,
        title="HVAC release interval (s)",
        description="Seconds between two HVAC release steps (the unit's response shows before the next).",
    )
    continuous_ramp_s: float = Field(
        default=120.0,
        ge=0,
        le=3600,
        title="Continuous ramp (s)",
        description="Ramp battery discharge and charger current back over about this long (0 = at once); "
        "they are restored last and absorb the HVAC rebound meanwhile.",
    )

    def interval_s(self, shed_steps: int) -> float:
        """Seconds between restores when `shed_steps` steps were shed at the end of the event."""
        return max(self.step_interval_s, self.ramp_s / shed_steps if shed_steps > 0 else 0.0)


class Strategy(BaseModel):
    """A load-shedding strategy: ordered stages of actions, and how devices come back."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = Field(default=1, title="Version", description="Strategy format version (1).")
    name: str = Field(pattern=_NAME, title="Name", description="Strategy name, unique in the site.")
    description: str = Field(default="", title="Description", description="What this strategy is for.")
    programs: list[Program] = Field(
        default_factory=lambda: list[Program](["contracted", "realtime"]),
        title="Programs",
        description="Programs this strategy serves: contracted, realtime, price.",
    )
    default: bool = Field(
        default=False,
        title="Default",
        description="Use this strategy when no other names the event's program.",
    )
    stages: list[Stage] = Field(
        min_length=1, title="Stages", description="Stages, in the order they are applied."
    )
    restore: RestorePolicy = Field(
        default_factory=RestorePolicy, title="Restore policy", description="How devices come back."
    )

    @model_validator(mode="after")
    def _unique_stages(self) -> Strategy:
        names = [s.name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stage name {dup[0]!r} is used twice; stage names must be unique")
        return self


class StrategySelection(BaseModel):
    """Which strategy (by name) runs for each program; unnamed programs fall back to `default`."""

    model_config = ConfigDict(extra="forbid")

    contracted: str | None = Field(
        default=None, title="Contracted", description="Strategy for contracted (day-ahead) events."
    )
    realtime: str | None = Field(
        default=None, title="Real-time", description="Strategy for real-time events."
    )
    price: str | None = Field(default=None, title="Price", description="Strategy for price-based events.")
    default: str | None = Field(
        default=None, title="Default", description="Strategy for any program not named above."
    )

    def named(self) -> dict[str, str]:
        """{program or 'default': strategy name} for the entries that are set."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


def _rebuild() -> None:
    # A kind registered or removed: the action union changed. Children before parents.
    for model in (Stage, Strategy):
        model.model_rebuild(force=True)


on_change(_rebuild)
