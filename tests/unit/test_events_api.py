"""docs/mqtt-api.md and config/schemas/ stay true: every JSON block in the API doc is a valid payload,
and the payload schemas are what the models generate (`python -m agent.events.model config/schemas`)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config.model import ContractConfig
from agent.events.model import ERROR_CODES, parse_event, payload_models, payload_schemas

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "mqtt-api.md"
SCHEMAS = REPO / "config" / "schemas"
BLOCK = re.compile(
    r"<!-- (example|payload): ([a-z-]+)(?: \(([a-z-]+)\))? -->\n```(json|yaml)\n(.*?)\n```", re.S
)


def doc_blocks() -> list[tuple[str, str, str, str]]:
    """(kind, name, model stem, text) of every marked block."""
    out = []
    for kind, name, stem, _lang, text in BLOCK.findall(DOC.read_text()):
        out.append((kind, name, stem or name, text))
    return out


def doc_example(name: str) -> dict[str, Any]:
    """An `example:` block of the API doc, parsed: the tests publish these verbatim."""
    for kind, n, _stem, text in doc_blocks():
        if kind == "example" and n == name:
            return json.loads(text)
    raise KeyError(name)


def doc_example_text(name: str) -> str:
    for kind, n, _stem, text in doc_blocks():
        if kind == "example" and n == name:
            return text
    raise KeyError(name)


def test_every_json_block_is_marked() -> None:
    text = DOC.read_text()
    assert text.count("```json") == len([b for b in doc_blocks() if b[2] != "contract"])


@pytest.mark.parametrize("block", doc_blocks(), ids=lambda b: b[1] if isinstance(b, tuple) else str(b))
def test_doc_block_is_a_valid_payload(block: tuple[str, str, str, str]) -> None:
    _kind, _name, stem, text = block
    if stem == "contract":
        ContractConfig.model_validate(yaml.safe_load(text)["contract"])
        return
    data = json.loads(text)
    if stem == "dr-event":
        parse_event(json.dumps(data))
    else:
        payload_models()[stem].model_validate(data)


def test_schemas_are_generated_from_the_models() -> None:
    for stem, schema in payload_schemas().items():
        path = SCHEMAS / f"{stem}.schema.json"
        assert path.exists(), f"{path} missing: run python -m agent.events.model config/schemas"
        assert json.loads(path.read_text()) == schema, (
            f"{path} is stale: run python -m agent.events.model config/schemas"
        )


def test_every_error_code_is_documented() -> None:
    text = DOC.read_text()
    for code in ERROR_CODES:
        assert f"| `{code}` |" in text, code
