"""A read block's compiled decoder gives what decoding each point on its own gives, for every map."""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import pytest

from drivers.profile import Engineering, Profile, decode_raw, load_profile, plan_reads, shipped_profiles
from drivers.sunspec import layout, model_starts


def profile(points: list[dict[str, Any]], **extra: Any) -> Profile:
    return Profile.model_validate({"version": 1, "name": "t", "kind": "meter", "points": points, **extra})


def odd_map() -> Profile:
    """Every type and order, holes, and points that overlap (one register read two ways)."""
    pts: list[dict[str, Any]] = []
    addr = 0
    types = ("float32", "int16", "uint32", "int32", "int64", "float64", "uint16", "string", "bool")
    for i, t in enumerate(types * 2):
        p: dict[str, Any] = {"name": f"p{i}", "function": "input_register", "address": addr, "type": t}
        if t == "string":
            p["length"] = 3
        if i >= len(types):  # the second round: swapped words and bytes
            p.update(word_order="little", byte_order="little" if i % 2 else "big")
        pts.append(p)
        addr += {"int16": 1, "uint16": 1, "bool": 1, "string": 3, "int64": 4, "float64": 4}.get(t, 2) + i % 2
    pts.append({"name": "alias_hi", "function": "input_register", "address": 0, "type": "uint16"})
    pts.append({"name": "alias_lo", "function": "input_register", "address": 1, "type": "int16"})
    pts += [{"name": f"c{a}", "function": "coil", "address": a, "type": "bool"} for a in (0, 3, 17)]
    return profile(pts, reads_unmapped=True)


def readable_profiles() -> list[Profile]:
    out = [odd_map()]
    for name in shipped_profiles():
        p = load_profile(name)
        if p.needs_resolution:
            models = sorted({q.model for q in p.points if q.model is not None})
            p = p.resolved(model_starts(layout(models)[1]))
        out.append(p)
    return out


@pytest.mark.parametrize("prof", readable_profiles(), ids=lambda p: p.name)
def test_compiled_decoder_matches_point_by_point(prof: Profile) -> None:
    rng = random.Random(prof.name)
    blocks = plan_reads(
        [p for p in prof.points if p.access != "w"], max_block=prof.max_block, max_gap=prof.read_gap
    )
    assert blocks
    for block in blocks:
        for _ in range(20):
            if block.function in ("coil", "discrete_input"):
                regs: list[Any] = [rng.random() < 0.5 for _ in range(block.count)]
            else:
                regs = [
                    rng.choice((0, 0xFFFF, 0x8000, 0x7FC0, rng.randrange(0x10000)))
                    for _ in range(block.count)
                ]
            got = block.decoder(regs)
            want = {p.name: decode_raw(p, regs[p.addr - block.address :][: p.count]) for p in block.points}
            assert got.keys() == want.keys()
            for name, v in want.items():
                # NaN != NaN: compare the bits of floats
                same = (
                    struct.pack(">d", v) == struct.pack(">d", got[name])
                    if isinstance(v, float)
                    else v == got[name]
                )
                assert same and type(v) is type(got[name]), (name, v, got[name])
        with pytest.raises(ValueError, match="short response"):
            block.decoder(regs[:-1])


def test_plain_points_reject_nan_infinity_and_implausible_values() -> None:
    prof = profile(
        [
            {"name": "f", "address": 0, "type": "float32"},
            {"name": "kw", "address": 2, "type": "float32", "scale": 0.001, "valid": [-50, 50], "unit": "kW"},
            {"name": "n", "address": 4, "type": "int16", "offset": -40, "valid": [-40, 100], "unit": "degC"},
        ]
    )
    check = Engineering(prof)
    values, rejected = check({"f": math.nan, "kw": 60000.0, "n": 10})
    assert values == {"n": -30}
    assert rejected == {"f": "not a finite number (nan)", "kw": "60 kW outside plausible range [-50.0, 50.0]"}
    values, rejected = check({"f": math.inf, "kw": -math.inf, "n": 141})
    assert values == {}
    assert rejected == {
        "f": "not a finite number (inf)",
        "kw": "not a finite number (-inf)",
        "n": "101 degC outside plausible range [-40.0, 100.0]",
    }
    values, rejected = check({"f": 1.5, "kw": 1500.0})
    assert values == {"f": 1.5, "kw": 1.5} and rejected == {}
    plain_int = Engineering(profile([{"name": "i", "address": 0, "type": "int16"}]))({"i": 40})[0]["i"]
    assert plain_int == 40 and isinstance(plain_int, int)  # an unscaled int stays an int
