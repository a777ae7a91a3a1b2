"""The codec against known register vectors: every data type, every byte and word order."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.codec import decode, encode, register_count

# (value, type, registers as a big-endian device sends them)
VECTORS = [
    (True, "bool", [1]),
    (False, "bool", [0]),
    (-2, "int16", [0xFFFE]),
    (12345, "int16", [0x3039]),
    (65535, "uint16", [0xFFFF]),
    (-123456, "int32", [0xFFFE, 0x1DC0]),
    (123456789, "uint32", [0x075B, 0xCD15]),
    (0x0102030405060708, "int64", [0x0102, 0x0304, 0x0506, 0x0708]),
    (-1, "int64", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF]),
    (1.0, "float32", [0x3F80, 0x0000]),
    (-2.5, "float32", [0xC020, 0x0000]),
    (230.5, "float32", [0x4366, 0x8000]),
    (1.0, "float64", [0x3FF0, 0x0000, 0x0000, 0x0000]),
    (-0.1, "float64", [0xBFB9, 0x9999, 0x9999, 0x999A]),
]


def swap_words(regs: list[int]) -> list[int]:
    return list(reversed(regs))


def swap_bytes(regs: list[int]) -> list[int]:
    return [((r & 0xFF) << 8) | (r >> 8) for r in regs]


@pytest.mark.parametrize(("value", "dtype", "regs"), VECTORS)
def test_known_vectors_big_endian(value: object, dtype: str, regs: list[int]) -> None:
    assert decode(regs, dtype) == value  # type: ignore[arg-type]
    assert encode(value, dtype) == regs  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "dtype", "regs"), [v for v in VECTORS if register_count(v[1]) > 1])  # type: ignore[arg-type]
def test_swapped_words(value: object, dtype: str, regs: list[int]) -> None:
    # "float32 with swapped words": the least significant register first.
    wire = swap_words(regs)
    assert decode(wire, dtype, word_order="little") == value  # type: ignore[arg-type]
    assert encode(value, dtype, word_order="little") == wire  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "dtype", "regs"), [v for v in VECTORS if v[1] != "bool"])
def test_swapped_bytes_and_both(value: object, dtype: str, regs: list[int]) -> None:
    wire = swap_bytes(regs)
    assert decode(wire, dtype, byte_order="little") == value  # type: ignore[arg-type]
    assert encode(value, dtype, byte_order="little") == wire  # type: ignore[arg-type]
    both = swap_bytes(swap_words(regs))
    assert decode(both, dtype, byte_order="little", word_order="little") == value  # type: ignore[arg-type]
    assert encode(value, dtype, byte_order="little", word_order="little") == both  # type: ignore[arg-type]


def test_float32_swapped_words_concrete() -> None:
    # 230.5 V as a meter with swapped words sends it: low word 0x8000 first.
    assert decode([0x8000, 0x4366], "float32", word_order="little") == 230.5


def test_strings() -> None:
    assert encode("SunS", "string", length=2) == [0x5375, 0x6E53]
    assert decode([0x5375, 0x6E53], "string") == "SunS"
    # Padded with NULs, which decoding drops; byte order swaps inside each register.
    assert encode("abc", "string", length=3) == [0x6162, 0x6300, 0x0000]
    assert decode([0x6162, 0x6300, 0x0000], "string") == "abc"
    assert decode([0x6261, 0x0063], "string", byte_order="little") == "abc"
    assert encode("abc", "string", byte_order="little", length=2) == [0x6261, 0x0063]
    with pytest.raises(ValueError, match="does not fit"):
        encode("toolong", "string", length=2)


def test_nan_and_inf_decode_as_such() -> None:
    assert math.isnan(float(decode([0x7FC0, 0x0000], "float32")))  # type: ignore[arg-type]
    assert decode([0x7F80, 0x0000], "float32") == math.inf


@pytest.mark.parametrize(
    ("value", "dtype"),
    [
        (70000, "int16"),
        (-1, "uint16"),
        (2**32, "uint32"),
        (2**31, "int32"),
        (2**63, "int64"),
        (1e39, "float32"),
    ],
)
def test_out_of_range_values_are_refused(value: float, dtype: str) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode(value, dtype)  # type: ignore[arg-type]


def test_register_counts_and_short_input() -> None:
    assert [register_count(t) for t in ("bool", "int16", "int32", "float32", "int64", "float64")] == [
        1,
        1,
        2,
        2,
        4,
        4,
    ]
    assert register_count("string", 5) == 5
    with pytest.raises(ValueError):
        register_count("string")
    with pytest.raises(ValueError, match="needs 2 registers"):
        decode([1], "float32")


def test_float_rounds_to_integer_types() -> None:
    assert encode(23.6, "int16") == [24]
    assert encode(-0.4, "int16") == [0]


ORDERS = st.sampled_from(["big", "little"])


@given(st.integers(-(2**31), 2**31 - 1), ORDERS, ORDERS)
def test_int32_round_trip(v: int, bo: str, wo: str) -> None:
    assert (
        decode(encode(v, "int32", byte_order=bo, word_order=wo), "int32", byte_order=bo, word_order=wo) == v
    )  # type: ignore[arg-type]


@given(st.integers(0, 2**64 - 1).map(lambda x: x - 2**63), ORDERS, ORDERS)
def test_int64_round_trip(v: int, bo: str, wo: str) -> None:
    assert (
        decode(encode(v, "int64", byte_order=bo, word_order=wo), "int64", byte_order=bo, word_order=wo) == v
    )  # type: ignore[arg-type]


@given(st.floats(allow_nan=False, width=32), ORDERS, ORDERS)
def test_float32_round_trip(v: float, bo: str, wo: str) -> None:
    assert (
        decode(encode(v, "float32", byte_order=bo, word_order=wo), "float32", byte_order=bo, word_order=wo)
        == v
    )  # type: ignore[arg-type]


@given(st.floats(allow_nan=False), ORDERS, ORDERS)
def test_float64_round_trip(v: float, bo: str, wo: str) -> None:
    assert (
        decode(encode(v, "float64", byte_order=bo, word_order=wo), "float64", byte_order=bo, word_order=wo)
        == v
    )  # type: ignore[arg-type]
