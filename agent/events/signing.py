"""Signed messages from the DR provider: who may steer the site, even on a shared broker.

MQTT 3.1.1 has no message properties, so a signed message is an envelope:

    {"alg": "hmac-sha256", "key_id": "provider", "ts": 1782871200.0,
     "nonce": "2f1c9a0b7d3e4c5f", "payload": "<the event JSON, as text>", "sig": "<base64>"}

The signature covers a version tag, alg, key_id, the topic (so an event
cannot be replayed as a price, or onto another site), ts, nonce and the exact
payload text: no JSON canonicalisation. The verifier refuses a ts further
than `max_skew_s` from now and a nonce already seen within
`replay_window_s` (remembered in SQLite, so a restart does not reopen the
window). Ed25519 needs the optional `cryptography` package.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.config.model import MessageSecurity
from agent.events.model import ID_CHARS, EventError, decode_json

VERSION = "dr-agent-sig-v1"
Alg = Literal["hmac-sha256", "ed25519"]


class SignedEnvelope(BaseModel):
    """A signed event or price message (the payload is the plain message's JSON text)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    alg: Alg = Field(description="hmac-sha256 (shared key) or ed25519 (provider's key pair).")
    key_id: str = Field(
        default="",
        max_length=64,
        pattern=rf"^{ID_CHARS}*$",
        description="Which key signed, if the provider has several.",
    )
    ts: float = Field(ge=0, le=1e11, description="When it was signed, epoch s.")
    nonce: str = Field(
        min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="Unique per message."
    )
    payload: str = Field(min_length=2, description="The event or price message, as JSON text.")
    sig: str = Field(min_length=16, max_length=200, description="Base64 signature over signing_input().")


def signing_input(alg: str, key_id: str, topic: str, ts: float, nonce: str, payload: str) -> bytes:
    """The exact bytes that are signed."""
    return "\n".join([VERSION, alg, key_id, topic, f"{ts:.3f}", nonce, payload]).encode()


def sign(
    payload: dict[str, Any] | str,
    topic: str,
    ts: float,
    *,
    hmac_key: bytes | None = None,
    ed25519_private_key: Any = None,
    key_id: str = "",
    nonce: str | None = None,
) -> str:
    """The envelope (JSON text) for `payload` on `topic`: what the provider publishes."""
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    nonce = nonce or secrets.token_hex(16)
    if hmac_key is not None:
        alg: Alg = "hmac-sha256"
        raw = hmac.new(hmac_key, signing_input(alg, key_id, topic, ts, nonce, text), hashlib.sha256).digest()
    elif ed25519_private_key is not None:
        alg = "ed25519"
        raw = ed25519_private_key.sign(signing_input(alg, key_id, topic, ts, nonce, text))
    else:
        raise ValueError("sign() needs hmac_key or ed25519_private_key")
    env = {"alg": alg, "key_id": key_id, "ts": ts, "nonce": nonce, "payload": text}
    env["sig"] = base64.b64encode(raw).decode()
    return json.dumps(env, separators=(",", ":"))


def load_ed25519_public_key(path: str) -> Any:
    """A PEM public key, or the raw 32-byte key as 64 hex digits."""
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
    except ImportError:  # pragma: no cover - depends on the installation
        raise RuntimeError(
            "Ed25519 signatures need the `cryptography` package: pip install cryptography"
        ) from None
    data = Path(path).read_bytes()
    if b"BEGIN" in data:
        key = load_pem_public_key(data)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path}: not an Ed25519 public key")
        return key
    return Ed25519PublicKey.from_public_bytes(binascii.unhexlify(data.strip()))


#: (nonce, ts, now, window) -> True if the nonce was already seen; records it otherwise.
NonceCheck = Callable[[str, float, float, float], Awaitable[bool]]


class Verifier:
    """Opens envelopes: signature, timestamp and replay checks. Raises EventError with the reason."""

    def __init__(self, cfg: MessageSecurity, seen: NonceCheck) -> None:
        self.cfg = cfg
        self.seen = seen
        self.hmac_key = cfg.hmac_key()
        self.ed_key = (
            load_ed25519_public_key(cfg.ed25519_public_key_file) if cfg.ed25519_public_key_file else None
        )
        if self.hmac_key is None and self.ed_key is None:
            raise RuntimeError(
                f"mqtt.security is set but no key is available: set ${cfg.hmac_key_env} "
                "(or the systemd credential mqtt-hmac-key) or ed25519_public_key_file"
            )

    async def open(self, topic: str, data: dict[str, Any], now: float) -> dict[str, Any] | None:
        """The verified inner message; None if `data` is not an envelope and signing is optional."""
        if "sig" not in data:
            if self.cfg.require_signature:
                plain_id = next(
                    (str(data[k])[:128] for k in ("event_id", "price_id") if isinstance(data.get(k), str)),
                    None,
                )
                raise EventError("unsigned", "this agent requires signed messages (mqtt.security)", plain_id)
            return None
        try:
            env = SignedEnvelope.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise EventError(
                "invalid_field", f"envelope.{field}: {first['msg']}", field=f"envelope.{field}"
            ) from None
        try:
            sig = base64.b64decode(env.sig, validate=True)
        except (binascii.Error, ValueError):
            raise EventError("bad_signature", "sig is not base64", field="envelope.sig") from None
        try:
            msg = signing_input(env.alg, env.key_id, topic, env.ts, env.nonce, env.payload)
        except UnicodeEncodeError:  # "\ud800" in the JSON text: no signer could have encoded it
            raise EventError(
                "invalid_field",
                "envelope.payload: not valid Unicode (a lone surrogate)",
                field="envelope.payload",
            ) from None
        if env.alg == "hmac-sha256":
            if self.hmac_key is None:
                raise EventError("unknown_key", "hmac-sha256 signature, but no HMAC key is configured")
            good = hmac.compare_digest(sig, hmac.new(self.hmac_key, msg, hashlib.sha256).digest())
        else:
            if self.ed_key is None:
                raise EventError("unknown_key", "ed25519 signature, but no Ed25519 public key is configured")
            from cryptography.exceptions import InvalidSignature

            try:
                self.ed_key.verify(sig, msg)
                good = True
            except InvalidSignature:
                good = False
        inner_id = _peek_id(env.payload)
        if not good:
            raise EventError("bad_signature", f"{env.alg} signature does not verify for {topic}", inner_id)
        skew = env.ts - now
        if abs(skew) > self.cfg.max_skew_s:
            when = "old" if skew < 0 else "far in the future"
            raise EventError(
                "stale_message",
                f"signed {abs(skew):.0f} s {'ago' if skew < 0 else 'ahead'}: too {when} "
                f"(max_skew_s {self.cfg.max_skew_s:g})",
                inner_id,
                "envelope.ts",
            )
        if await self.seen(env.nonce, env.ts, now, self.cfg.replay_window_s):
            raise EventError(
                "replay",
                f"nonce {env.nonce} was already used: a replayed message",
                inner_id,
                "envelope.nonce",
            )
        try:
            inner = decode_json(env.payload, "envelope.payload: ")
        except EventError as err:
            err.event_id = inner_id
            raise
        if not isinstance(inner, dict):
            raise EventError("bad_event", "envelope.payload must be a JSON object", inner_id)
        return inner


def _peek_id(text: str) -> str | None:
    try:
        d = decode_json(text)
    except EventError:
        return None
    if isinstance(d, dict):
        for k in ("event_id", "price_id"):
            if isinstance(d.get(k), str):
                return str(d[k])[:128]
    return None
