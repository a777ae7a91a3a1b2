"""What the hostile-input tests and the fuzz run feed: every parser that takes bytes from outside.

Each target takes raw bytes and returns what it made of them; the only exception
it may raise is the parser's own refusal (`EventError`, `ConfigError`,
`ValueError` for Modbus registers), and that refusal must say what is wrong.
Anything else escaping a target is a crash.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

from agent.config.load import ConfigError, load_site_config, load_strategy_file
from agent.config.model import MessageSecurity
from agent.events.model import (
    ERROR_CODES,
    MAX_SEQUENCE,
    DrEvent,
    EventError,
    PriceSignal,
    load_json,
    parse_event,
    parse_price,
)
from agent.events.signing import Verifier, sign
from drivers.codec import decode
from drivers.profile import Profile, decode_block, load_profile, plan_reads

REPO = Path(__file__).resolve().parents[2]
TOPIC = "dr/site-a/in/event"
NOW = 1_782_871_200.0  # 2026-07-01T10:00:00+08:00
HMAC_KEY = b"fuzz-key-0123456789abcdef0123456789"

EVENT: dict[str, Any] = {
    "event_id": "js-2026-07-01-a",
    "modification_number": 3,
    "status": "far",
    "program": "realtime",
    "priority": 5,
    "test_event": False,
    "start": "2026-07-01T14:00:00+08:00",
    "duration_s": 900,
    "ramp_up_s": 60,
    "recovery_s": 120,
    "start_after_s": 0,
    "notification_s": 1800,
    "intervals": [
        {"duration_s": 600, "target": {"reduce_pct_of_peak": 10}},
        {"duration_s": 300, "target": {"reduce_kw": 80.5}},
    ],
}
PRICE: dict[str, Any] = {
    "price_id": "cpp-2026-07-01",
    "revision": 2,
    "kind": "critical_peak",
    "currency": "CNY",
    "intervals": [
        {"start": "2026-07-01T14:20:00+08:00", "duration_s": 300, "price": 1.3},
        {"start": "2026-07-01T14:25:00+08:00", "duration_s": 600, "price": -0.5},
    ],
}


def check_event_error(err: EventError) -> None:
    """A refusal the provider can act on: a documented code and a message."""
    assert err.code in ERROR_CODES, err
    assert err.message, err
    assert err.event_id is None or (isinstance(err.event_id, str) and len(err.event_id) <= 128), err
    json.dumps(err.payload())  # always publishable


def check_stored(ev: DrEvent | PriceSignal) -> None:
    """What was accepted can be stored and published (the 10**30 modification_number could not)."""
    n = ev.modification_number if isinstance(ev, DrEvent) else ev.revision
    assert 0 <= n <= MAX_SEQUENCE
    with sqlite3.connect(":memory:") as db:
        db.execute("SELECT ?", (n,))
    json.dumps(ev.model_dump(mode="json"), allow_nan=False)
    if isinstance(ev, DrEvent):
        assert ev.start.utcoffset() is not None and ev.end_ts > ev.start_ts


def event_target(raw: bytes) -> DrEvent | EventError:
    """{root}/in/event as the daemon reads it: size, JSON, then the model."""
    try:
        ev = parse_event(load_json(raw))
    except EventError as err:
        check_event_error(err)
        return err
    check_stored(ev)
    return ev


def price_target(raw: bytes) -> PriceSignal | EventError:
    try:
        price = parse_price(load_json(raw, what="a price signal"))
    except EventError as err:
        check_event_error(err)
        return err
    check_stored(price)
    return price


def make_verifier() -> Verifier:
    """A verifier with an in-memory nonce table (the daemon's is SQLite), HMAC key from the environment."""
    import os

    os.environ["DR_FUZZ_HMAC"] = HMAC_KEY.decode()
    seen: set[str] = set()

    async def check(nonce: str, ts: float, now: float, window: float) -> bool:
        if nonce in seen:
            return True
        seen.add(nonce)
        return False

    return Verifier(MessageSecurity(hmac_key_env="DR_FUZZ_HMAC"), check)


async def envelope_target(verifier: Verifier, raw: bytes) -> DrEvent | EventError | None:
    """A signed message: envelope, signature, replay, then the inner event."""
    try:
        inner = await verifier.open(TOPIC, load_json(raw), NOW)
        return None if inner is None else parse_event(inner)
    except EventError as err:
        check_event_error(err)
        return err


def signed(payload: dict[str, Any] | str, nonce: str = "fuzz-nonce-0001") -> bytes:
    return sign(payload, TOPIC, NOW, hmac_key=HMAC_KEY, nonce=nonce).encode()


def config_target(path: Path, raw: bytes, strategy: bool = False) -> object:
    """A site config (or strategy file) on disk: loaded or refused with file:line:col lines."""
    path.write_bytes(raw)
    try:
        return load_strategy_file(path) if strategy else load_site_config(path)[0]
    except ConfigError as err:
        assert err.lines, err
        for line in err.lines:
            assert line.startswith(str(path)) or line.startswith(str(path.parent)), line
        return err


#: Every shipped profile whose addresses are fixed (SunSpec ones are resolved against the device).
PROFILES: list[Profile] = [
    p
    for p in (load_profile(f.stem) for f in sorted((REPO / "drivers" / "profiles").glob("*.yaml")))
    if not p.needs_resolution
]


def modbus_target(raw: bytes) -> int:
    """Registers as a device might return them (any values, any length) through every shipped map.

    Returns how many points were decoded; ValueError (a short response) is the only refusal.
    """
    regs = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw) - 1, 2)]
    decoded = 0
    for dtype in ("bool", "int16", "uint16", "int32", "uint32", "int64", "float32", "float64", "string"):
        for order in ("big", "little"):
            try:
                decode(regs, dtype, byte_order=order, word_order=order)  # type: ignore[arg-type]
                decoded += 1
            except ValueError as exc:
                assert str(exc)
    for profile in PROFILES:
        for block in plan_reads(profile.points, max_block=profile.max_block, max_gap=profile.read_gap):
            start = (raw[0] if raw else 0) % max(1, len(regs) or 1)
            window = regs[start : start + block.count] if len(raw) % 3 else regs[: block.count]
            try:
                values = decode_block(block, window)
            except ValueError as exc:
                assert "short response" in str(exc)
                continue
            good, rejected = profile.engineering(values)
            for name, v in good.items():
                assert isinstance(v, (str, bool)) or math.isfinite(v), (profile.name, name, v)
            decoded += len(good) + len(rejected)
    return decoded
