"""Signed envelopes: HMAC and Ed25519, topic binding, tampering, clock skew and replays."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.config.model import MessageSecurity
from agent.events.model import EventError
from agent.events.signing import Verifier, sign

TOPIC = "dr/site-a/in/event"
NOW = 1_782_871_200.0
KEY = b"shared-secret-of-at-least-32-bytes!!"
EVENT = {
    "event_id": "e1",
    "start": "2026-07-01T14:00:00+08:00",
    "duration_s": 1800,
    "target": {"reduce_kw": 50},
}


def verifier(monkeypatch: pytest.MonkeyPatch, **over: Any) -> Verifier:
    monkeypatch.setenv("DR_TEST_HMAC", KEY.decode())
    seen: dict[str, float] = {}

    async def check(nonce: str, ts: float, now: float, window: float) -> bool:
        for n in [n for n, t in seen.items() if t < now - window]:
            del seen[n]
        if nonce in seen:
            return True
        seen[nonce] = ts
        return False

    return Verifier(MessageSecurity(hmac_key_env="DR_TEST_HMAC", **over), check)


async def open_(v: Verifier, env: str, topic: str = TOPIC, now: float = NOW) -> dict[str, Any] | None:
    return await v.open(topic, json.loads(env), now)


async def test_hmac_round_trip_and_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    v = verifier(monkeypatch)
    env = sign(EVENT, TOPIC, NOW, hmac_key=KEY)
    assert await open_(v, env) == EVENT
    with pytest.raises(EventError) as e:
        await open_(v, env, now=NOW + 5)
    assert (e.value.code, e.value.event_id) == ("replay", "e1")


@pytest.mark.parametrize(
    ("ts", "ok"), [(NOW - 300, True), (NOW - 301, False), (NOW + 300, True), (NOW + 301, False)]
)
async def test_skew_limit_inclusive(monkeypatch: pytest.MonkeyPatch, ts: float, ok: bool) -> None:
    v = verifier(monkeypatch)
    env = sign(EVENT, TOPIC, ts, hmac_key=KEY)
    if ok:
        assert await open_(v, env) == EVENT
    else:
        with pytest.raises(EventError) as e:
            await open_(v, env)
        assert e.value.code == "stale_message"


async def test_tampered_payload_wrong_key_and_other_topic_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    v = verifier(monkeypatch)
    env = json.loads(sign(EVENT, TOPIC, NOW, hmac_key=KEY))
    env["payload"] = env["payload"].replace("50", "500")
    with pytest.raises(EventError) as e:
        await v.open(TOPIC, env, NOW)
    assert e.value.code == "bad_signature"
    for raw, topic in (
        (sign(EVENT, TOPIC, NOW, hmac_key=b"another key"), TOPIC),
        (sign(EVENT, "dr/site-b/in/event", NOW, hmac_key=KEY), TOPIC),  # signed for another site
        (sign(EVENT, "dr/site-a/in/price", NOW, hmac_key=KEY), TOPIC),  # signed for another topic
    ):
        with pytest.raises(EventError) as e:
            await open_(v, raw, topic)
        assert e.value.code == "bad_signature"


async def test_unsigned_refused_unless_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EventError) as e:
        await verifier(monkeypatch).open(TOPIC, EVENT, NOW)
    assert e.value.code == "unsigned"
    assert await verifier(monkeypatch, require_signature=False).open(TOPIC, EVENT, NOW) is None


async def test_ed25519(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    priv = Ed25519PrivateKey.generate()
    pem = priv.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "provider.pub").write_bytes(pem)
    v = verifier(monkeypatch, ed25519_public_key_file=str(tmp_path / "provider.pub"))
    assert await open_(v, sign(EVENT, TOPIC, NOW, ed25519_private_key=priv)) == EVENT
    other = Ed25519PrivateKey.generate()
    with pytest.raises(EventError) as e:
        await open_(v, sign(EVENT, TOPIC, NOW, ed25519_private_key=other))
    assert e.value.code == "bad_signature"


def test_replay_window_must_cover_twice_the_skew() -> None:
    with pytest.raises(ValueError, match="replay_window_s"):
        MessageSecurity(max_skew_s=300, replay_window_s=500)


def test_no_key_is_a_startup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DR_TEST_NOKEY", raising=False)
    with pytest.raises(RuntimeError, match="DR_TEST_NOKEY"):
        Verifier(MessageSecurity(hmac_key_env="DR_TEST_NOKEY"), lambda *a: None)  # type: ignore[arg-type,return-value]
