"""`dr-agent validate`: every shipped example passes; every broken file fails naming file, line and field.

Each broken file under tests/data/broken/ holds one mistake a facility
manager makes; the test runs the real command on it and checks the exact
`file:line:col: path: message` an editor would jump to.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import dr_agent

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
BROKEN = REPO / "tests" / "data" / "broken"
EXAMPLES = REPO / "strategies" / "examples"

# file -> (where the error must point: path relative to the repo, line, col), field path, words of the message
EXPECTED: dict[str, tuple[str | None, int, int, str, str]] = {
    "01-unknown-device": (
        None,
        25,
        40,
        "strategies[0].stages[0].actions[0].devices[0]",
        "unknown device 'lights-9'; did you mean 'lights-1'? lighting devices: lights-1",
    ),
    "02-unknown-group": (
        None,
        25,
        30,
        "strategies[0].stages[0].actions[0].group",
        "no device has zone 'south'; zones: north",
    ),
    "03-wrong-device-kind": (
        None,
        25,
        40,
        "strategies[0].stages[0].actions[0].devices[0]",
        "'ahu-1' is a hvac device; a lighting action needs a lighting device",
    ),
    "04-expected-kw-in-watts": (
        None,
        25,
        66,
        "strategies[0].stages[0].actions[0].expected_kw",
        "(W instead of kW?)",
    ),
    "05-rated-kw-in-watts": (
        None,
        13,
        92,
        "devices[3].rated_kw",
        "above the site's peak_kw 1000 (W instead of kW?)",
    ),
    "06-device-floor-above-ceiling": (
        None,
        10,
        26,
        "devices[1].setpoint_max_c",
        "setpoint_max_c 22.0 must be above setpoint_min_c 28.0",
    ),
    "07-setpoint-outside-device-limits": (
        None,
        31,
        44,
        "strategies[0].stages[1].actions[1].setpoint_c",
        "outside ahu-1's limits; allowed: 22 to 27 °C",
    ),
    "08-misspelt-field": (
        None,
        25,
        51,
        "strategies[0].stages[0].actions[0].level_pc",
        "unknown field 'level_pc'; did you mean 'level_pct'? allowed: ",
    ),
    "09-missing-field": (
        None,
        26,
        13,
        "strategies[0].stages[0].actions[1].discharge_kw",
        "required field missing",
    ),
    "10-bad-allowed-hours": (
        None,
        27,
        44,
        "strategies[0].stages[0].actions[2].allowed_hours",
        "'25:00' is not a time of day; write HH:MM",
    ),
    "11-cannot-reach-band": (
        None,
        22,
        5,
        "strategies[0].stages",
        "can shed about 111 kW, below the band's minimum 300 kW",
    ),
    "12-hold-longer-than-max-shed": (
        None,
        30,
        13,
        "strategies[0].stages[1].actions[0]",
        "min_hold_s 600 exceeds max_shed_s 300",
    ),
    "13-max-shed-below-min-off": (
        None,
        27,
        44,
        "strategies[0].stages[0].actions[2].max_shed_s",
        "shorter than pump's minimum off time 300 s; allowed: at least 300 s",
    ),
    "14-unknown-action-kind": (
        None,
        27,
        14,
        "strategies[0].stages[0].actions[2].kind",
        # Every kind that can shed, in the kind registry's order.
        "unknown value 'switch'; expected one of: 'ev_charger', 'hvac', 'lighting', 'relay', 'storage'",
    ),
    "15-discharge-in-watts": (
        None,
        26,
        49,
        "strategies[0].stages[0].actions[1].discharge_kw",
        "(W instead of kW?); allowed: up to 50 kW",
    ),
    "16-comfort-floor-above-ceiling": (
        None,
        31,
        13,
        "strategies[0].stages[1].actions[1]",
        "comfort_min_c 26 must be below comfort_max_c 24",
    ),
    "17-charger-cap-above-maximum": (
        None,
        30,
        49,
        "strategies[0].stages[1].actions[0].current_a",
        "so it sheds nothing; allowed: below 32 A",
    ),
    "18-level-out-of-range": (
        None,
        25,
        51,
        "strategies[0].stages[0].actions[0].level_pct",
        "less than or equal to 100, got 150",
    ),
    "19-unknown-strategy-selected": (
        None,
        20,
        19,
        "strategy_select.contracted",
        "no strategy named 'offices'; did you mean 'office'? strategies: office",
    ),
    "20-error-in-strategy-file": (
        "tests/data/broken/strategies/bad.strategy.yaml",
        8,
        62,
        "stages[0].actions[1].cooldown_s",
        "greater than or equal to 0, got -5",
    ),
    # A missing top-level key: at the first key of the file, not on the comment line above it.
    "21-version-missing": (None, 2, 1, "version", "required field missing"),
    "22-band-as-fractions": (
        None,
        19,
        3,
        "contract.band_pct",
        "band_pct is in percent, not a fraction: did you mean [5, 20]?",
    ),
    "23-peak-in-megawatts": (
        None,
        18,
        3,
        "contract.peak_kw",
        "'1 MW' is not a plain number; peak_kw is in kW, so write peak_kw: 1000",
    ),
    "24-misspelt-setpoint-offset": (
        None,
        31,
        44,
        "strategies[0].stages[1].actions[1].setpoint_offest_c",
        "unknown field 'setpoint_offest_c'; did you mean 'setpoint_offset_c'? allowed: ",
    ),
    "25-unknown-endpoint": (
        None,
        9,
        31,
        "devices[1].endpoint",
        "unknown endpoint 'bux'; did you mean 'bus'? endpoints under modbus.endpoints: bus",
    ),
    "26-meter-not-a-device": (
        None,
        3,
        45,
        "site.meter",
        "'metr' is not a device; did you mean 'meter'? meter devices: meter",
    ),
    "27-meter-is-not-a-meter": (
        None,
        3,
        45,
        "site.meter",
        "'ahu-1' is a hvac device, not a meter; the site meter measures the whole site's load",
    ),
    "28-misspelt-device-kind": (
        None,
        9,
        19,
        "devices[1].kind",
        "unknown value 'hvca'; did you mean 'hvac'? expected one of: ",
    ),
    "29-misspelt-profile": (
        None,
        9,
        58,
        "devices[1].profile",
        "no profile 'generic_hvca'; did you mean 'generic_hvac'? shipped hvac profiles: generic_hvac,",
    ),
    "30-hold-in-minutes": (
        None,
        31,
        66,
        "strategies[0].stages[1].actions[1].min_hold_s",
        "'10 min' is not a plain number; min_hold_s is in seconds, so write min_hold_s: 600",
    ),
    "31-setpoint-in-fahrenheit": (
        None,
        31,
        44,
        "strategies[0].stages[1].actions[1].setpoint_c",
        "less than or equal to 40, got 75; in °C (75 °F would be 23.9 °C)",
    ),
    "32-charger-power-in-watts": (
        None,
        30,
        49,
        "strategies[0].stages[1].actions[0].power_kw",
        "got 7400; in kW (W instead of kW? 7400 W is 7.4 kW)",
    ),
    # One error, not two: the misspelt key, not also "contract: required field missing".
    "33-misspelt-section": (None, 17, 1, "contrat", "unknown field 'contrat'; did you mean 'contract'?"),
    "34-misspelt-zone": (
        None,
        31,
        26,
        "strategies[0].stages[1].actions[1].group",
        "no device has zone 'nrth'; did you mean 'north'? zones: north",
    ),
    "35-misspelt-timezone": (
        None,
        3,
        20,
        "site.timezone",
        "unknown timezone 'Asia/Shangai'; did you mean 'Asia/Shanghai'?",
    ),
    "36-percent-sign": (
        None,
        25,
        51,
        "strategies[0].stages[0].actions[0].level_pct",
        "'50%' is not a plain number; level_pct is in percent, so write level_pct: 50",
    ),
    "37-endpoint-address-twice": (
        None,
        7,
        42,
        "modbus.endpoints[1].host",
        "endpoints 'bus' and 'gw' both use 127.0.0.1:15999",
    ),
    "38-no-strategy": (
        None,
        2,
        1,
        "strategies",
        "no strategy: write one under strategies: or list strategy files under strategy_files:",
    ),
    "39-outdoor-temperature-role": (
        None,
        17,
        38,
        "outdoor_temperature.role",
        "has no point with role 'outdoor_temp'; did you mean 'outdoor_temp_c'?",
    ),
}


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*dr_agent(), "validate", "-c", str(path.relative_to(REPO))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_every_broken_file_is_covered() -> None:
    files = {p.stem for p in BROKEN.glob("*.yaml")}
    assert files == set(EXPECTED)
    assert len(files) >= 10


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_file_fails_at_its_line(name: str) -> None:
    where, line, col, field, words = EXPECTED[name]
    path = BROKEN / f"{name}.yaml"
    proc = validate(path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    file = where or str(path.relative_to(REPO))
    prefix = f"{file}:{line}:{col}: {field}: "
    hits = [ln for ln in proc.stderr.splitlines() if ln.startswith(prefix)]
    assert hits, f"no line starting {prefix!r} in:\n{proc.stderr}"
    assert words in hits[0], hits[0]
    # Exactly one mistake per file: no collateral errors that would confuse the reader.
    assert proc.stderr.strip().splitlines()[-1].endswith(": 1 error(s)")
    # Every file starts with a comment: an error at 1:1 would point at no line to fix.
    assert f"{file}:1:1:" not in proc.stderr


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_validate(path: Path) -> None:
    proc = validate(path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{path.relative_to(REPO)}: OK (")
    if path.name.endswith(".strategy.yaml"):
        # On its own a strategy file is checked for structure; its devices come with the site config.
        assert "strategy_files" in proc.stdout and not proc.stderr


def test_a_broken_strategy_file_on_its_own_fails_at_its_line() -> None:
    path = BROKEN / "strategies" / "bad.strategy.yaml"
    proc = validate(path)
    assert proc.returncode == 1
    rel = path.relative_to(REPO)
    assert proc.stderr.startswith(f"{rel}:8:62: stages[0].actions[1].cooldown_s: "), proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"{rel}: 1 error(s)"


def test_suspicious_values_warn_but_pass(tmp_path: Path) -> None:
    text = (EXAMPLES / "factory.yaml").read_text()
    text = text.replace("setpoint_offset_c: 2,", "setpoint_offset_c: 5,")
    cfg = tmp_path / "site.yaml"
    cfg.write_text(text)
    proc = subprocess.run(
        [*dr_agent(), "validate", "-c", str(cfg)], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    warn = [ln for ln in proc.stderr.splitlines() if "warning: an offset of 5 °C is large" in ln]
    assert warn and warn[0].startswith(f"{cfg}:")
    assert ".setpoint_offset_c: warning:" in warn[0]
    assert "2 warning(s)" in proc.stdout  # the action's group holds two chillers
