"""`dr-agent demo --json` on a fresh checkout: exits 0 and settles inside the band."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import dr_agent

pytestmark = pytest.mark.e2e


def test_demo_json_settles_in_band(tmp_path: Path) -> None:
    cmd = dr_agent()
    db = tmp_path / "demo.sqlite"
    # Faster than the README's default (60x) to keep the suite short; same code path.
    proc = subprocess.run(
        [*cmd, "demo", "--json", "--speed", "120", "--duration-min", "20", "--keep-db", str(db)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(proc.stdout)
    for key in (
        "event_id",
        "baseline_kw",
        "measured_kw",
        "verified_reduction_kw",
        "band_pct",
        "in_band_fraction",
    ):
        assert key in s
    lo, hi = s["band_pct"]
    assert [lo, hi] == [5.0, 20.0]
    assert lo <= s["verified_reduction_pct_of_peak"] <= hi
    assert s["in_band_fraction"] >= 0.9
    # The verified figure is the formula over the reported energies.
    hours = s["duration_s"] / 3600
    assert s["verified_reduction_kw"] == pytest.approx(
        (s["baseline_kwh"] - s["measured_kwh"]) / hours, rel=1e-3
    )

    # The kept database holds the same settlement for `dr-agent report`.
    rep = subprocess.run(
        [*cmd, "report", "--db", str(db), s["event_id"], "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rep.returncode == 0, rep.stderr[-2000:]
    stored = json.loads(rep.stdout)
    assert stored["event_id"] == s["event_id"]
    assert stored["verified_reduction_kw"] == pytest.approx(s["verified_reduction_kw"])
