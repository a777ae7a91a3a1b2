"""The shipped broker config (config/mosquitto/): TLS, passwords and the ACL, against real Mosquitto.

Only the DR provider may start an event for a site, and only the site's agent may publish its
reports: a client without rights (another site's agent, with valid credentials) cannot start an
event, cannot forge a report and cannot read the site's output; anonymous clients are refused.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.config.model import TlsConfig
from agent.platform.clock import SystemClock
from agent.runtime.daemon import Agent
from drivers.sim.server import free_port
from tests.conftest import REPO, Mosquitto, _spawn_mosquitto, site_config
from tests.helpers import event_payload

pytestmark = pytest.mark.integration

SHIPPED = REPO / "config" / "mosquitto"
PASSWORDS = {"dr-provider": "provider-secret", "demo-plant": "site-secret", "other-site": "other-secret"}


def make_certs(d: Path) -> None:
    """A throwaway CA and a broker certificate for 127.0.0.1 (openssl)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=dr-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "broker.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "broker.crt", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip


def shipped_broker(tmp: Path) -> Mosquitto:
    """Mosquitto with config/mosquitto/mosquitto.conf and acl verbatim, only paths and the port changed."""
    etc = tmp / "etc"
    (etc / "certs").mkdir(parents=True)
    (tmp / "data").mkdir()
    make_certs(etc / "certs")
    shutil.copy(SHIPPED / "acl", etc / "dr-acl")
    passwd = etc / "dr-passwd"
    passwd.touch()
    for user, pw in PASSWORDS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, pw], check=True, capture_output=True)
    port = free_port()
    text = (SHIPPED / "mosquitto.conf").read_text()
    assert "listener 8883\n" in text
    text = text.replace("/etc/mosquitto/", f"{etc}/").replace("/var/lib/mosquitto/", f"{tmp}/data/")
    text = text.replace("listener 8883\n", f"listener {port} 127.0.0.1\n")
    # The test runs as root with files in a private temp dir: do not drop privileges.
    text += "\nuser root\nlog_dest stderr\nlog_type error\n"
    conf = tmp / "mosquitto.conf"
    conf.write_text(text)
    return Mosquitto("127.0.0.1", port, _spawn_mosquitto(conf, port), conf)


def client(broker: Mosquitto, ca: Path, user: str | None, password: str | None, ident: str) -> aiomqtt.Client:
    ctx = ssl.create_default_context(cafile=str(ca))
    return aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=ident,
        username=user,
        password=password,
        tls_context=ctx,
        timeout=5,
    )


async def collect(c: aiomqtt.Client, into: list[tuple[str, dict[str, Any]]]) -> None:
    async for m in c.messages:
        raw = m.payload if isinstance(m.payload, (bytes, str)) else b"{}"
        into.append((str(m.topic), json.loads(raw)))


async def test_acl_only_the_provider_starts_events_only_the_site_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = shipped_broker(tmp_path)
    ca = tmp_path / "etc" / "certs" / "ca.crt"
    cfg = site_config(broker.port, tmp_path, topic_root="dr/demo-plant")
    assert cfg.site.id == "demo-plant"
    monkeypatch.setenv("DR_TEST_ACL_PASSWORD", PASSWORDS["demo-plant"])
    cfg = cfg.model_copy(
        update={
            "mqtt": cfg.mqtt.model_copy(
                update={
                    "topic_root": None,  # the default: dr/<site id>
                    "username": "demo-plant",
                    "password_env": "DR_TEST_ACL_PASSWORD",
                    "tls": TlsConfig(ca_file=str(ca)),
                }
            )
        }
    )
    agent = Agent(cfg, SystemClock(), metrics=False)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    seen: list[tuple[str, dict[str, Any]]] = []
    stolen: list[tuple[str, dict[str, Any]]] = []
    try:
        # Anonymous and wrong-password clients are refused at CONNECT.
        for user, pw in ((None, None), ("dr-provider", "wrong")):
            with pytest.raises(aiomqtt.MqttError):
                async with client(broker, ca, user, pw, f"bad-{user}"):
                    pass
        async with (
            client(broker, ca, "dr-provider", PASSWORDS["dr-provider"], "provider") as provider,
            client(broker, ca, "other-site", PASSWORDS["other-site"], "intruder") as intruder,
        ):
            await provider.subscribe("dr/demo-plant/#", qos=1)
            await intruder.subscribe("dr/demo-plant/#", qos=1)
            watch = asyncio.create_task(collect(provider, seen))
            spy = asyncio.create_task(collect(intruder, stolen))
            deadline = time.monotonic() + 15
            while not any(t == "dr/demo-plant/status" and b.get("state") == "online" for t, b in seen):
                assert time.monotonic() < deadline, "the agent did not come online over TLS"
                await asyncio.sleep(0.05)

            # Someone without rights tries to start an event and to forge the site's report.
            evil = event_payload("evil-1", time.time() + 3600, 1800)
            await intruder.publish("dr/demo-plant/in/event", json.dumps(evil), qos=1)
            await intruder.publish("dr/demo-plant/out/report", json.dumps({"seq": 1, "forged": True}), qos=1)
            # The provider's event goes through.
            legit = event_payload("legit-1", time.time() + 3600, 1800)
            await provider.publish("dr/demo-plant/in/event", json.dumps(legit), qos=1)
            deadline = time.monotonic() + 10
            while not any(t == "dr/demo-plant/out/response" for t, _b in seen):
                assert time.monotonic() < deadline, "no response to the provider's event"
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # time for anything the intruder caused to show up
            watch.cancel()
            spy.cancel()
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        broker.stop()

    responses = [b for t, b in seen if t == "dr/demo-plant/out/response"]
    assert [r["event_id"] for r in responses] == ["legit-1"]
    assert responses[0]["status"] == "ok"  # opt in or out by the contract; here only who may ask matters
    assert set(agent.events) == {"legit-1"}, "the intruder's event reached the agent"
    assert not any(b.get("event_id") == "evil-1" for _t, b in seen)
    assert not any(b.get("forged") for _t, b in seen), "a forged report was delivered"
    # The other site's agent cannot read this site's traffic either.
    assert stolen == []
