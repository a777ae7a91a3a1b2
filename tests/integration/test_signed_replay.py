"""Signed messages over real Mosquitto: a signed event is taken; its replay, a stale or future
signature, a tampered or unsigned message and a stale event are refused with an error reply; the
replay window survives an agent restart."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.config.model import MessageSecurity, SiteConfig
from agent.events.signing import sign
from agent.platform.clock import SystemClock
from agent.runtime.daemon import Agent
from tests.conftest import Mosquitto, site_config
from tests.helpers import Observer, event_payload

pytestmark = pytest.mark.integration

KEY = "test-hmac-key-0123456789abcdef"


async def run_agent(cfg: SiteConfig) -> tuple[Agent, asyncio.Event, asyncio.Task[None]]:
    agent = Agent(cfg, SystemClock(), metrics=False)
    stop = asyncio.Event()
    return agent, stop, asyncio.create_task(agent.run(stop))


async def test_signed_events_replay_and_stale_are_refused(
    mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DR_TEST_REPLAY_KEY", KEY)
    ed = Ed25519PrivateKey.generate()
    (tmp_path / "provider.pub").write_bytes(
        ed.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    cfg = site_config(mosquitto.port, tmp_path)
    sec = MessageSecurity(
        hmac_key_env="DR_TEST_REPLAY_KEY",
        ed25519_public_key_file=str(tmp_path / "provider.pub"),
        max_skew_s=30,
        replay_window_s=120,
    )
    cfg = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"security": sec})})
    topic = f"{cfg.topic_root}/in/event"
    now = time.time()
    good = sign(event_payload("sig-1", now + 3600, 900), topic, now, hmac_key=KEY.encode())
    good_ed = sign(event_payload("sig-2", now + 7200, 900), topic, now, ed25519_private_key=ed)
    tampered = json.loads(sign(event_payload("sig-3", now + 3600, 900), topic, now, hmac_key=KEY.encode()))
    assert '"duration_s":900' in tampered["payload"]
    tampered["payload"] = tampered["payload"].replace('"duration_s":900', '"duration_s":9000')
    cases = [
        # (label, raw, expected error code or None when accepted)
        ("signed hmac", good, None),
        ("signed ed25519", good_ed, None),
        ("replay", good, "replay"),
        ("unsigned", json.dumps(event_payload("sig-4", now + 3600, 900)), "unsigned"),
        ("tampered", json.dumps(tampered), "bad_signature"),
        ("old signature", sign(event_payload("sig-5", now + 3600, 900), topic, now - 120, hmac_key=KEY.encode()), "stale_message"),
        ("future signature", sign(event_payload("sig-6", now + 3600, 900), topic, now + 120, hmac_key=KEY.encode()), "stale_message"),
        ("signed for the price topic", sign(event_payload("sig-7", now + 3600, 900), f"{cfg.topic_root}/in/price", now, hmac_key=KEY.encode()), "bad_signature"),
        ("stale event, fresh signature", sign(event_payload("sig-8", now - 7200, 900), topic, now, hmac_key=KEY.encode()), "stale_event"),
        ("too large", "x" * (cfg.mqtt.max_payload_bytes + 1), "too_large"),
    ]  # fmt: skip
    agent, stop, task = await run_agent(cfg)
    try:
        async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root) as obs:
            await obs.wait_online()
            for _label, raw, _code in cases:
                await obs.publish("in/event", raw)
            n_err = sum(1 for c in cases if c[2])
            await obs.wait_for(
                lambda t, b: len(obs.on("out/error")) >= n_err and len(obs.on("out/response")) >= 2, 15
            )
            await asyncio.sleep(0.3)
            errors = obs.on("out/error")
            responses = obs.on("out/response")
        stop.set()
        await asyncio.wait_for(task, 15)

        # A restarted agent still remembers the nonce: the replay is refused again.
        agent2, stop2, task2 = await run_agent(cfg)
        try:
            async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root, "obs-2") as obs2:
                await obs2.wait_online()
                await obs2.publish("in/event", good)
                err2 = await obs2.wait_for(lambda t, b: t.endswith("/out/error"), 10)
        finally:
            stop2.set()
            await asyncio.wait_for(task2, 15)
    finally:
        stop.set()
        if not task.done():
            await asyncio.wait_for(task, 15)

    assert [r["event_id"] for r in responses] == ["sig-1", "sig-2"]
    assert [e["code"] for e in errors] == [c for _l, _r, c in cases if c], errors
    for e in errors:
        assert e["status"] == "error" and e["error"]
    replay = errors[0]
    assert replay["event_id"] == "sig-1" and "already used" in replay["error"]
    assert set(agent.events) == {"sig-1", "sig-2"}
    assert err2["code"] == "replay"
    assert set(agent2.events) == {"sig-1", "sig-2"}
