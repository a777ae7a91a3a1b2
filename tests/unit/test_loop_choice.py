"""DR_AGENT_LOOP: which event loop `dr-agent run` runs on, and a clear refusal of a wrong value."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import uvloop

from agent.cli.main import LoopChoiceError, event_loop_runner, main


def test_auto_takes_uvloop_when_installed_and_each_name_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, runner in (
        ("", uvloop.run),
        ("auto", uvloop.run),
        ("uvloop", uvloop.run),
        ("AsyncIO", asyncio.run),
    ):
        monkeypatch.setenv("DR_AGENT_LOOP", value)
        assert event_loop_runner() is runner, value


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    monkeypatch.setenv("DR_AGENT_LOOP", "auto")
    assert event_loop_runner() is asyncio.run
    monkeypatch.setenv("DR_AGENT_LOOP", "uvloop")
    with pytest.raises(LoopChoiceError, match=r"uvloop is not installed \(pip install 'dr-agent\[speed\]'\)"):
        event_loop_runner()


def test_run_refuses_an_unknown_loop_before_reading_the_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("DR_AGENT_LOOP", "trio")
    # A config that does not exist: read first, it would be the error (exit 1), not the loop.
    assert main(["run", "-c", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "dr-agent: DR_AGENT_LOOP='trio': expected one of auto, asyncio, uvloop"
