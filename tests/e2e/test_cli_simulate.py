"""`dr-agent simulate` on every shipped example: the real controller reaches the band, no limit is breached."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest

from agent.cli import cmd_simulate
from tests.helpers import dr_agent

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "strategies" / "examples"
SITES = sorted(p for p in EXAMPLES.glob("*.yaml") if not p.name.endswith(".strategy.yaml"))


def test_every_example_has_an_event() -> None:
    assert {p.stem for p in SITES} == {"factory", "office", "cold-storage"}
    for site in SITES:
        assert (EXAMPLES / f"{site.stem}.event.json").is_file()


@pytest.mark.parametrize("site", SITES, ids=lambda p: p.stem)
def test_example_reaches_its_band(site: Path, tmp_path: Path) -> None:
    png = tmp_path / f"{site.stem}.png"
    proc = subprocess.run(
        [
            *dr_agent(),
            "simulate",
            "-c",
            str(site),
            "--event",
            str(EXAMPLES / f"{site.stem}.event.json"),
            "--json",
            "--png",
            str(png),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, "--json prints exactly one JSON object"
    out = json.loads(lines[0])
    assert out["settled"] is True and out["opt"] == "in"
    assert out["in_band_fraction"] >= 0.95, out["settlement"]
    assert out["limit_violations"] == 0, out["violations"]
    lo, hi = out["band_kw"]
    assert lo <= out["verified_reduction_kw"] <= hi
    assert out["actions"] and out["actions"][0]["op"] == "shed"
    if site.stem == "cold-storage":
        # Compressor racks stop only for their short window, then another takes over.
        whys = [a["why"] for a in out["actions"] if a["op"] == "release"]
        assert "max_shed_s 600 s reached" in whys
    # Every shed step comes back: as many releases as sheds.
    ops = [a["op"] for a in out["actions"]]
    assert ops.count("shed") == ops.count("release")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_human_timeline_names_steps_and_settlement(tmp_path: Path) -> None:
    event = json.loads((EXAMPLES / "factory.event.json").read_text())
    event["duration_s"] = 600  # a short event keeps the test quick; the same code path
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    proc = subprocess.run(
        [*dr_agent(), "simulate", "-c", str(EXAMPLES / "factory.yaml"), "--event", str(path)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "strategy factory-contracted" in text and "band 75-300 kW" in text
    assert "+ lighting/1:lights-yard" in text or "+ lighting/2:lights-hall" in text
    assert "event ended: staggered restore" in text
    assert "settlement: verified" in text and "limit violations 0" in text
    # Steps added in one tick share one reason, printed once, not once per step.
    for line in text.splitlines():
        if " + " in line:
            parts = line.split("   ")[-1].strip().split("; ")
            assert len(parts) == len(set(parts)), line
    # A rehearsal is quiet: nothing on stderr.
    assert proc.stderr == ""


def test_png_without_matplotlib_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cmd_simulate, "charts_available", lambda: False)
    args = argparse.Namespace(
        config=str(EXAMPLES / "factory.yaml"),
        event=str(EXAMPLES / "factory.event.json"),
        seed=1,
        json=False,
        png="/nonexistent/x.png",
        tail_min=60.0,
    )
    assert cmd_simulate.run(args) == 2
    err = capsys.readouterr().err
    assert "pip install 'dr-agent[charts]'" in err


def test_bad_event_file_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "event.json"
    bad.write_text(
        '{"event_id": "x", "start": "2026-07-01T11:00:00", "duration_s": 60, "target": {"reduce_kw": 5}}'
    )
    proc = subprocess.run(
        [*dr_agent(), "simulate", "-c", str(EXAMPLES / "factory.yaml"), "--event", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert str(bad) in proc.stderr and "start" in proc.stderr and "UTC offset" in proc.stderr
