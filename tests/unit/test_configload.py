"""Site config loading: strategy files keep their own line numbers, selection by program, mixed zones."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agent.config.load import ConfigError, load_site_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "strategies" / "examples"

SITE = """\
version: 1
site: {id: t, timezone: Asia/Shanghai, meter: meter}
modbus:
  endpoints: [{name: bus, protocol: tcp, host: 127.0.0.1, port: 15999}]
devices:
  - {name: meter, kind: meter, endpoint: bus, unit_id: 1, profile: eastron_sdm630}
  - {name: ahu, kind: hvac, endpoint: bus, unit_id: 2, profile: generic_hvac, rated_kw: 200, zone: north}
  - {name: lights, kind: lighting, endpoint: bus, unit_id: 3, profile: generic_lighting, rated_kw: 100,
     zone: north}
contract: {peak_kw: 1000, band_pct: [5, 20]}
"""

STRATEGY = """\
version: 1
name: {name}
programs: [{program}]
stages:
  - name: north
    actions:
      - {{kind: lighting, group: north, level_pct: 50}}
      - {{kind: hvac, group: north, setpoint_offset_c: 1}}
"""


def write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return p


def test_strategy_files_and_selection_by_program(tmp_path: Path) -> None:
    write(tmp_path, "s/a.yaml", STRATEGY.format(name="day-ahead", program="contracted"))
    write(tmp_path, "s/b.yaml", STRATEGY.format(name="fast", program="realtime"))
    cfg_path = write(
        tmp_path,
        "site.yaml",
        SITE + "strategy_files: [s/a.yaml, s/b.yaml]\nstrategy_select: {price: fast, default: day-ahead}\n",
    )
    cfg, warnings = load_site_config(cfg_path)
    assert [s.name for s in cfg.strategies] == ["day-ahead", "fast"]
    assert cfg.strategy_for("price").name == "fast"  # the site's selection wins
    assert cfg.strategy_for("realtime").name == "day-ahead"  # not named: the default
    assert warnings == []


def test_error_in_strategy_file_points_into_that_file(tmp_path: Path) -> None:
    bad = STRATEGY.format(name="x", program="contracted").replace(
        "level_pct: 50", "level_pct: 50, floor_pct: 60"
    )
    strategy = write(tmp_path, "s/bad.yaml", bad)
    cfg_path = write(tmp_path, "site.yaml", SITE + "strategy_files: [s/bad.yaml]\n")
    with pytest.raises(ConfigError) as err:
        load_site_config(cfg_path)
    (line,) = err.value.lines
    assert line.startswith(
        f"{strategy}:7:9: stages[0].actions[0]: level_pct 50 is below this action's floor_pct 60"
    )


def test_unknown_device_in_strategy_file_points_into_that_file(tmp_path: Path) -> None:
    bad = STRATEGY.format(name="x", program="contracted").replace(
        "group: north, setpoint", "devices: [ahu-9], setpoint"
    )
    strategy = write(tmp_path, "s/bad.yaml", bad)
    cfg_path = write(tmp_path, "site.yaml", SITE + "strategy_files: [s/bad.yaml]\n")
    with pytest.raises(ConfigError) as err:
        load_site_config(cfg_path)
    assert err.value.lines == [
        f"{strategy}:8:32: stages[0].actions[1].devices[0]: unknown device 'ahu-9'; did you mean 'ahu'? "
        "hvac devices: ahu"
    ]


def test_missing_strategy_file_is_named(tmp_path: Path) -> None:
    cfg_path = write(tmp_path, "site.yaml", SITE + "strategy_files: [nowhere.yaml]\n")
    with pytest.raises(ConfigError) as err:
        load_site_config(cfg_path)
    assert err.value.lines[0].startswith(f"{cfg_path}:11:18: strategy_files[0]: no such file")


def test_a_zone_may_hold_several_kinds(tmp_path: Path) -> None:
    """`group: north` takes the lighting for a lighting action and the HVAC for an HVAC action."""
    write(tmp_path, "s/a.yaml", STRATEGY.format(name="n", program="contracted"))
    cfg, _ = load_site_config(write(tmp_path, "site.yaml", SITE + "strategy_files: [s/a.yaml]\n"))
    from agent.runtime.daemon import build_devices
    from strategies.engine import build_steps

    _t, devices = build_devices(cfg, {"bus": object()})  # type: ignore[dict-item]
    assert [s.device for s in build_steps(cfg.strategies[0], devices)] == ["lights", "ahu"]


def test_warnings_do_not_fail(tmp_path: Path) -> None:
    text = STRATEGY.format(name="n", program="contracted").replace("level_pct: 50}", "level_pct: 0.5}")
    write(tmp_path, "s/a.yaml", text)
    cfg, warnings = load_site_config(write(tmp_path, "site.yaml", SITE + "strategy_files: [s/a.yaml]\n"))
    assert cfg.strategies[0].name == "n"
    assert any("levels are percent (write 50 for half)" in w for w in warnings)


def test_every_example_loads() -> None:
    for path in EXAMPLES.glob("*.yaml"):
        if not path.name.endswith(".strategy.yaml"):
            cfg, warnings = load_site_config(path)
            assert cfg.strategies and warnings == [], (path, warnings)


def test_the_docs_complete_example_is_valid(tmp_path: Path) -> None:
    """docs/strategies.md promises its complete example runs as it stands."""
    import re

    doc = (REPO / "docs" / "strategies.md").read_text(encoding="utf-8")
    block = re.search(r"## A complete example\n\n```yaml\n(.*?)```", doc, re.S)
    assert block is not None
    cfg, warnings = load_site_config(write(tmp_path, "site.yaml", block.group(1)))
    assert cfg.strategy_for("contracted").name == "office" and warnings == []


@pytest.mark.parametrize(
    ("old", "new", "where", "message"),
    [
        ("peak_kw: 1000", "peak_kw: 1000000 W", "10:12: contract.peak_kw", "so write peak_kw: 1000"),
        ("peak_kw: 1000", "peak_kw: 1.2 MW", "10:12: contract.peak_kw", "so write peak_kw: 1200"),
        ("peak_kw: 1000", "peak_kw: lots", "10:12: contract.peak_kw", "peak_kw is a plain number in kW"),
        ("band_pct: [5, 20]", "band_pct: [5 %, 20]", "10:38: contract.band_pct[0]", "in percent, so write 5"),
        (
            "port: 15999}]",
            "port: 15999}]\n  poll_interval_s: 500 ms",
            "5:3: modbus.poll_interval_s",
            "write poll_interval_s: 0.5",
        ),
        (
            "200, zone: north}",
            "200, zone: north, setpoint_max_c: 80 °F}",
            "7:107: devices[1].setpoint_max_c",
            "°C, so write setpoint_max_c: 26.7",
        ),
        ("rated_kw: 200", "rated_kw: 200 kW", "7:79: devices[1].rated_kw", "in kW, so write rated_kw: 200"),
    ],
)
def test_a_number_with_a_unit_says_what_to_write(
    tmp_path: Path, old: str, new: str, where: str, message: str
) -> None:
    write(tmp_path, "s/a.yaml", STRATEGY.format(name="n", program="contracted"))
    assert SITE.count(old) == 1
    cfg_path = write(tmp_path, "site.yaml", SITE.replace(old, new) + "strategy_files: [s/a.yaml]\n")
    with pytest.raises(ConfigError) as err:
        load_site_config(cfg_path)
    (line,) = [ln for ln in err.value.lines if "Input should be" not in ln or "got" in ln]
    assert line.startswith(f"{cfg_path}:{where}: "), line
    assert message in line, line


def test_band_as_fractions_suggests_percent(tmp_path: Path) -> None:
    write(tmp_path, "s/a.yaml", STRATEGY.format(name="n", program="contracted"))
    text = SITE.replace("band_pct: [5, 20]", "band_pct: [0.1, 0.25]")
    with pytest.raises(ConfigError) as err:
        load_site_config(write(tmp_path, "site.yaml", text + "strategy_files: [s/a.yaml]\n"))
    (line,) = err.value.lines
    assert ":10:27: contract.band_pct: " in line and line.endswith("did you mean [10, 25]?"), line


def test_a_small_percentage_warns_that_it_is_percent(tmp_path: Path) -> None:
    write(tmp_path, "s/a.yaml", STRATEGY.format(name="n", program="contracted"))
    text = SITE.replace("     zone: north}", "     zone: north, min_level_pct: 0.4}")
    cfg, warnings = load_site_config(write(tmp_path, "site.yaml", text + "strategy_files: [s/a.yaml]\n"))
    assert cfg.devices[2].min_level_pct == 0.4
    (warning,) = [w for w in warnings if "min_level_pct" in w]
    assert ":9:19: devices[2].min_level_pct: warning: min_level_pct 0.4 is under 1 %" in warning
    assert warning.endswith("it is in percent, not a fraction (write 40 for 40 %)")
