"""Load a site config from YAML and check it, reporting every problem as file:line:col.

Three layers: strategy files named by `strategy_files:` are read and added to
`strategies:` (each keeps its own file's line numbers); pydantic validates
types, ranges and per-model rules; then `semantic_checks` validates what spans
models (a strategy naming a device that does not exist, an action of the wrong
kind for its device, a value in W where kW is meant, bounds that cannot both
hold, a strategy that cannot reach the contract's band). Warnings (suspicious,
not wrong) are reported but do not fail validation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from agent.config.model import SiteConfig
from agent.config.yamlsource import (
    ConfigFileError,
    LoadedYaml,
    did_you_mean,
    expand_config_paths,
    format_error_line,
    format_path,
    format_validation_errors,
    load_yaml,
    load_yaml_files,
)
from drivers.profile import load_profile, shipped_profiles
from drivers.registry import kinds
from strategies.engine import ACTION_DEVICE_KIND, config_estimate_kw, effective_action
from strategies.model import (
    EvChargerAction,
    HvacAction,
    LightingAction,
    RelayAction,
    StorageAction,
    Strategy,
)

Path_ = tuple[Hashable, ...]

# pydantic bound errors: append what the user wrote, the message already says what is allowed.
_BOUND_ERRORS = {
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "too_short",
    "too_long",
}
# A value this many times the device's limit is almost surely W written where kW is meant.
_UNIT_FACTOR = 10.0

# The unit of a field, read from its name's suffix: (how to say it, {unit a user may write: factor}).
_SECONDS = {"ms": 0.001, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1}
_SECONDS |= {"m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60}
_SECONDS |= {"h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400}
_SECONDS["days"] = 86400
_FIELD_UNITS: dict[str, tuple[str, dict[str, float]]] = {
    "_kw": ("kW", {"w": 0.001, "kw": 1, "mw": 1000}),
    "_kwh": ("kWh", {"wh": 0.001, "kwh": 1, "mwh": 1000}),
    "_s": ("seconds", _SECONDS),
    "_ms": ("milliseconds", {k: v * 1000 for k, v in _SECONDS.items()}),
    "_c": ("°C", {"c": 1, "°c": 1, "℃": 1, "degc": 1}),
    "_pct": ("percent", {"%": 1, "pct": 1, "percent": 1}),
    "_a": ("A", {"a": 1, "ma": 0.001}),
    "_v": ("V", {"v": 1, "kv": 1000}),
    "_days": ("days", {"d": 1, "day": 1, "days": 1, "w": 7, "week": 7, "weeks": 7}),
}
_FAHRENHEIT = {"f", "°f", "℉", "degf"}
_WITH_UNIT = re.compile(r"\s*([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+)\s*([^\d\s].*?)?\s*")
# Percent fields where a value under 1 may well be meant (a 0.5 % deadband), so no fraction warning.
_SMALL_PCT_OK = {"deadband_pct", "band_pct", "level_pct"}


@dataclass
class ConfigReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class ConfigError(Exception):
    """The config is invalid; `lines` are ready to print, one problem each."""

    def __init__(self, lines: list[str], warnings: list[str] | None = None) -> None:
        self.lines = lines
        self.warnings = warnings or []
        super().__init__("\n".join(lines))


def _hours_overlap(a: tuple[str, str] | None, b: tuple[str, str] | None) -> bool:
    if a is None or b is None:
        return True
    return a[0] < b[1] and b[0] < a[1]


def _check_devices(
    cfg: SiteConfig, errors: list[tuple[Path_, str]], warnings: list[tuple[Path_, str]]
) -> None:
    registry = kinds()
    peak = cfg.contract.peak_kw
    for i, d in enumerate(cfg.devices):
        try:
            profile = load_profile(d.profile)
        except FileNotFoundError:
            errors.append((("devices", i, "profile"), _no_profile(d.profile, d.kind)))
            continue
        except ValidationError as exc:
            errors.append(
                (("devices", i, "profile"), f"profile {d.profile!r} is invalid: {exc.errors()[0]['msg']}")
            )
            continue
        except (OSError, ValueError, yaml.YAMLError) as exc:  # a name too long, a directory, not YAML
            errors.append(
                (("devices", i, "profile"), f"profile {d.profile[:80]!r} cannot be read: {str(exc)[:160]}")
            )
            continue
        if profile.kind != d.kind:
            errors.append(
                (("devices", i, "profile"), f"profile {d.profile!r} is for a {profile.kind}, not a {d.kind}")
            )
        for problem in registry[d.kind].device.check_profile(profile):
            errors.append((("devices", i, "profile"), problem))
        if d.kind not in ("meter",) and d.rated_kw is None:
            warnings.append(
                (("devices", i), f"device {d.name!r} has no rated_kw; expected kW estimates will be 0")
            )
        if d.rated_kw is not None and d.rated_kw > peak:
            errors.append(
                (
                    ("devices", i, "rated_kw"),
                    f"rated_kw {d.rated_kw:g} is above the site's peak_kw {peak:g} (W instead of kW?); "
                    f"allowed: kW, at most the site peak",
                )
            )
        max_dis = getattr(d, "max_discharge_kw", None)
        if max_dis is not None and max_dis > peak:
            errors.append(
                (
                    ("devices", i, "max_discharge_kw"),
                    f"max_discharge_kw {max_dis:g} is above the site's peak_kw {peak:g} (W instead of kW?); "
                    "allowed: kW, at most the site peak",
                )
            )


def _no_profile(name: str, kind: str) -> str:
    shipped = shipped_profiles()
    same_kind = [p for p in shipped if load_profile(p).kind == kind]
    hint = did_you_mean(name, shipped)
    return (
        f"no profile {name!r}; {hint + ' ' if hint else ''}shipped {kind} profiles: "
        f"{', '.join(same_kind) or 'none'} (a name under drivers/profiles/, or a path to a .yaml file)"
    )


def _check_outdoor_temperature(cfg: SiteConfig, errors: list[tuple[Path_, str]]) -> None:
    """The role must be mapped by the device's profile, or the baseline silently gets no temperature."""
    ot = cfg.outdoor_temperature
    if ot is None:
        return
    try:
        profile = load_profile(cfg.device(ot.device).profile)
    except (FileNotFoundError, ValidationError):
        return  # reported with the device
    if profile.by_role(ot.role) is None:
        roles = sorted({p.role for p in profile.points if p.role})
        hint = did_you_mean(ot.role, roles)
        errors.append(
            (
                ("outdoor_temperature", "role"),
                f"{ot.device!r} (profile {profile.name!r}) has no point with role {ot.role!r}; "
                f"{hint + ' ' if hint else ''}its roles: {', '.join(roles)}",
            )
        )


def _check_small_percentages(data: Any, path: Path_, warnings: list[tuple[Path_, str]]) -> None:
    """Warn about a percent field under 1: 0.3 written for 30 %."""
    if isinstance(data, dict):
        for key, value in data.items():
            here = (*path, key)
            if (
                isinstance(key, str)
                and key.endswith("_pct")
                and key not in _SMALL_PCT_OK
                and isinstance(value, int | float)
                and not isinstance(value, bool)
                and 0 < value < 1
            ):
                warnings.append(
                    (
                        here,
                        f"{key} {value:g} is under 1 %; it is in percent, not a fraction "
                        f"(write {value * 100:g} for {value * 100:g} %)",
                    )
                )
            else:
                _check_small_percentages(value, here, warnings)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            _check_small_percentages(value, (*path, i), warnings)


def _check_action(
    a: Any,
    base: Path_,
    cfg: SiteConfig,
    by_name: dict[str, Any],
    errors: list[tuple[Path_, str]],
    warnings: list[tuple[Path_, str]],
) -> list[str]:
    """Checks of one action against the devices it addresses; returns the resolved device names."""
    want = ACTION_DEVICE_KIND[a.kind]
    targets: list[str] = []
    for di, name in enumerate(a.devices):
        dev = by_name.get(name)
        if dev is None:
            known = [n for n, d in by_name.items() if d.kind == want] or sorted(by_name)
            hint = did_you_mean(name, known) or did_you_mean(name, by_name)
            errors.append(
                (
                    (*base, "devices", di),
                    f"unknown device {name!r}; {hint + ' ' if hint else ''}{want} devices: "
                    f"{', '.join(known) or 'none'}",
                )
            )
        elif dev.kind != want:
            errors.append(
                (
                    (*base, "devices", di),
                    f"device {name!r} is a {dev.kind} device; a {a.kind} action needs a {want} device",
                )
            )
        else:
            targets.append(name)
    if a.group is not None:
        zones = sorted({d.zone for d in cfg.devices if d.zone})
        members = [d for d in cfg.devices if d.zone == a.group]
        if not members:
            hint = did_you_mean(a.group, zones)
            errors.append(
                (
                    (*base, "group"),
                    f"no device has zone {a.group!r}; {hint + ' ' if hint else ''}zones: "
                    f"{', '.join(zones) or 'none'}",
                )
            )
        elif not any(d.kind == want for d in members):
            kinds_in = sorted({d.kind for d in members})
            errors.append(
                (
                    (*base, "group"),
                    f"zone {a.group!r} holds no {want} device (only {', '.join(kinds_in)}); "
                    f"a {a.kind} action needs {want} devices",
                )
            )
        targets += [d.name for d in members if d.kind == want and d.name not in targets]
    if a.allowed_hours is not None and not _hours_overlap(a.allowed_hours, cfg.contract.allowed_hours):
        warnings.append(
            (
                (*base, "allowed_hours"),
                f"allowed_hours {list(a.allowed_hours)} never overlap the contract's event hours "
                f"{list(cfg.contract.allowed_hours or ())}; this action will never run",
            )
        )
    for name in targets:
        dev = by_name[name]
        _check_action_on_device(a, base, name, dev, errors, warnings)
    return targets


def _check_action_on_device(
    a: Any,
    base: Path_,
    name: str,
    dev: Any,
    errors: list[tuple[Path_, str]],
    warnings: list[tuple[Path_, str]],
) -> None:
    if a.expected_kw is not None and dev.rated_kw and a.expected_kw > dev.rated_kw * 1.01:
        errors.append(
            (
                (*base, "expected_kw"),
                f"{a.expected_kw:g} kW expected from {name!r} rated {dev.rated_kw:g} kW (W instead of kW?); "
                f"allowed: at most the device's rated_kw",
            )
        )
    if isinstance(a, HvacAction):
        lo, hi = dev.setpoint_min_c, dev.setpoint_max_c
        if a.setpoint_c is not None and not lo <= a.setpoint_c <= hi:
            errors.append(
                (
                    (*base, "setpoint_c"),
                    f"setpoint_c {a.setpoint_c:g} °C is outside {name}'s limits; allowed: {lo:g} to {hi:g} °C",
                )
            )
        if a.comfort_min_c is not None and a.comfort_min_c >= hi:
            errors.append(
                (
                    (*base, "comfort_min_c"),
                    f"comfort_min_c {a.comfort_min_c:g} °C is at or above {name}'s setpoint_max_c {hi:g}; "
                    f"allowed: below {hi:g} °C",
                )
            )
        if a.comfort_max_c is not None and a.comfort_max_c <= lo:
            errors.append(
                (
                    (*base, "comfort_max_c"),
                    f"comfort_max_c {a.comfort_max_c:g} °C is at or below {name}'s setpoint_min_c {lo:g}; "
                    f"allowed: above {lo:g} °C",
                )
            )
        if a.precool is not None and dev.mode != "cooling":
            errors.append(
                ((*base, "precool"), f"{name!r} is in {dev.mode} mode; precool needs a cooling device")
            )
        if a.setpoint_offset_c is not None and a.setpoint_offset_c > 4:
            warnings.append(
                (
                    (*base, "setpoint_offset_c"),
                    f"an offset of {a.setpoint_offset_c:g} °C is large; occupants notice above 2-3 °C",
                )
            )
    elif isinstance(a, LightingAction):
        if a.level_pct is not None:
            if a.level_pct >= 100:
                errors.append(((*base, "level_pct"), "level_pct 100 sheds nothing; allowed: 0 to 99 %"))
            elif 0 < a.level_pct < 1:
                warnings.append(
                    (
                        (*base, "level_pct"),
                        f"level_pct {a.level_pct:g} is under 1 %; levels are percent (write 50 for half)",
                    )
                )
            if a.level_pct < dev.min_level_pct:
                warnings.append(
                    (
                        (*base, "level_pct"),
                        f"level_pct {a.level_pct:g} is below {name}'s floor min_level_pct "
                        f"{dev.min_level_pct:g}; it will stop at the floor",
                    )
                )
        if max(dev.min_level_pct, a.floor_pct or 0.0) >= 100:
            errors.append(
                (
                    (*base, "floor_pct"),
                    f"the floor of {name!r} is 100 %, so dimming sheds nothing; allowed: below 100",
                )
            )
    elif isinstance(a, EvChargerAction):
        kw_per_a = dev.phases * dev.voltage_v / 1000
        if a.power_kw is not None and a.power_kw > dev.max_current_a * kw_per_a * _UNIT_FACTOR:
            errors.append(
                (
                    (*base, "power_kw"),
                    f"power_kw {a.power_kw:g} is far above {name}'s {dev.max_current_a * kw_per_a:.1f} kW "
                    "maximum (W instead of kW?); allowed: kW",
                )
            )
        cap = (
            a.current_a
            if a.current_a is not None
            else (a.power_kw / kw_per_a if a.power_kw is not None else 0)
        )
        field_name = "current_a" if a.current_a is not None else "power_kw"
        if (a.current_a is not None or a.power_kw is not None) and cap >= dev.max_current_a:
            errors.append(
                (
                    (*base, field_name),
                    f"a cap of {cap:.1f} A is at or above {name}'s max_current_a {dev.max_current_a:g} A, "
                    f"so it sheds nothing; allowed: below {dev.max_current_a:g} A",
                )
            )
        elif cap < dev.min_current_a and not a.pause and (a.current_a is not None or a.power_kw is not None):
            warnings.append(
                (
                    (*base, field_name),
                    f"a cap of {cap:.1f} A is below {name}'s min_current_a {dev.min_current_a:g} A; it will "
                    "be raised to the minimum (add pause: true to allow pausing)",
                )
            )
    elif isinstance(a, StorageAction):
        if a.discharge_kw > dev.max_discharge_kw * _UNIT_FACTOR:
            errors.append(
                (
                    (*base, "discharge_kw"),
                    f"discharge_kw {a.discharge_kw:g} is far above {name}'s inverter limit "
                    f"{dev.max_discharge_kw:g} kW (W instead of kW?); allowed: up to {dev.max_discharge_kw:g} kW",
                )
            )
        elif a.discharge_kw > dev.max_discharge_kw:
            warnings.append(
                (
                    (*base, "discharge_kw"),
                    f"discharge_kw {a.discharge_kw:g} is above {name}'s inverter limit "
                    f"{dev.max_discharge_kw:g} kW; it will discharge at the limit",
                )
            )
        if a.reserve_soc_pct is not None and a.reserve_soc_pct < dev.reserve_soc_pct:
            warnings.append(
                (
                    (*base, "reserve_soc_pct"),
                    f"reserve_soc_pct {a.reserve_soc_pct:g} is below {name}'s own reserve "
                    f"{dev.reserve_soc_pct:g} %; the device's reserve applies",
                )
            )
    elif isinstance(a, RelayAction):
        eff = effective_action(a, dev)
        min_off = getattr(eff, "min_off_s", None) or 0.0
        if a.max_shed_s is not None and min_off > a.max_shed_s:
            errors.append(
                (
                    (*base, "max_shed_s"),
                    f"max_shed_s {a.max_shed_s:g} is shorter than {name}'s minimum off time {min_off:g} s; "
                    f"allowed: at least {min_off:g} s",
                )
            )


def semantic_checks(
    cfg: SiteConfig, data: Any = None
) -> tuple[list[tuple[Path_, str]], list[tuple[Path_, str]]]:
    """Cross-model problems as (path, message): (errors, warnings).

    `data` is the YAML as written, for the checks that look at what the user typed.
    """
    errors: list[tuple[Path_, str]] = []
    warnings: list[tuple[Path_, str]] = []
    by_name = {d.name: d for d in cfg.devices}
    _check_devices(cfg, errors, warnings)
    _check_outdoor_temperature(cfg, errors)
    if data is not None:
        _check_small_percentages(data, (), warnings)
    band_lo = cfg.contract.band_kw()[0]
    for si, s in enumerate(cfg.strategies):
        expected = 0.0
        seen: dict[str, Path_] = {}
        for gi, stage in enumerate(s.stages):
            for ai, a in enumerate(stage.actions):
                base: Path_ = ("strategies", si, "stages", gi, "actions", ai)
                for name in _check_action(a, base, cfg, by_name, errors, warnings):
                    expected += config_estimate_kw(a, by_name[name])
                    if name in seen:
                        warnings.append(
                            (
                                base,
                                f"device {name!r} is already shed by {format_path(seen[name])}; this action "
                                "only runs after that one is released",
                            )
                        )
                    else:
                        seen[name] = base
        if expected < band_lo:
            errors.append(
                (
                    ("strategies", si, "stages"),
                    f"strategy {s.name!r} can shed about {expected:.0f} kW, below the band's minimum "
                    f"{band_lo:.0f} kW ({cfg.contract.band_pct[0]:g} % of peak {cfg.contract.peak_kw:g} kW); "
                    "add actions or check expected_kw",
                )
            )
    names = [s.name for s in cfg.strategies]
    for si, n in enumerate(names):
        if names.index(n) != si:
            errors.append(
                (("strategies", si, "name"), f"strategy name {n!r} is used twice; names must be unique")
            )
    defaults = [si for si, s in enumerate(cfg.strategies) if s.default]
    for si in defaults[1:]:
        errors.append(
            (("strategies", si, "default"), "more than one strategy has default: true; allowed: one")
        )
    if cfg.strategy_select is not None:
        for key, name in cfg.strategy_select.named().items():
            if name not in names:
                hint = did_you_mean(name, names)
                errors.append(
                    (
                        ("strategy_select", key),
                        f"no strategy named {name!r}; {hint + ' ' if hint else ''}strategies: {', '.join(names)}",
                    )
                )
    else:
        programs = {p for s in cfg.strategies for p in s.programs}
        if not defaults and not {"contracted", "realtime"} <= programs:
            warnings.append(
                (
                    ("strategies",),
                    "no default strategy and not every program has one; the first strategy is used",
                )
            )
    return errors, warnings


def _add_strategy_files(source: LoadedYaml, main: Path) -> tuple[LoadedYaml, dict[int, str]]:
    """Append the strategies of `strategy_files:` to `strategies:`, keeping each file's locations.

    Returns the merged source and {index in strategies: file name} for the added ones.
    """
    files = source.data.get("strategy_files")
    if not files:
        return source, {}
    if not isinstance(files, list):
        return source, {}  # pydantic reports the type error
    data = dict(source.data)
    inline = data.get("strategies")
    strategies: list[Any] = list(inline) if isinstance(inline, list) else []
    locations = dict(source.locations)
    origin: dict[int, str] = {}
    errors: list[str] = []
    paths = list(source.files)
    for fi, rel in enumerate(files):
        if not isinstance(rel, str):
            continue
        path = Path(rel) if Path(rel).is_absolute() else main.parent / rel
        at = source.locate(("strategy_files", fi))
        if not path.is_file():
            errors.append(format_error_line(at, f"strategy_files[{fi}]", f"no such file {str(path)!r}"))
            continue
        try:
            loaded = load_yaml(path)
        except ConfigFileError as exc:
            errors.append(str(exc))
            continue
        index = len(strategies)
        strategies.append(loaded.data)
        origin[index] = str(path)
        for p, loc in loaded.locations.items():
            locations[("strategies", index, *p)] = loc
        paths.append(path)
    if errors:
        raise ConfigError(errors)
    data["strategies"] = strategies
    if ("strategies",) not in locations:
        locations[("strategies",)] = source.locate(("strategy_files",))
    return LoadedYaml(data, locations, tuple(paths)), origin


def _relative_to_file(line: str, origin: dict[int, str]) -> str:
    """In a line that points into a strategy file, show the path from that file's root."""
    for index, name in origin.items():
        if line.startswith(name + ":"):
            line = re.sub(rf": strategies\[{index}\]\.", ": ", line, count=1)
            line = re.sub(rf": strategies\[{index}\]: ", ": ", line, count=1)
    return line


def _field_unit(loc: tuple[int | str, ...]) -> tuple[str, str, dict[str, float]] | None:
    """(field name, its unit, units a user may write) from the name's suffix, e.g. peak_kw -> kW."""
    name = next((item for item in reversed(loc) if isinstance(item, str)), None)
    if name is None:
        return None
    for suffix in sorted(_FIELD_UNITS, key=len, reverse=True):
        if name.endswith(suffix):
            unit, factors = _FIELD_UNITS[suffix]
            return name, unit, factors
    return None


def _unit_hint(loc: tuple[int | str, ...], value: str) -> str | None:
    """For '1 MW' where kW is meant: what to write instead, in the field's own unit."""
    found = _field_unit(loc)
    if found is None:
        return None
    name, unit, factors = found
    match = _WITH_UNIT.fullmatch(value)
    if match is None:
        return f"{value!r} is not a number; {name} is a plain number in {unit}"
    number = float(match.group(1).replace(",", ""))
    written = (match.group(2) or "").strip().rstrip(".")
    key = written.casefold().replace(" ", "")
    if unit == "°C" and key in _FAHRENHEIT:
        converted = round((number - 32) * 5 / 9, 1)
    elif key in factors:
        converted = number * factors[key]
    else:
        return f"{value!r} is not a number; {name} is a plain number in {unit}, without a unit"
    write = f"{converted:.10g}" if isinstance(loc[-1], int) else f"{name}: {converted:.10g}"  # a list item
    return f"{value!r} is not a plain number; {name} is in {unit}, so write {write}"


def _bound_hint(loc: tuple[int | str, ...], etype: str, value: float) -> str:
    """For a number out of range, the likely unit mix-up (°F for °C, W for kW), or ''."""
    found = _field_unit(loc)
    if found is None or etype not in ("less_than", "less_than_equal"):
        return ""
    _name, unit, _factors = found
    if unit == "°C" and 32 < value <= 120:
        return f"; in °C ({value:g} °F would be {(value - 32) * 5 / 9:.1f} °C)"
    if unit == "kW":
        return f"; in kW (W instead of kW? {value:g} W is {value / 1000:g} kW)"
    if unit == "seconds" and value >= 1000:
        return f"; in seconds ({value:g} s is {value / 3600:.3g} h)"
    return ""


def _explain(lines: list[str], err: ValidationError) -> list[str]:
    """Add to pydantic's messages what a facility manager needs: the value written, and for a
    number written with a unit ('1 MW', '30 min') the plain number the field wants."""
    out = []
    for line, e in zip(lines, err.errors(include_url=False), strict=False):
        value = e.get("input")
        if e["type"] in _BOUND_ERRORS and isinstance(value, int | float) and not isinstance(value, bool):
            line += f", got {value:g}" + _bound_hint(e["loc"], e["type"], value)
        elif e["type"] in ("float_parsing", "int_parsing") and isinstance(value, str):
            hint = _unit_hint(e["loc"], value)
            if hint and line.endswith(e["msg"]):
                line = line.removesuffix(e["msg"]) + hint
        out.append(line)
    return out


def _looks_like_strategy(data: dict[Any, Any]) -> bool:
    return "stages" in data and "site" not in data


def is_strategy_file(path: str | Path) -> bool:
    """Whether `path` holds a strategy (for strategy_files:) rather than a site config."""
    try:
        return _looks_like_strategy(load_yaml(path).data)
    except ConfigFileError:
        return False  # the site config loader reports what is wrong with the file


def load_strategy_file(path: str | Path) -> Strategy:
    """Load one strategy file on its own (structure only; devices are checked with the site config)."""
    try:
        source = load_yaml(path)
    except ConfigFileError as exc:
        raise ConfigError([str(exc)]) from None
    try:
        return Strategy.model_validate(source.data)
    except ValidationError as exc:
        raise ConfigError(_explain(format_validation_errors(exc, source, Strategy), exc)) from None


def load_site_config(path: str | Path) -> tuple[SiteConfig, list[str]]:
    """Load, validate and check a config (plus conf.d/*.yaml and strategy_files). Returns (config, warnings).

    Raises ConfigError with one `file:line:col: field: message` line per problem.
    """
    main = Path(path)
    try:
        source: LoadedYaml = load_yaml_files(expand_config_paths(main))
    except ConfigFileError as exc:
        raise ConfigError([str(exc)]) from None
    if _looks_like_strategy(source.data):
        load_strategy_file(main)  # its own errors first, at its own lines
        raise ConfigError(
            [
                f"{source.locate(())}: this is a strategy file, not a site config; it is valid on its own. "
                "List it under strategy_files: in a site config and use that"
            ]
        )
    source, origin = _add_strategy_files(source, main)
    try:
        cfg = SiteConfig.model_validate(source.data)
    except ValidationError as exc:
        lines = _explain(format_validation_errors(exc, source, SiteConfig), exc)
        raise ConfigError([_relative_to_file(line, origin) for line in lines]) from None
    errors, warnings = semantic_checks(cfg, source.data)
    fmt = [
        _relative_to_file(format_error_line(source.locate(p), format_path(p), m), origin) for p, m in errors
    ]
    warn = [
        _relative_to_file(format_error_line(source.locate(p), format_path(p), "warning: " + m), origin)
        for p, m in warnings
    ]
    if fmt:
        raise ConfigError(fmt, warn)
    return cfg, warn


def json_schema(model: type[BaseModel] = SiteConfig) -> str:
    """The JSON Schema editors use to autocomplete and check configs (`dr-agent schema`)."""
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    if model is SiteConfig:
        schema["title"] = "dr-agent site configuration (version 1)"
    elif model is Strategy:
        schema["title"] = "dr-agent strategy (version 1)"
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
