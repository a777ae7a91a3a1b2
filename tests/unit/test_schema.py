"""The committed JSON Schemas are what `dr-agent schema` generates, every field explains itself,
and an editor checking a shipped example against the schema agrees with `dr-agent validate`."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from agent.config.load import is_strategy_file, json_schema, load_site_config, load_strategy_file
from agent.config.model import SiteConfig
from strategies.model import Strategy
from tests.helpers import dr_agent

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = {
    "site-config.schema.json": [],
    "strategy.schema.json": ["--strategy"],
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_committed_schema_is_up_to_date(name: str) -> None:
    proc = subprocess.run([*dr_agent(), "schema", *SCHEMAS[name]], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    committed = (REPO / "config" / "schemas" / name).read_text(encoding="utf-8")
    flag = " --strategy" if SCHEMAS[name] else ""
    assert proc.stdout == committed, (
        f"config/schemas/{name} is stale: run `dr-agent schema{flag} -o config/schemas/{name}` and commit it"
    )


def _properties(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for model, body in [("(root)", schema), *schema.get("$defs", {}).items()]:
        for field, spec in body.get("properties", {}).items():
            out.append((f"{model}.{field}", spec))
    return out


def _strategy_models(schema: dict[str, Any]) -> set[str]:
    return {"(root)", *schema.get("$defs", {})}


def test_every_strategy_field_has_title_and_description() -> None:
    schema = json.loads((REPO / "config" / "schemas" / "strategy.schema.json").read_text())
    missing = [
        name for name, spec in _properties(schema) if not spec.get("description") or not spec.get("title")
    ]
    assert not missing, f"fields without title/description: {missing}"


def test_every_site_config_field_has_a_description() -> None:
    schema = json.loads((REPO / "config" / "schemas" / "site-config.schema.json").read_text())
    missing = [name for name, spec in _properties(schema) if not spec.get("description")]
    assert not missing, f"fields without a description: {missing}"
    # Strategy files are part of the site config's language.
    assert "strategy_files" in schema["properties"] and "strategy_select" in schema["properties"]


def test_examples_point_editors_at_the_schema() -> None:
    examples = REPO / "strategies" / "examples"
    for path in examples.glob("*.yaml"):
        first = path.read_text().splitlines()[0]
        name = "strategy" if path.name.endswith(".strategy.yaml") else "site-config"
        assert first == f"# yaml-language-server: $schema=../../config/schemas/{name}.schema.json", path
        assert (path.parent / first.split("=", 1)[1]).resolve().is_file()


# Every YAML file the project ships as an example: site configs and strategy files.
SHIPPED = sorted([*(REPO / "config").glob("*.yaml"), *(REPO / "strategies" / "examples").glob("*.yaml")])


def _as_json(value: Any) -> Any:
    """YAML data as an editor's schema checker sees it: dates are strings in JSON."""
    if isinstance(value, dict):
        return {str(k): _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _schema_errors(schema: dict[str, Any], data: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(_as_json(data))]


def test_every_shipped_example_is_checked() -> None:
    names = {p.name for p in SHIPPED}
    assert {"site.example.yaml", "demo-site.yaml", "office.yaml", "office-fast.strategy.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_schema_and_validate_agree_on_shipped_examples(path: Path) -> None:
    strategy = path.name.endswith(".strategy.yaml")
    assert is_strategy_file(path) == strategy
    # validate accepts it ...
    if strategy:
        load_strategy_file(path)
    else:
        load_site_config(path)
    # ... and so does the schema an editor uses: generated now, and the committed file.
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    generated = json.loads(json_schema(Strategy if strategy else SiteConfig))
    committed = json.loads(
        (REPO / "config" / "schemas" / ("strategy" if strategy else "site-config"))
        .with_suffix(".schema.json")
        .read_text(encoding="utf-8")
    )
    assert _schema_errors(generated, data) == []
    assert _schema_errors(committed, data) == []


def test_schema_refuses_what_validate_refuses() -> None:
    """The schema is no rubber stamp: a misspelt key and a missing section fail it too."""
    schema = json.loads(json_schema(SiteConfig))
    data = yaml.safe_load((REPO / "tests" / "data" / "broken" / "33-misspelt-section.yaml").read_text())
    errors = _schema_errors(schema, data)
    assert any("'contrat' was unexpected" in e for e in errors), errors
    assert any("'contract' is a required property" in e for e in errors), errors
    no_strategy = yaml.safe_load((REPO / "tests" / "data" / "broken" / "38-no-strategy.yaml").read_text())
    assert _schema_errors(schema, no_strategy), "a config with no strategy at all must fail the schema"
