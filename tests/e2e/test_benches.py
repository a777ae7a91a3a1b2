"""The benches of `bench/` still run, each at its smallest size, and print the `--json` keys the
docs and the performance issue quote.

A bench is not run by anything else in the suite, so a change to the code it drives can break it
unseen (`modbus_poll` did: the daemon's poll path grew a gate its stand-in agent lacked). These
runs measure nothing worth quoting; they check that each bench completes, misses nothing and says
what it promises. `report_latency` (it waits out the 10 s load filter per change) and `soak`
(minutes) are left to their own runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_bench(name: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"bench/{name}.py failed:\n{proc.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_modbus_poll_polls_every_device_of_both_maps_and_compares_with_the_reference() -> None:
    out = run_bench("modbus_poll", "--devices", "12", "--duration", "1")
    # The synthetic map at the top level, the shipped profiles' mix under "site_mix".
    for m in (out, out["site_mix"]):
        assert m["devices_ok"] == 12 and m["failures"] == 0, m
        assert m["requests_per_s"] > 0 and m["cpu_per_request_vs_ref"] > 0, m


def test_shed_latency_measures_the_agent_and_the_reference_on_every_event() -> None:
    out = run_bench("shed_latency", "--sizes", "10x1", "--events", "2")
    (size,) = out["sizes"]
    assert size["missed"] == 0 and size["ref_missed"] == 0, size
    assert out["p99_all_ms"] > 0 and out["ref_p99_all_ms"] > 0 and out["ratio_p99_all"] > 0


def test_footprint_reports_rss_cpu_and_start_up() -> None:
    out = run_bench("footprint", "--sizes", "10", "--idle-s", "1", "--event-s", "1")
    assert {"idle_rss_mb", "rss_mb_100dev", "cpu_pct_1000dev", "startup_s"} <= out.keys()
    assert out["idle_rss_mb"] > 0 and out["startup_s"] > 0
    (size,) = out["sizes"]
    assert size["zones_shed"] == size["first_stage"] > 0, size


def test_storage_reports_the_day_and_the_budget() -> None:
    out = run_bench("storage", "--devices", "10")
    assert {"mb_per_day_100dev", "write_mb_per_day_100dev", "budget_mb", "max_db_mb"} <= out.keys()
    (size,) = out["sizes"]
    assert size["within_budget"] is True, size
    assert 0 < size["max_db_mb"] <= size["budget_mb"], size


def test_thread_contention_times_each_case() -> None:
    out = run_bench("thread_contention", "--events", "5")
    assert [c["busy_thread"] for c in out["cases"]] == [False, True, True]
    assert out["idle_p99_ms"] > 0 and out["busy_agent_p99_ms"] > 0
