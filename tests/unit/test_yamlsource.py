"""YAML source locations and config error lines: every assertion names the exact
``file:line:col`` an operator would be sent to."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, ValidationError, field_validator
from pydantic_core import CoreSchema

from agent.config.yamlsource import (
    ConfigFileError,
    FieldError,
    LoadedYaml,
    SourceLocation,
    YamlPath,
    did_you_mean,
    expand_config_paths,
    format_error_line,
    format_path,
    format_validation_errors,
    load_yaml,
    load_yaml_files,
)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


DEVICES = """
version: 1
devices:
  - name: meter-1
    kind: meter
    phases: 3
  - name: hvac-1
    kind: hvac
    registers:
      address: 40001
      count: 2
"""


# --- locations -----------------------------------------------------------------------


def test_data_is_what_safe_load_returns(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", DEVICES)
    assert load_yaml(path).data == yaml.safe_load(path.read_text())


def test_locations_of_nested_keys_and_list_items(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", DEVICES)
    src = load_yaml(path)
    assert str(src.locate(("version",))) == f"{path}:1:1"
    assert str(src.locate(("devices",))) == f"{path}:2:1"
    assert str(src.locate(("devices", 0))) == f"{path}:3:5"
    assert str(src.locate(("devices", 0, "phases"))) == f"{path}:5:5"
    assert str(src.locate(("devices", 1))) == f"{path}:6:5"
    assert str(src.locate(("devices", 1, "registers", "address"))) == f"{path}:9:7"
    assert src.locate(("devices", 1, "registers", "count")) == SourceLocation(str(path), 10, 7)


def test_flow_style_and_scalar_list_items(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "config.yaml",
        """
        limits: {import_kw: 50, export_kw: 10}
        tariffs:
          - 0.21
          -   0.34
        """,
    )
    src = load_yaml(path)
    assert str(src.locate(("limits", "export_kw"))) == f"{path}:1:25"
    assert str(src.locate(("tariffs", 1))) == f"{path}:4:7"


def test_missing_path_falls_back_to_nearest_parent(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", DEVICES)
    src = load_yaml(path)
    # The mapping that should have held the field: the `registers:` key.
    assert str(src.locate(("devices", 1, "registers", "unit_id"))) == f"{path}:8:5"
    assert str(src.locate(("devices", 0, "registers", "address"))) == f"{path}:3:5"
    assert str(src.locate(("mqtt", "host"))) == f"{path}:1:1"


def test_merge_key_locations_point_at_the_definition(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "config.yaml",
        """
        base: &base
          port: 502
          timeout: 3
        device:
          <<: *base
          timeout: 5
        """,
    )
    src = load_yaml(path)
    assert src.data["device"] == {"port": 502, "timeout": 5}
    assert str(src.locate(("device", "port"))) == f"{path}:2:3"
    assert str(src.locate(("device", "timeout"))) == f"{path}:6:3"


def test_empty_file_is_an_empty_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "10-off.yaml", "# everything commented out\n")
    src = load_yaml(path)
    assert src.data == {}
    assert str(src.locate(("devices",))) == f"{path}:1:1"


# --- file errors ---------------------------------------------------------------------


def test_duplicate_key_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "config.yaml",
        """
        devices:
          - name: a
            unit_id: 1
            unit_id: 2
        """,
    )
    with pytest.raises(ConfigFileError) as info:
        load_yaml(path)
    assert str(info.value) == (f"{path}:4:5: devices[0].unit_id: duplicate key 'unit_id' (first at line 3)")
    assert info.value.location == SourceLocation(str(path), 4, 5)


def test_overriding_a_merged_key_is_not_a_duplicate(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", "a: &a {x: 1}\nb:\n  <<: *a\n  x: 2\n")
    assert load_yaml(path).data == {"a": {"x": 1}, "b": {"x": 2}}


def test_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "config.yaml",
        """
        version: 1
        mqtt:
          host: broker
         port: 1883
        """,
    )
    with pytest.raises(ConfigFileError) as info:
        load_yaml(path)
    assert str(info.value) == (
        f"{path}:4:2: yaml: expected <block end>, but found '<block mapping start>'"
        " (while parsing a block mapping at line 1, column 1)"
    )
    assert info.value.location == SourceLocation(str(path), 4, 2)


def test_unclosed_quote_reports_where_it_started(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", 'name: "meter\nport: 2\n')
    with pytest.raises(ConfigFileError) as info:
        load_yaml(path)
    assert str(info.value) == (
        f"{path}:3:1: yaml: found unexpected end of stream"
        " (while scanning a quoted scalar at line 1, column 7)"
    )


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", "# devices\n- name: a\n")
    with pytest.raises(ConfigFileError) as info:
        load_yaml(path)
    assert str(info.value) == (
        f"{path}:2:1: yaml: the top level must be a mapping of keys to values, found a list"
    )


def test_control_character_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", "a: 1\nb: x\x07\n")
    with pytest.raises(ConfigFileError) as info:
        load_yaml(path)
    assert str(info.value) == (
        f"{path}:2:5: yaml: unacceptable character #x0007: special characters are not allowed"
    )


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match=r"missing\.yaml: cannot read: No such file"):
        load_yaml(tmp_path / "missing.yaml")


# --- several files -------------------------------------------------------------------


def test_merge_of_two_files_keeps_each_files_locations(tmp_path: Path) -> None:
    main = write(
        tmp_path,
        "config.yaml",
        """
        version: 1
        mqtt:
          host: broker
          port: 1883
        devices:
          - name: old
        """,
    )
    extra = write(
        tmp_path,
        "conf.d/10-site.yaml",
        """
        # site overrides
        mqtt:
          port: 8883
          tls: true
        devices:
          - name: meter-1
          - name: hvac-1
        """,
    )
    src = load_yaml_files([main, extra])
    assert src.data == {
        "version": 1,
        "mqtt": {"host": "broker", "port": 8883, "tls": True},
        "devices": [{"name": "meter-1"}, {"name": "hvac-1"}],
    }
    assert src.files == (main, extra)
    assert str(src.locate(("version",))) == f"{main}:1:1"
    assert str(src.locate(("mqtt", "host"))) == f"{main}:3:3"
    assert str(src.locate(("mqtt", "port"))) == f"{extra}:3:3"
    assert str(src.locate(("mqtt", "tls"))) == f"{extra}:4:3"
    # The list was replaced whole: its items, and a missing field in them, are in the later file.
    assert str(src.locate(("devices", 1, "name"))) == f"{extra}:7:5"
    assert str(src.locate(("devices", 0, "kind"))) == f"{extra}:6:5"
    assert str(src.locate(("unknown",))) == f"{main}:1:1"


def test_replaced_subtree_forgets_the_earlier_files_locations(tmp_path: Path) -> None:
    main = write(tmp_path, "config.yaml", "a:\n  - x: 1\n  - x: 2\n")
    extra = write(tmp_path, "conf.d/a.yaml", "a: []\n")
    src = load_yaml_files([main, extra])
    assert src.data == {"a": []}
    assert str(src.locate(("a", 1, "x"))) == f"{extra}:1:1"


def test_expand_config_paths(tmp_path: Path) -> None:
    main = write(tmp_path, "config.yaml", "version: 1\n")
    assert expand_config_paths(main) == [main]
    b = write(tmp_path, "conf.d/20-b.yaml", "")
    a = write(tmp_path, "conf.d/10-a.yaml", "")
    write(tmp_path, "conf.d/.#10-a.yaml", "")
    write(tmp_path, "conf.d/notes.txt", "")
    assert expand_config_paths(main) == [main, a, b]


# --- pydantic errors -----------------------------------------------------------------


class Registers(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: int
    count: int = 1


class Meter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["meter"]
    name: str
    phases: Literal[1, 3] = 3


class Hvac(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["hvac"]
    name: str
    registers: Registers
    setpoint_c: float = 21.0

    @field_validator("setpoint_c")
    @classmethod
    def _plausible(cls, value: float) -> float:
        if not 5 <= value <= 35:
            raise ValueError("setpoint must be between 5 and 35 °C")
        return value


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Literal[1]
    devices: list[Annotated[Meter | Hvac, Field(discriminator="kind")]] = []
    interval_s: float = 1.0


def errors_for(path: Path) -> list[str]:
    src = load_yaml(path)
    with pytest.raises(ValidationError) as info:
        Config.model_validate(src.data)
    return format_validation_errors(info.value, src, Config)


def test_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", "version: 1\ninterval_s: fast\n")
    assert errors_for(path) == [
        f"{path}:2:1: interval_s: Input should be a valid number, unable to parse string as a number"
    ]


def test_missing_field_points_at_the_parent(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "config.yaml",
        """
        devices:
          - kind: hvac
            name: hvac-1
            registers:
              count: 2
        """,
    )
    assert errors_for(path) == [
        f"{path}:1:1: version: required field missing",
        f"{path}:4:5: devices[0].registers.address: required field missing",
    ]


def test_extra_field_lists_allowed_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "config.yaml",
        """
        version: 1
        intervall_s: 2
        devices:
          - kind: hvac
            name: hvac-1
            registers: {address: 40001, cnt: 2}
        """,
    )
    assert errors_for(path) == [
        f"{path}:6:33: devices[0].registers.cnt: unknown field 'cnt'; did you mean 'count'? "
        "allowed: address, count",
        f"{path}:2:1: intervall_s: unknown field 'intervall_s'; did you mean 'interval_s'? "
        "allowed: devices, interval_s, version",
    ]


def test_extra_field_without_model_has_no_allowed_list(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", "version: 1\ncolour: red\n")
    src = load_yaml(path)
    with pytest.raises(ValidationError) as info:
        Config.model_validate(src.data)
    assert format_validation_errors(info.value, src) == [f"{path}:2:1: colour: unknown field 'colour'"]


def test_literal_error(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", "version: 2\n")
    assert errors_for(path) == [f"{path}:1:1: version: Input should be 1, got 2"]


def test_discriminated_union_error_in_second_item(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "config.yaml",
        """
        version: 1
        devices:
          - kind: meter
            name: meter-1
          - kind: meter
            name: meter-2
            phases: 2
            unit: 7
          - kind: hvac
            name: hvac-1
        """,
    )
    assert errors_for(path) == [
        f"{path}:7:5: devices[1].phases: Input should be 1 or 3, got 2",
        f"{path}:8:5: devices[1].unit: unknown field 'unit'; allowed: kind, name, phases",
        f"{path}:9:5: devices[2].registers: required field missing",
    ]


def test_unknown_discriminator_points_at_the_tag(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "config.yaml",
        """
        version: 1
        devices:
          - name: a
            kind: heatpump
          - name: b
        """,
    )
    assert errors_for(path) == [
        f"{path}:4:5: devices[0].kind: unknown value 'heatpump'; expected one of: 'meter', 'hvac'",
        f"{path}:5:5: devices[1].kind: required field missing",
    ]


def test_custom_validator_message_without_prefix(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "config.yaml",
        """
        version: 1
        devices:
          - kind: meter
            name: m
          - kind: hvac
            name: h
            registers: {address: 1}
            setpoint_c: 80
        """,
    )
    assert errors_for(path) == [f"{path}:8:5: devices[1].setpoint_c: setpoint must be between 5 and 35 °C"]


def test_plain_union_member_names_are_dropped(tmp_path: Path) -> None:
    class Loose(BaseModel):
        port: int | str

    path = write(tmp_path, "config.yaml", "port: [1]\n")
    src = load_yaml(path)
    with pytest.raises(ValidationError) as info:
        Loose.model_validate(src.data)
    assert format_validation_errors(info.value, src) == [
        f"{path}:1:1: port: Input should be a valid integer",
        f"{path}:1:1: port: Input should be a valid string",
    ]


def test_errors_in_merged_files_point_into_the_right_file(tmp_path: Path) -> None:
    main = write(tmp_path, "config.yaml", "version: 1\ninterval_s: 1\n")
    extra = write(tmp_path, "conf.d/10.yaml", "# slower\ninterval_s: slow\n")
    src = load_yaml_files([main, extra])
    with pytest.raises(ValidationError) as info:
        Config.model_validate(src.data)
    assert format_validation_errors(info.value, src, Config) == [
        f"{extra}:2:1: interval_s: Input should be a valid number, unable to parse string as a number"
    ]


# --- helpers -------------------------------------------------------------------------


def test_format_error_line_and_path() -> None:
    loc = SourceLocation("config.yaml", 12, 3)
    path = format_path(("devices", 2, "registers", "address"))
    assert path == "devices[2].registers.address"
    assert format_error_line(loc, path, "unknown device 'x'") == (
        "config.yaml:12:3: devices[2].registers.address: unknown device 'x'"
    )
    assert format_error_line(loc, "", "empty") == "config.yaml:12:3: empty"


def test_locate_accepts_any_iterable() -> None:
    where: dict[YamlPath, SourceLocation] = {
        (): SourceLocation("f", 1, 1),
        ("a",): SourceLocation("f", 2, 1),
    }
    src = LoadedYaml({"a": [1]}, where, ())
    assert str(src.locate(["a", 0])) == "f:2:1"


def test_did_you_mean() -> None:
    assert did_you_mean("setpoint_offest_c", ["setpoint_c", "setpoint_offset_c"]) == (
        "did you mean 'setpoint_offset_c'?"
    )
    assert did_you_mean("HVAC", ["hvac", "meter"]) == "did you mean 'hvac'?"  # case alone
    assert did_you_mean("colour", ["devices", "version"]) == ""  # nothing close: no guess
    assert did_you_mean(7, ["7"]) == ""


def test_misspelt_required_field_is_one_error_not_two(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", "# a comment first\nversoin: 1\n")
    assert errors_for(path) == [
        f"{path}:2:1: versoin: unknown field 'versoin'; did you mean 'version'? "
        "allowed: devices, interval_s, version"
    ]


def test_missing_top_level_field_points_at_the_first_key_not_a_comment(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", "# site A\n\ninterval_s: 2\n")
    assert errors_for(path) == [f"{path}:3:1: version: required field missing"]


def test_literal_and_tag_errors_suggest_the_closest_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "config.yaml",
        """
        version: 1
        devices:
          - {kind: hvca, name: a}
          - {kind: meter, name: b, phases: x}
        """,
    )
    assert errors_for(path) == [
        f"{path}:3:6: devices[0].kind: unknown value 'hvca'; did you mean 'hvac'? "
        "expected one of: 'meter', 'hvac'",
        f"{path}:4:28: devices[1].phases: Input should be 1 or 3, got 'x'",
    ]


class LateDevice:
    """A union built when the schema is (as strategies build the action union from the kind registry)."""

    members: ClassVar[list[type[BaseModel]]] = [Meter]

    @classmethod
    def resolved_type(cls) -> object:
        union: object = cls.members[0]
        for m in cls.members[1:]:
            union = union | m
        return Annotated[union, Field(discriminator="kind")]

    @classmethod
    def __get_pydantic_core_schema__(cls, source: object, handler: GetCoreSchemaHandler) -> CoreSchema:
        return handler.generate_schema(cls.resolved_type())


class LateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    devices: list[LateDevice]


def test_a_late_built_union_still_names_the_fields_and_the_closest_one(tmp_path: Path) -> None:
    LateDevice.members = [Meter, Hvac]
    LateConfig.model_rebuild(force=True)
    path = write(tmp_path, "config.yaml", "devices:\n  - {kind: hvac, name: a, setpont_c: 20, registers: {address: 1}}\n")
    src = load_yaml(path)
    with pytest.raises(ValidationError) as info:
        LateConfig.model_validate(src.data)
    assert format_validation_errors(info.value, src, LateConfig) == [
        f"{path}:2:27: devices[0].setpont_c: unknown field 'setpont_c'; did you mean 'setpoint_c'? "
        "allowed: kind, name, registers, setpoint_c"
    ]


class Bus(BaseModel):
    model_config = ConfigDict(extra="forbid")
    endpoints: list[str]
    devices: list[dict[str, str]]

    @field_validator("devices")
    @classmethod
    def _known(cls, v: list[dict[str, str]]) -> list[dict[str, str]]:
        for i, d in enumerate(v):
            if d.get("endpoint") != "bus":
                raise FieldError(f"unknown endpoint {d.get('endpoint')!r}", i, "endpoint")
        return v


def test_field_error_points_below_the_validated_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "config.yaml",
        """
        endpoints: [bus]
        devices:
          - name: a
            endpoint: bus
          - name: b
            endpoint: bux
        """,
    )
    src = load_yaml(path)
    with pytest.raises(ValidationError) as info:
        Bus.model_validate(src.data)
    assert format_validation_errors(info.value, src, Bus) == [
        f"{path}:6:5: devices[1].endpoint: unknown endpoint 'bux'"
    ]
