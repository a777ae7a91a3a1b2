"""Capability checks (`isinstance(dev, Dimmable)`) remember the classes that implement them, and
still answer from the object itself for anything else."""

from __future__ import annotations

from types import SimpleNamespace

from drivers import capabilities
from drivers.capabilities import Dimmable, WriteLimited


class _Zone:
    def level_pct(self) -> float | None:
        return 70.0

    def min_level_pct(self) -> float:
        return 40.0


class _Half:
    def level_pct(self) -> float | None:
        return 70.0


def test_a_class_with_every_member_is_remembered_and_others_are_checked_in_full() -> None:
    assert isinstance(_Zone(), Dimmable)
    assert _Zone in capabilities._IMPLEMENTERS[Dimmable]
    assert isinstance(_Zone(), Dimmable)  # from what was remembered
    assert not isinstance(_Zone(), WriteLimited)
    assert not isinstance(_Half(), Dimmable)
    # Members that are the object's own attributes: answered each time, never remembered by type.
    assert isinstance(SimpleNamespace(level_pct=lambda: 1.0, min_level_pct=lambda: 0.0), Dimmable)
    assert not isinstance(SimpleNamespace(level_pct=lambda: 1.0), Dimmable)
    assert SimpleNamespace not in capabilities._IMPLEMENTERS[Dimmable]
