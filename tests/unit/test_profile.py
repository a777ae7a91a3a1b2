"""Profiles as data: validation, read coalescing, scaling and plausibility, write range checks."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.device import Device
from drivers.profile import (
    Point,
    Profile,
    decode_block,
    encode_write,
    load_profile,
    plan_reads,
    shipped_profiles,
)
from drivers.registry import kinds


def profile(points: list[dict[str, Any]], **extra: Any) -> Profile:
    return Profile.model_validate({"version": 1, "name": "t", "kind": "meter", "points": points, **extra})


def hr(name: str, address: int, type_: str = "uint16", **kw: Any) -> dict[str, Any]:
    return {"name": name, "function": "holding_register", "address": address, "type": type_, **kw}


def test_every_shipped_profile_loads_and_fits_its_kind() -> None:
    names = shipped_profiles()
    assert {
        "eastron_sdm630",
        "vestel_evc04",
        "sunspec_storage",
        "intesis_dk_ac",
        "intesis_dali_group",
    } <= set(names)
    registry = kinds()
    for name in names:
        p = load_profile(name)
        assert p.name == name, f"{name}: name field differs from the file name"
        assert p.kind in registry, f"{name}: unknown kind {p.kind}"
        assert p.source, f"{name}: no source cited"
        cls: type[Device] = registry[p.kind].device
        assert cls.check_profile(p) == [], f"{name}: {cls.check_profile(p)}"
        if not p.needs_resolution:
            blocks = plan_reads(
                [q for q in p.points if q.access != "w"], max_block=p.max_block, max_gap=p.max_gap
            )
            assert all(b.count <= p.max_block for b in blocks)


def test_coalescing_merges_neighbours_and_respects_gap_and_block_limits() -> None:
    pts = [Point(**hr(f"p{a}", a, "float32")) for a in (0, 2, 4, 20, 22)]
    blocks = plan_reads(pts, max_block=125, max_gap=8)
    assert [(b.address, b.count) for b in blocks] == [(0, 6), (20, 4)]
    assert [(b.address, b.count) for b in plan_reads(pts, max_block=125, max_gap=20)] == [(0, 24)]
    # max_block splits even contiguous points.
    assert [(b.address, b.count) for b in plan_reads(pts[:3], max_block=4, max_gap=8)] == [(0, 4), (4, 2)]
    # Different tables never merge.
    mixed = [Point(**hr("h", 0)), Point(name="i", function="input_register", address=1)]
    assert len(plan_reads(mixed, max_block=125, max_gap=8)) == 2


def test_sdm630_is_read_in_far_fewer_requests_than_points() -> None:
    p = load_profile("eastron_sdm630")
    blocks = plan_reads(p.points, max_block=p.max_block, max_gap=p.max_gap)
    assert len(p.points) >= 3 * len(blocks)


def test_decode_block_returns_raw_values_at_their_offsets() -> None:
    pts = [Point(**hr("a", 10, "int16")), Point(**hr("b", 12, "float32", word_order="little"))]
    (block,) = plan_reads(pts, max_block=125, max_gap=8)
    raw = decode_block(block, [0xFFFF, 0, 0x8000, 0x4366])
    assert raw == {"a": -1, "b": 230.5}
    with pytest.raises(ValueError, match="short response"):
        decode_block(block, [0, 0])


def test_engineering_scales_and_rejects_bad_values() -> None:
    p = profile(
        [
            hr("temp", 0, "int16", scale=0.1, nodata=[-32768], valid=[-40, 80]),
            hr("w", 1, "int16", scale_factor="w_sf", scale=0.001),
            hr("w_sf", 2, "int16"),
            hr("f", 3, "float32"),
            hr("off", 5, "uint16", scale=0.5, offset=-10),
        ]
    )
    values, rejected = p.engineering({"temp": 215, "w": 1234, "w_sf": 1, "f": 1.5, "off": 40})
    assert values == {
        "temp": pytest.approx(21.5),
        "w": pytest.approx(12.34),
        "w_sf": 1,
        "f": 1.5,
        "off": 10.0,
    }
    assert rejected == {}
    values, rejected = p.engineering({"temp": -32768, "w": 5, "w_sf": -32768, "f": math.nan, "off": 0})
    assert set(rejected) == {"temp", "w", "f"}
    assert "temp" not in values and "f" not in values and values["off"] == -10.0
    _values, rejected = p.engineering({"temp": 900, "f": math.inf})
    assert "plausible" in rejected["temp"] and "finite" in rejected["f"]


def test_sunspec_profiles_treat_unimplemented_values_as_no_data() -> None:
    p = load_profile("sunspec_storage")
    _values, rejected = p.engineering({"W": -0x8000, "W_SF": 0, "ChaState": 0xFFFF, "ChaState_SF": 0})
    assert set(rejected) == {"W", "ChaState"}


def test_write_range_is_checked_before_encoding() -> None:
    sp = Point(**hr("sp", 4, "int16", scale=0.1, access="rw", min=16, max=32))
    assert encode_write(sp, 23.5) == [235]
    with pytest.raises(ValueError, match=r"outside the allowed range \[16.0, 32.0\]"):
        encode_write(sp, 35)
    with pytest.raises(ValueError, match="not a finite number"):
        encode_write(sp, math.nan)
    with pytest.raises(ValueError, match="not writable"):
        encode_write(Point(**hr("ro", 0)), 1)
    # A value in range for the point but too big for its type is refused too.
    wide = Point(**hr("wide", 0, "int16", access="rw"))
    with pytest.raises(ValueError, match="does not fit"):
        encode_write(wide, 40000)
    # Scale factors apply on the way out: 40 kW with sf=1 and scale 0.001 -> 4000 (x10 W).
    w = Point(**hr("w", 0, "int32", access="rw", scale=0.001, scale_factor="sf"))
    assert encode_write(w, 40.0, sf=1) == [0, 4000]


@pytest.mark.parametrize(
    ("points", "extra", "message"),
    [
        ([hr("a", 0), hr("a", 1)], {}, "duplicate point name"),
        ([hr("a", 0, role="power_kw"), hr("b", 1, role="power_kw")], {}, "duplicate role"),
        ([{"name": "c", "function": "coil", "address": 0, "type": "uint16"}], {}, "must have type bool"),
        ([{"name": "i", "function": "input_register", "address": 0, "access": "rw"}], {}, "read-only"),
        ([hr("s", 0, "string")], {}, "need length"),
        ([hr("m", 0, access="rw", min=5, max=1)], {}, "above max"),
        ([{"name": "x", "function": "holding_register"}], {}, "needs address"),
        ([hr("w", 0, scale_factor="nope")], {}, "is not a point"),
        ([hr("w", 0, access="rw", then_write={"en": 1}), hr("en", 1)], {}, "not a writable point"),
        ([hr("w", 0)], {"watchdog": {"point": "w"}}, "watchdog point"),
        ([{"name": "w", "model": 103, "model_offset": 12}], {}, "need `sunspec:`"),
        ([hr("w", 0)], {"sunspec": {}}, "give model and model_offset"),
        ([hr("w", 0)], {"max_block": 200}, "less than or equal to 125"),
    ],
)
def test_invalid_profiles_are_refused_with_a_reason(
    points: list[dict[str, Any]], extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        profile(points, **extra)


def test_resolution_and_shift() -> None:
    p = load_profile("sunspec_storage")
    assert p.needs_resolution
    r = p.resolved({1: 40004, 103: 40072, 124: 40124, 704: 40150})
    assert r.point("W").address == 40072 + 12
    assert r.point("WSet_SF").address == 40150 + 53  # published model 704 (57 is PFWInj.PF)
    with pytest.raises(ValueError, match="no SunSpec model 704"):
        p.resolved({1: 40004, 103: 40072, 124: 40124})
    dali = load_profile("intesis_dali_group")
    assert dali.shifted(60).point("arc_power_level").address == 6460
    with pytest.raises(ValueError, match="outside"):
        dali.shifted(60000)
