"""The committed JSON Schemas are what `dr-agent schema` generates, and every field explains itself."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

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
