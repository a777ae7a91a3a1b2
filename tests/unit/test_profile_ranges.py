"""Every point of every shipped profile carries a plausible range with its source cited."""

from __future__ import annotations

import pytest

from drivers.profile import load_profile, shipped_profiles


@pytest.mark.parametrize("name", shipped_profiles())
def test_every_readable_point_has_a_cited_plausible_range(name: str) -> None:
    prof = load_profile(name)
    missing = [
        p.name
        for p in prof.points
        # Strings and bits have no range; a write-only point is never read.
        if p.access != "w" and p.type not in ("string", "bool") and (p.valid is None or not p.valid_source)
    ]
    assert missing == [], f"{name}: points without a plausible range and its source: {missing}"


@pytest.mark.parametrize("name", shipped_profiles())
def test_a_writable_point_can_hold_what_it_reads(name: str) -> None:
    """A restore writes back what was read: a plausible reading must be inside the write range's reach."""
    for p in load_profile(name).points:
        if p.writable and p.valid is not None and p.min is not None and p.max is not None:
            assert p.valid[0] <= p.max and p.valid[1] >= p.min, (name, p.name)


def test_a_reading_outside_its_range_is_rejected_with_the_hint() -> None:
    prof = load_profile("intesis_dk_ac")
    values, rejected = prof.engineering({"setpoint": 24, "room_temperature": 235})  # degC x1 vs x10
    assert (
        "setpoint" not in values and "2.4 degC outside plausible range [16.0, 32.0]" in rejected["setpoint"]
    )
    assert values["room_temperature"] == pytest.approx(23.5)
    assert "DIP switch / register 7" in (prof.point("setpoint").hint or "")
