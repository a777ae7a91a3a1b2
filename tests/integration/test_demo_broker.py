"""The demo's broker (amqtt, the `demo` extra) carries what the demo relies on, and a demo
without it says what to install and leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import aiomqtt
import pytest

from agent.cli.demo import DemoBroker

pytestmark = pytest.mark.integration


async def _messages(client: aiomqtt.Client, n: int) -> list[aiomqtt.Message]:
    got: list[aiomqtt.Message] = []
    async with asyncio.timeout(10):
        async for m in client.messages:
            got.append(m)
            if len(got) == n:
                return got
    return got


async def test_retained_status_qos1_and_last_will() -> None:
    """A provider that subscribes late still sees the agent's retained status; QoS 1 arrives;
    a process that dies without DISCONNECT leaves its last will as the retained status."""
    broker = DemoBroker()
    port = await broker.start()
    try:
        async with aiomqtt.Client("127.0.0.1", port, identifier="agent") as agent:
            await agent.publish("dr/s/status", b'{"state":"online"}', qos=1, retain=True, timeout=10)
            async with aiomqtt.Client("127.0.0.1", port, identifier="provider") as provider:
                await provider.subscribe("dr/s/status", qos=1)
                (status,) = await _messages(provider, 1)
                assert (status.payload, status.retain) == (b'{"state":"online"}', True)
                await agent.subscribe("dr/s/in/event", qos=1)
                await provider.publish("dr/s/in/event", b"ev-1", qos=1, timeout=10)
                (event,) = await _messages(agent, 1)
                assert (str(event.topic), event.payload, event.qos) == ("dr/s/in/event", b"ev-1", 1)

        dying = (
            "import asyncio, json, os, aiomqtt\n"
            "async def main():\n"
            f"    c = aiomqtt.Client('127.0.0.1', {port}, identifier='dying', will=aiomqtt.Will("
            "'dr/s/status', json.dumps({'state': 'offline'}), qos=1, retain=True))\n"
            "    await c.__aenter__()\n"
            "    await c.publish('dr/s/status', b'{\"state\":\"online\"}', qos=1, retain=True, timeout=10)\n"
            "    os._exit(1)  # no DISCONNECT: the broker must send the will\n"
            "asyncio.run(main())\n"
        )
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", dying)
        assert await proc.wait() == 1
        async with aiomqtt.Client("127.0.0.1", port, identifier="watcher") as watcher:
            await watcher.subscribe("dr/s/status", qos=1)
            async with asyncio.timeout(10):
                async for m in watcher.messages:
                    if json.loads(bytes(m.payload)) == {"state": "offline"}:
                        break
    finally:
        await broker.stop()


def test_demo_without_amqtt_says_what_to_install(tmp_path: Path) -> None:
    """amqtt missing: exit 1 with the install command, and no kept folder left in TMPDIR."""
    run = (
        "import sys\n"
        "sys.modules['amqtt'] = sys.modules['amqtt.broker'] = None  # import fails as if not installed\n"
        "from agent.cli import main\n"
        "sys.exit(main(['demo', '--keep-running']))\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", run], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "pip install 'dr-agent[demo]'" in proc.stderr
    assert list(tmp_path.iterdir()) == []
