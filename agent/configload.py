"""Load a site config from YAML and check it, reporting every problem as file:line:col.

Two layers: pydantic validates types, ranges and per-model rules; then
`semantic_checks` validates what spans models (a strategy naming a device
that does not exist, an action of the wrong kind for its device, a profile
that lacks a point the kind needs, a strategy that cannot reach the band).
Warnings (suspicious, not wrong) are reported but do not fail validation.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from agent.config import SiteConfig
from agent.yamlsource import (
    ConfigFileError,
    LoadedYaml,
    expand_config_paths,
    format_error_line,
    format_path,
    format_validation_errors,
    load_yaml_files,
)
from drivers.profile import load_profile
from drivers.registry import kinds
from strategies.engine import ACTION_DEVICE_KIND

Path_ = tuple[Hashable, ...]


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


def semantic_checks(cfg: SiteConfig) -> tuple[list[tuple[Path_, str]], list[tuple[Path_, str]]]:
    """Cross-model problems as (path, message): (errors, warnings)."""
    errors: list[tuple[Path_, str]] = []
    warnings: list[tuple[Path_, str]] = []
    registry = kinds()
    by_name = {d.name: d for d in cfg.devices}
    zones = {d.zone for d in cfg.devices if d.zone}
    for i, d in enumerate(cfg.devices):
        try:
            profile = load_profile(d.profile)
        except FileNotFoundError:
            errors.append(
                (("devices", i, "profile"), f"no profile {d.profile!r} (drivers/profiles/ or a path)")
            )
            continue
        except ValidationError as exc:
            errors.append(
                (("devices", i, "profile"), f"profile {d.profile!r} is invalid: {exc.errors()[0]['msg']}")
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
    total_expected = 0.0
    for si, s in enumerate(cfg.strategies):
        expected = 0.0
        for gi, stage in enumerate(s.stages):
            for ai, a in enumerate(stage.actions):
                base: Path_ = ("strategies", si, "stages", gi, "actions", ai)
                want = ACTION_DEVICE_KIND[a.kind]
                targets = list(a.devices)
                for di, name in enumerate(a.devices):
                    dev = by_name.get(name)
                    if dev is None:
                        errors.append(
                            (
                                (*base, "devices", di),
                                f"unknown device {name!r}; known: {', '.join(sorted(by_name))}",
                            )
                        )
                    elif dev.kind != want:
                        errors.append(
                            (
                                (*base, "devices", di),
                                f"device {name!r} is a {dev.kind}; a {a.kind} action needs a {want}",
                            )
                        )
                if a.group is not None:
                    if a.group not in zones:
                        errors.append(
                            (
                                (*base, "group"),
                                f"no device has zone {a.group!r}; zones: {', '.join(sorted(zones)) or 'none'}",
                            )
                        )
                    members = [d for d in cfg.devices if d.zone == a.group]
                    wrong = [d.name for d in members if d.kind != want]
                    if wrong:
                        errors.append(
                            (
                                (*base, "group"),
                                f"group {a.group!r} holds {', '.join(wrong)}, not {want} devices",
                            )
                        )
                    targets += [d.name for d in members if d.name not in targets]
                if a.kind == "hvac" and getattr(a, "setpoint_offset_c", None) and a.setpoint_offset_c > 4:  # type: ignore[union-attr]
                    warnings.append(
                        (
                            (*base, "setpoint_offset_c"),
                            f"an offset of {a.setpoint_offset_c} °C is large; occupants will notice above 2-3 °C",
                        )
                    )  # type: ignore[union-attr]
                if a.expected_kw is not None:
                    for name in targets:
                        dev = by_name.get(name)
                        if dev is not None and dev.rated_kw and a.expected_kw > dev.rated_kw * 1.01:
                            errors.append(
                                (
                                    (*base, "expected_kw"),
                                    f"{a.expected_kw} kW expected from {name!r} rated {dev.rated_kw} kW (W instead of kW?)",
                                )
                            )
                for name in targets:
                    dev = by_name.get(name)
                    if dev is None:
                        continue
                    expected += a.expected_kw or (dev.rated_kw or 0.0) * (0.25 if a.kind == "hvac" else 1.0)
        if expected < cfg.contract.band_kw()[0]:
            errors.append(
                (
                    ("strategies", si),
                    f"strategy {s.name!r} can shed about {expected:.0f} kW, below the band's minimum "
                    f"{cfg.contract.band_kw()[0]:.0f} kW ({cfg.contract.band_pct[0]:g} % of {cfg.contract.peak_kw:g} kW)",
                )
            )
        total_expected = max(total_expected, expected)
    programs = {p for s in cfg.strategies for p in s.programs}
    if not any(s.default for s in cfg.strategies) and not {"contracted", "realtime"} <= programs:
        warnings.append(
            (("strategies",), "no default strategy and not every program has one; the first strategy is used")
        )
    if sum(1 for s in cfg.strategies if s.default) > 1:
        errors.append((("strategies",), "more than one strategy has default: true"))
    names = [s.name for s in cfg.strategies]
    for si, n in enumerate(names):
        if names.index(n) != si:
            errors.append((("strategies", si, "name"), f"strategy name {n!r} is used twice"))
    return errors, warnings


def load_site_config(path: str | Path) -> tuple[SiteConfig, list[str]]:
    """Load, validate and check a config (plus conf.d/*.yaml beside it). Returns (config, warnings).

    Raises ConfigError with one `file:line:col: field: message` line per problem.
    """
    main = Path(path)
    try:
        source: LoadedYaml = load_yaml_files(expand_config_paths(main))
    except ConfigFileError as exc:
        raise ConfigError([str(exc)]) from None
    try:
        cfg = SiteConfig.model_validate(source.data)
    except ValidationError as exc:
        raise ConfigError(format_validation_errors(exc, source, SiteConfig)) from None
    errors, warnings = semantic_checks(cfg)
    fmt = [format_error_line(source.locate(p), format_path(p), m) for p, m in errors]
    warn = [format_error_line(source.locate(p), format_path(p), "warning: " + m) for p, m in warnings]
    if fmt:
        raise ConfigError(fmt, warn)
    return cfg, warn
