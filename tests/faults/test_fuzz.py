"""A bounded fuzz run over raw bytes: every parser that takes input from outside, no crash, no hang.

Seeded mutations of valid inputs (bit flips, hostile tokens such as NaN,
1e999, 10**30, deep brackets, control characters and wildcards, cut, repeated
and spliced pieces) go through the event and price parsers, the signed
envelope, the config and strategy loader and the Modbus decoder. A target may
only return a result or its own refusal with a clear message (tests/faults/
targets.py says what that is per target); anything else, or an input taking
longer than HANG_S, is a crash and is listed with the input that caused it.

CI runs a fixed number of inputs per target (under a minute in all, the same
inputs every run). A longer local run, with fresh inputs each time:

    DR_AGENT_FUZZ_SECONDS=600 DR_AGENT_FUZZ_SEED=$RANDOM \\
        .venv/bin/python -m pytest tests/faults/test_fuzz.py -s -p no:cacheprovider

runs every target for that many seconds and prints what it ran (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.events.model import DrEvent, EventError, PriceSignal
from tests.conftest import DEMO_CONFIG
from tests.faults.targets import (
    EVENT,
    PRICE,
    REPO,
    config_target,
    envelope_target,
    event_target,
    make_verifier,
    modbus_target,
    price_target,
    signed,
)

SECONDS = float(os.environ.get("DR_AGENT_FUZZ_SECONDS", "0"))
SEED = int(os.environ.get("DR_AGENT_FUZZ_SEED", "20260701"))
#: An input that takes this long is a hang (the slowest honest input, a full config load, takes ~0.1 s).
HANG_S = 10.0

pytestmark = pytest.mark.timeout(max(120.0, 2 * SECONDS + 60))

TOKENS = [
    b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"1" + b"0" * 30, b"9" * 5000, b"-1", b"0",
    b"-0.0", b"4294967296", b"true", b"null", b'"1800"', b'"yes"', b"12345", b'""', b"[]", b"{}",
    b"[" * 50, b"{" * 50, b"]" * 50, b'"\\u0000"', b'"\\ud800"', b'"a/+/#"', b'"\xe9v\xc3\xa9nement"',
    b"\x00", b"\xff\xfe", b"\\", b'"', b",", b":", b"\n", b"\xe2\x80\xae",
    b'"2026-07-01T14:00:00"', b'"1999-01-01T00:00:00Z"', b'"2026-02-30T14:00:00+08:00"',
    b"&a [*a]", b"*a", b"!!python/object:os.system", b"<<: *a", b"---", b"? ", b"- ", b"  ", b"\t", b".nan", b".inf",
]  # fmt: skip


def mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    """One to four random edits of `data`."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        n = len(out)
        pos = rng.randrange(n + 1)
        op = rng.randrange(9)
        if op == 0 and n:
            out[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            out[rng.randrange(n)] = rng.randrange(256)
        elif op in (2, 3):
            out[pos:pos] = rng.choice(TOKENS)
        elif op == 4 and n:  # replace a value-sized run with a token
            end = min(n, pos + rng.randint(1, 12))
            out[pos:end] = rng.choice(TOKENS)
        elif op == 5 and n:
            del out[pos : pos + rng.randint(1, 64)]
        elif op == 6 and n:
            a = rng.randrange(n)
            piece = out[a : a + rng.randint(1, 64)]
            out[pos:pos] = piece * rng.randint(1, 8)
        elif op == 7:
            other = rng.choice(corpus)
            cut = rng.randrange(len(other) + 1)
            out = out[:pos] + bytearray(other[cut:])
        else:
            k = rng.choice([1, 2, 15, 16, 17, 100, 3000])
            out = bytearray(b"[" * k) + out + bytearray(b"]" * k)
    return bytes(out)


class Hang(Exception):
    pass


@contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    def ring(signum: int, frame: Any) -> None:
        raise Hang(f"no answer within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def fuzz(
    name: str, target: Callable[[bytes], object], corpus: list[bytes], examples: int, seed: int = SEED
) -> dict[str, int]:
    """Run `target` over mutated inputs: `examples` of them, or DR_AGENT_FUZZ_SECONDS when set."""
    rng = random.Random(f"{name}:{seed}")
    crashes: list[str] = []
    counts = {"inputs": 0, "accepted": 0, "refused": 0}
    t0 = time.monotonic()
    deadline = t0 + SECONDS
    while (time.monotonic() < deadline) if SECONDS else (counts["inputs"] < examples):
        raw = mutate(rng, rng.choice(corpus), corpus)
        counts["inputs"] += 1
        try:
            with watchdog(HANG_S):
                got = target(raw)
        except Exception as exc:  # every escape (RecursionError, Hang, ...) is a finding
            crashes.append(f"{type(exc).__name__}: {str(exc)[:200]} <- {raw[:300]!r}")
            continue
        refused = isinstance(got, (EventError, Exception)) or got is None
        counts["refused" if refused else "accepted"] += 1
    print(
        f"\nfuzz target={name} seed={seed} inputs={counts['inputs']} accepted={counts['accepted']} "
        f"refused={counts['refused']} crashes={len(crashes)} seconds={time.monotonic() - t0:.1f}"
    )
    assert not crashes, f"{len(crashes)} crashes in {name}:\n" + "\n".join(crashes[:10])
    return counts


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


EVENT_CORPUS = [
    _json(EVENT),
    _json({k: v for k, v in EVENT.items() if k != "intervals"} | {"target": {"cap_kw": 800}}),
    _json(
        {"event_id": "e-1", "start": "2026-07-01T14:00:00Z", "duration_s": 1800, "target": {"reduce_kw": 50}}
    ),
    _json({**EVENT, "status": "cancelled", "modification_number": 4}),
]


def test_fuzz_event_parser() -> None:
    counts = fuzz("event", event_target, EVENT_CORPUS, examples=120_000)
    assert counts["accepted"] > 0 and counts["refused"] > 0  # the mutations reach both sides


def test_fuzz_price_parser() -> None:
    corpus = [_json(PRICE), _json({**PRICE, "kind": "realtime", "intervals": PRICE["intervals"][:1]})]
    counts = fuzz("price", price_target, corpus, examples=60_000)
    assert counts["accepted"] > 0 and counts["refused"] > 0


def test_fuzz_signed_envelope() -> None:
    verifier = make_verifier()
    loop = asyncio.new_event_loop()
    nonce = iter(range(10**9))

    def target(raw: bytes) -> DrEvent | EventError | None:
        return loop.run_until_complete(envelope_target(verifier, raw))

    # Validly signed, each with its own nonce, so a mutation of the payload text inside is
    # not caught by the signature alone: the mutator also re-signs what it produced.
    corpus = [signed(EVENT, f"nonce-{next(nonce):08d}") for _ in range(4)]

    def resigning(raw: bytes) -> DrEvent | EventError | None:
        got = target(raw)
        try:
            inner = json.loads(raw)["payload"]
        except (ValueError, KeyError, TypeError, RecursionError):
            return got
        if isinstance(inner, str) and not any("\ud800" <= c <= "\udfff" for c in inner):
            target(signed(inner, f"nonce-{next(nonce):08d}"))  # a signer cannot encode a lone surrogate
        return got

    try:
        fuzz("envelope", resigning, corpus, examples=24_000)
    finally:
        loop.close()


def test_fuzz_config_loader(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    counts = fuzz("config", lambda raw: config_target(path, raw), [DEMO_CONFIG.read_bytes()], examples=1_200)
    assert counts["accepted"] > 0 and counts["refused"] > 0


def test_fuzz_strategy_loader(tmp_path: Path) -> None:
    path = tmp_path / "s.strategy.yaml"
    corpus = [p.read_bytes() for p in sorted((REPO / "strategies" / "examples").glob("*.yaml"))]
    fuzz("strategy", lambda raw: config_target(path, raw, strategy=True), corpus, examples=2_400)


def test_fuzz_modbus_decoder() -> None:
    corpus = [bytes(range(256)), b"\x7f\xc0\x00\x00" * 32, b"\xff" * 64, b"\x00\x01" * 100, b""]
    fuzz("modbus", modbus_target, corpus, examples=9_000)


def test_accepted_inputs_are_models_not_coercions() -> None:
    """The fuzz counts 'accepted' only for real models: a parser returning anything else is caught here."""
    assert isinstance(event_target(EVENT_CORPUS[0]), DrEvent)
    assert isinstance(price_target(_json(PRICE)), PriceSignal)
