"""Hostile and malformed input: each case is refused with a clear error naming the field, and changes nothing.

The event and price parsers, the signed envelope, the config and strategy
loader and the Modbus decoder, case by case (oversized, deeply nested,
NaN/Infinity, unicode and control characters in ids, huge numbers, negative
targets, wrong types, wildcards), then properties over generated input and,
through the daemon's own intake, no partial apply: a refused message leaves
the events, the database and the retained states as they were.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cli.simulate import loopback_transports
from agent.config.load import ConfigError, load_site_config
from agent.events.model import MAX_JSON_DEPTH, DrEvent, EventError, json_depth
from agent.platform.clock import ManualClock
from agent.runtime.daemon import Agent
from drivers.codec import decode
from drivers.sim.plant import SimulatedPlant
from tests.conftest import DEMO_CONFIG
from tests.faults.targets import (
    EVENT,
    NOW,
    PRICE,
    REPO,
    config_target,
    envelope_target,
    event_target,
    make_verifier,
    modbus_target,
    price_target,
    signed,
)


def with_(base: dict[str, Any], **over: Any) -> bytes:
    return json.dumps({**base, **over}).encode()


def raw_field(name: str, token: str) -> bytes:
    """EVENT with `name` set to a raw JSON token (NaN, 1e999, ...) that json.dumps would not write."""
    body = json.dumps({k: v for k, v in EVENT.items() if k != name})
    return f'{body[:-1]}, "{name}": {token}}}'.encode()


def nested(levels: int, leaf: str = "1", open_: str = "[", close: str = "]") -> str:
    return open_ * levels + leaf + close * levels


def obj_nested(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


# -- events ------------------------------------------------------------------------------

EVENT_CASES: list[tuple[str, bytes, str, str | None]] = [
    # (label, raw, code, field)
    ("oversized", b'{"event_id": "' + b"x" * 70_000 + b'"}', "too_large", None),
    ("40 KB nested array", nested(20_000).encode(), "too_deep", None),
    ("nested objects", obj_nested(5_000).encode(), "too_deep", None),
    ("deep target", with_(EVENT, target=json.loads(nested(MAX_JSON_DEPTH + 1))), "too_deep", None),
    ("one level past the limit", with_(EVENT, x=json.loads(nested(MAX_JSON_DEPTH))), "too_deep", None),
    ("at the depth limit: parsed", with_(EVENT, x=json.loads(nested(MAX_JSON_DEPTH - 1))), "unknown_field", "x"),
    ("NaN", raw_field("ramp_up_s", "NaN"), "bad_json", None),
    ("Infinity", raw_field("ramp_up_s", "Infinity"), "bad_json", None),
    ("-Infinity", raw_field("priority", "-Infinity"), "bad_json", None),
    ("1e999 overflows to inf", raw_field("ramp_up_s", "1e999"), "invalid_field", "ramp_up_s"),
    ("duplicate key", with_(EVENT)[:-1] + b', "event_id": "other"}', "bad_json", None),
    ("invalid UTF-8", b'{"event_id": "\xff\xfe"}', "bad_json", None),
    ("5000-digit integer", raw_field("priority", "9" * 5000), "bad_json", None),
    ("top-level array", b"[1, 2]", "bad_event", None),
    ("empty", b"", "bad_json", None),
    ("unicode id", with_(EVENT, event_id="événement-1"), "invalid_field", "event_id"),
    ("NUL in id", with_(EVENT, event_id="a\u0000b"), "invalid_field", "event_id"),
    ("newline at the end of id", with_(EVENT, event_id="abc\n"), "invalid_field", "event_id"),
    ("right-to-left override in id", with_(EVENT, event_id="a\u202eb"), "invalid_field", "event_id"),
    ("129-character id", with_(EVENT, event_id="a" * 129), "invalid_field", "event_id"),
    ("id with a topic level", with_(EVENT, event_id="a/b"), "invalid_field", "event_id"),
    ("id is the + wildcard", with_(EVENT, event_id="+"), "invalid_field", "event_id"),
    ("id with the # wildcard", with_(EVENT, event_id="x#"), "invalid_field", "event_id"),
    ("id is a number", with_(EVENT, event_id=7), "invalid_field", "event_id"),
    ("modification_number 10**30", with_(EVENT, modification_number=10**30), "invalid_field", "modification_number"),
    ("modification_number 2**32", with_(EVENT, modification_number=2**32), "invalid_field", "modification_number"),
    ("modification_number -1", with_(EVENT, modification_number=-1), "invalid_field", "modification_number"),
    ("modification_number 1.0", with_(EVENT, modification_number=1.0), "invalid_field", "modification_number"),
    ("modification_number true", with_(EVENT, modification_number=True), "invalid_field", "modification_number"),
    ("priority '1'", with_(EVENT, priority="1"), "invalid_field", "priority"),
    ("priority 1.5", with_(EVENT, priority=1.5), "invalid_field", "priority"),
    ("test_event 'yes'", with_(EVENT, test_event="yes"), "invalid_field", "test_event"),
    ("test_event 1", with_(EVENT, test_event=1), "invalid_field", "test_event"),
    ("duration_s '1800'", with_(EVENT, duration_s="1800"), "invalid_field", "duration_s"),
    ("duration_s null", with_(EVENT, duration_s=None), "invalid_field", "duration_s"),
    ("duration_s true", with_(EVENT, duration_s=True), "invalid_field", "duration_s"),
    ("huge duration", with_(EVENT, duration_s=1e308, intervals=None), "invalid_field", "duration_s"),
    ("a day and a second", with_(EVENT, duration_s=86401, intervals=None), "invalid_field", "duration_s"),
    ("huge notification", with_(EVENT, notification_s=10**9), "invalid_field", "notification_s"),
    ("negative ramp", with_(EVENT, ramp_up_s=-1), "invalid_field", "ramp_up_s"),
    ("negative reduce_kw", with_(EVENT, intervals=None, target={"reduce_kw": -5}), "invalid_field", "target.reduce_kw"),
    ("negative cap_kw", with_(EVENT, intervals=None, target={"cap_kw": -1}), "invalid_field", "target.cap_kw"),
    ("101 % of peak", with_(EVENT, intervals=None, target={"reduce_pct_of_peak": 101}), "invalid_field", "target.reduce_pct_of_peak"),
    ("0 % of peak", with_(EVENT, intervals=None, target={"reduce_pct_of_peak": 0}), "invalid_field", "target.reduce_pct_of_peak"),
    ("reduce_kw '50'", with_(EVENT, intervals=None, target={"reduce_kw": "50"}), "invalid_field", "target.reduce_kw"),
    ("negative interval target", with_(EVENT, intervals=[{"duration_s": 900, "target": {"reduce_kw": -1}}]), "invalid_field", "intervals[0].target.reduce_kw"),
    ("97 intervals", with_(EVENT, duration_s=97, intervals=[{"duration_s": 1, "target": {"reduce_kw": 1}}] * 97), "invalid_field", "intervals"),
    ("intervals do not fill", with_(EVENT, duration_s=901), "invalid_field", None),
    ("target is a list", with_(EVENT, intervals=None, target=[1]), "invalid_field", "target"),
    ("start: 12345", with_(EVENT, start=12345), "invalid_field", "start"),
    ("start as an epoch string", with_(EVENT, start="1782885600"), "invalid_field", "start"),
    ("start as a date", with_(EVENT, start="2026-07-01"), "invalid_field", "start"),
    ("start without offset", with_(EVENT, start="2026-07-01T14:00:00"), "invalid_field", "start"),
    ("start in 1999", with_(EVENT, start="1999-07-01T14:00:00+08:00"), "invalid_field", "start"),
    ("start in 3000", with_(EVENT, start="3000-07-01T14:00:00+08:00"), "invalid_field", "start"),
    ("start in Arabic-Indic digits", with_(EVENT, start="٢٠٢٦-07-01T14:00:00+08:00"), "invalid_field", "start"),
    ("start month 13", with_(EVENT, start="2026-13-01T14:00:00+08:00"), "invalid_field", "start"),
    ("start offset +24:00", with_(EVENT, start="2026-07-01T14:00:00+24:00"), "invalid_field", "start"),
    ("status 'CANCELLED'", with_(EVENT, status="CANCELLED"), "invalid_field", "status"),
    ("unknown field", with_(EVENT, shed_everything=True), "unknown_field", "shed_everything"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "raw", "code", "field"), EVENT_CASES, ids=[c[0] for c in EVENT_CASES])
def test_hostile_event_is_refused_with_a_clear_error(
    label: str, raw: bytes, code: str, field: str | None
) -> None:
    got = event_target(raw)
    assert isinstance(got, EventError), (label, got)
    assert (got.code, got.field) == (code, field), (label, got)
    if field and field != "event_id":
        assert got.event_id == EVENT["event_id"]  # the reply names the event when it could be read
    if field:
        assert got.message.startswith(field), got.message


@pytest.mark.parametrize(
    "raw",
    [
        with_(EVENT, start="2026-07-01t14:00:00z"),  # RFC 3339 allows lower case
        with_(EVENT, start="2026-07-01 14:00:00.123456789+08:00"),
        with_(EVENT, event_id="a" * 128, modification_number=2**32 - 1, priority=1000),
        with_(EVENT, intervals=None, target={"cap_kw": 0}),
    ],
)
def test_valid_edge_cases_are_accepted(raw: bytes) -> None:
    assert isinstance(event_target(raw), DrEvent)


def test_depth_scan_skips_strings_and_escapes() -> None:
    assert json_depth('{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}') == 1
    assert json_depth('{"a": "\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", "b": [[1]]}') == 3
    assert json_depth('{"a": "\\\\", "b": [[[1]]]}') == 4  # an escaped backslash, then the string ends
    assert json_depth(nested(40)) == MAX_JSON_DEPTH + 1  # stops counting once past the limit
    brackets_in_id = with_(EVENT, event_id="[" * 100)
    got = event_target(brackets_in_id)
    assert isinstance(got, EventError) and got.field == "event_id"


PRICE_CASES: list[tuple[str, bytes, str, str | None]] = [
    ("revision 10**30", with_(PRICE, revision=10**30), "invalid_field", "revision"),
    ("revision '1'", with_(PRICE, revision="1"), "invalid_field", "revision"),
    ("price NaN", json.dumps(PRICE).replace("1.3", "NaN").encode(), "bad_json", None),
    ("price '1.3'", json.dumps(PRICE).replace("1.3", '"1.3"').encode(), "invalid_field", "intervals[0].price"),
    ("price 1e9", json.dumps(PRICE).replace("1.3", "1e9").encode(), "invalid_field", "intervals[0].price"),
    ("start as epoch", json.dumps(PRICE).replace('"2026-07-01T14:20:00+08:00"', "1782886800").encode(), "invalid_field", "intervals[0].start"),
    ("price id with #", with_(PRICE, price_id="cpp#1"), "invalid_field", "price_id"),
    ("price id with a control character", with_(PRICE, price_id="cpp\u00071"), "invalid_field", "price_id"),
    ("289 intervals", with_(PRICE, intervals=PRICE["intervals"][:1] * 289), "invalid_field", "intervals"),
    ("overlapping intervals", with_(PRICE, intervals=PRICE["intervals"][:1] * 2), "invalid_field", None),
    ("deep", with_(PRICE)[:-1] + b', "x": ' + nested(100).encode() + b"}", "too_deep", None),
]  # fmt: skip


@pytest.mark.parametrize(("label", "raw", "code", "field"), PRICE_CASES, ids=[c[0] for c in PRICE_CASES])
def test_hostile_price_is_refused_with_a_clear_error(
    label: str, raw: bytes, code: str, field: str | None
) -> None:
    got = price_target(raw)
    assert isinstance(got, EventError), (label, got)
    assert (got.code, got.field) == (code, field), (label, got)


# -- signed envelope ---------------------------------------------------------------------


def _env(**over: Any) -> bytes:
    env = json.loads(signed(EVENT))
    env.update(over)
    return json.dumps(env).encode()


ENVELOPE_CASES: list[tuple[str, bytes, str, str | None]] = [
    ("deep payload, validly signed", signed(json.dumps({**EVENT, "x": json.loads(nested(500))})), "too_deep", None),
    ("NaN payload, validly signed", signed(json.dumps(EVENT)[:-1] + ', "ramp_up_s": NaN}'), "bad_json", None),
    ("payload not an object", signed("[1, 2, 3]"), "bad_event", None),
    ("ts as a string", _env(ts=str(NOW)), "invalid_field", "envelope.ts"),
    ("ts true", _env(ts=True), "invalid_field", "envelope.ts"),
    ("ts 1e308", _env(ts=1e308), "invalid_field", "envelope.ts"),
    ("ts NaN", _env()[:-1] + b', "x": NaN}', "bad_json", None),
    ("key id with a control character", _env(key_id="k\u0000"), "invalid_field", "envelope.key_id"),
    ("nonce with a wildcard", _env(nonce="nonce-with-#-in-it"), "invalid_field", "envelope.nonce"),
    ("sig not base64", _env(sig="*" * 44), "bad_signature", "envelope.sig"),
    ("payload a number", _env(payload=12), "invalid_field", "envelope.payload"),
    ("lone surrogate in payload", _env(payload=json.dumps(EVENT).replace("js-", "\ud800")), "invalid_field", "envelope.payload"),
    ("deep envelope", _env()[:-1] + b', "x": ' + nested(10_000).encode() + b"}", "too_deep", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("label", "raw", "code", "field"), ENVELOPE_CASES, ids=[c[0] for c in ENVELOPE_CASES]
)
async def test_hostile_envelope_is_refused_with_a_clear_error(
    label: str, raw: bytes, code: str, field: str | None
) -> None:
    got = await envelope_target(make_verifier(), raw)
    assert isinstance(got, EventError), (label, got)
    assert (got.code, got.field) == (code, field), (label, got)


async def test_a_signed_event_is_still_taken_and_its_replay_refused() -> None:
    v = make_verifier()
    raw = signed(EVENT)
    assert isinstance(await envelope_target(v, raw), DrEvent)
    again = await envelope_target(v, raw)
    assert isinstance(again, EventError) and again.code == "replay"


# -- config and strategy loader ----------------------------------------------------------

DEMO = DEMO_CONFIG.read_text()
STRATEGY = (REPO / "strategies" / "examples" / "office-fast.strategy.yaml").read_text()
BOMB = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefg", "bcdefgh", strict=False)
)

CONFIG_CASES: list[tuple[str, str, str]] = [
    # (label, file text, what the error says)
    ("flow nesting 2000 deep", "site: " + nested(2000) + "\n", "nested more than 100 deep"),
    ("block nesting 3000 deep", "".join("  " * i + "a:\n" for i in range(3000)), "nested too deeply"),
    ("alias bomb (10**8 items)", BOMB, "once aliases are expanded"),
    ("5000-digit number", DEMO.replace("peak_kw: 1000", "peak_kw: 1" + "0" * 5000), "4300 digits"),
    ("peak .nan", DEMO.replace("peak_kw: 1000", "peak_kw: .nan"), "contract.peak_kw"),
    ("control character", DEMO.replace("demo-plant", "demo\x07plant"), "unacceptable character"),
    ("NUL bytes", "\x00\x01\x02", "unacceptable character"),
    ("site id with wildcards", DEMO.replace("demo-plant", "demo/+/#"), "site.id"),
    (
        "topic root with a wildcard",
        DEMO.replace("port: 1883", "port: 1883\n  topic_root: dr/#"),
        "mqtt.topic_root",
    ),
    (
        "topic root with an empty level",
        DEMO.replace("port: 1883", "port: 1883\n  topic_root: dr//x"),
        "mqtt.topic_root",
    ),
    ("negative peak", DEMO.replace("peak_kw: 1000", "peak_kw: -1000"), "contract.peak_kw"),
    ("number as a string", DEMO.replace("peak_kw: 1000", "peak_kw: 1000 MW"), "contract.peak_kw"),
    ("python tag", DEMO.replace("peak_kw: 1000", "peak_kw: !!python/object:os.system {}"), "yaml"),
    ("duplicate key", DEMO.replace("peak_kw: 1000", "peak_kw: 1000\n  peak_kw: 900"), "duplicate key"),
    ("a list at the top", "- 1\n- 2\n", "top level must be a mapping"),
    (
        "profile name too long",
        DEMO.replace("profile: eastron_sdm630", "profile: eastron_" + "9" * 300),
        "cannot be read",
    ),
    ("profile is a directory", DEMO.replace("profile: eastron_sdm630", "profile: /tmp/"), "no profile"),
]


@pytest.mark.parametrize(("label", "text", "says"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_hostile_config_is_refused_with_file_line_col(
    tmp_path: Path, label: str, text: str, says: str
) -> None:
    assert all(s in DEMO for s in ("peak_kw: 1000", "demo-plant", "port: 1883", "profile: eastron_sdm630"))
    got = config_target(tmp_path / "site.yaml", text.encode())
    assert isinstance(got, ConfigError), label
    assert any(says in line for line in got.lines), got.lines
    assert all(line.startswith(f"{tmp_path / 'site.yaml'}:") for line in got.lines), got.lines


@pytest.mark.parametrize("label", ["flow nesting 2000 deep", "alias bomb (10**8 items)", "NUL bytes"])
def test_hostile_strategy_file_is_refused(tmp_path: Path, label: str) -> None:
    text = next(t for lbl, t, _ in CONFIG_CASES if lbl == label)
    got = config_target(tmp_path / "s.strategy.yaml", text.encode(), strategy=True)
    assert isinstance(got, ConfigError), label
    assert not isinstance(
        config_target(tmp_path / "ok.strategy.yaml", STRATEGY.encode(), strategy=True), ConfigError
    )


# -- Modbus decoder ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bool", "int16", "uint32", "float32", "float64", "string"])
def test_no_registers_is_a_short_response_not_an_index_error(dtype: str) -> None:
    with pytest.raises(ValueError, match="needs"):
        decode([], dtype)  # type: ignore[arg-type]


def test_garbage_registers_never_become_nan_readings() -> None:
    # 0x7fc0 0x0000 is a float32 NaN, 0x7f80 0x0000 infinity: engineering() must reject, not pass on.
    for raw in (bytes.fromhex("7fc00000") * 40, bytes.fromhex("7f800000") * 40, b"\xff" * 160, b""):
        modbus_target(raw)


# -- properties --------------------------------------------------------------------------

JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(sorted(DrEvent.model_fields)), value=JSON_VALUE)
def test_any_value_in_any_event_field_is_taken_or_refused_cleanly(field: str, value: Any) -> None:
    event_target(json.dumps({**EVENT, field: value}).encode())


@settings(max_examples=200, deadline=None)
@given(value=JSON_VALUE, path=st.sampled_from(["target", "intervals"]))
def test_any_target_shape_is_taken_or_refused_cleanly(value: Any, path: str) -> None:
    body = {k: v for k, v in EVENT.items() if k != "intervals"}
    body[path] = value
    event_target(json.dumps(body).encode())


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=300))
def test_any_bytes_through_the_modbus_maps(raw: bytes) -> None:
    modbus_target(raw)


# -- no partial apply, through the daemon's own intake -----------------------------------


def _agent(tmp_path: Path) -> tuple[Agent, list[tuple[str, dict[str, Any]]]]:
    cfg, _ = load_site_config(DEMO_CONFIG)
    plant = SimulatedPlant.build(cfg.devices, peak_kw=cfg.contract.peak_kw, meter_name=cfg.site.meter)
    agent = Agent(
        cfg,
        ManualClock(NOW),
        metrics=False,
        transports=loopback_transports(cfg, plant),
        store_path=str(tmp_path / "a.sqlite"),
    )
    sent: list[tuple[str, dict[str, Any]]] = []
    agent.sink = lambda topic, payload: sent.append((topic, payload))
    return agent, sent


async def _snapshot(agent: Agent) -> tuple[Any, ...]:
    rows = await agent.store.events()
    mem = {k: (r.event.modification_number, r.state, r.opt.code) for k, r in agent.events.items()}
    return mem, [(r["event_id"], r["modification_number"], r["state"]) for r in rows]


HOSTILE_STREAM: list[tuple[str, bytes]] = [
    *[(label, raw) for label, raw, _c, _f in EVENT_CASES],
    ("event already over", with_(EVENT, event_id="over-1", start="2026-06-30T14:00:00+08:00")),
    ("cancel of an unknown event", with_(EVENT, event_id="never-seen", status="cancelled")),
    ("duplicate: same id, same number", with_(EVENT)),
    ("duplicate: same id, lower number", with_(EVENT, modification_number=2)),
    ("starts beyond a year", with_(EVENT, event_id="far-1", start="2027-08-01T14:00:00+08:00")),
]


async def test_refused_messages_change_nothing_and_duplicates_are_idempotent(tmp_path: Path) -> None:
    agent, sent = _agent(tmp_path)
    topic = agent.topics.event_in
    try:
        await agent.lifecycle.on_message(topic, with_(EVENT))  # one good event first
        assert [t for t, _ in sent] == [
            agent.topics.response,
            f"{agent.cfg.topic_root}/out/event/{EVENT['event_id']}",
        ]
        first_response = sent[0][1]
        before = await _snapshot(agent)
        for label, raw in HOSTILE_STREAM:
            sent.clear()
            await agent.lifecycle.on_message(topic, raw)
            assert len(sent) == 1, (label, sent)
            out_topic, body = sent[0]
            if label == "duplicate: same id, same number":
                assert (out_topic, body) == (agent.topics.response, first_response), label
            else:
                assert out_topic == agent.topics.error, (label, body)
                assert body["status"] == "error" and body["error"], label
            assert await _snapshot(agent) == before, label
        # A message on a topic with wildcards (or any other topic) is not an event at all.
        for other in (f"{agent.cfg.topic_root}/in/+", f"{agent.cfg.topic_root}/in/#", "dr/#"):
            sent.clear()
            await agent.lifecycle.on_message(other, with_(EVENT, event_id="wild-1"))
            assert sent == [] and "wild-1" not in agent.events
    finally:
        await agent.store.close()


@settings(max_examples=25, deadline=None)
@given(field=st.sampled_from(sorted(DrEvent.model_fields)), value=JSON_VALUE)
def test_property_an_error_reply_means_nothing_changed(field: str, value: Any) -> None:
    async def run(tmp: Path) -> None:
        agent, sent = _agent(tmp)
        try:
            await agent.lifecycle.on_message(agent.topics.event_in, with_(EVENT, event_id="held-1"))
            sent.clear()
            before = await _snapshot(agent)
            await agent.lifecycle.on_message(agent.topics.event_in, with_(EVENT, **{field: value}))
            topics = [t for t, _ in sent]
            if agent.topics.error in topics:
                assert topics == [agent.topics.error]
                assert await _snapshot(agent) == before
            else:
                assert topics[0] == agent.topics.response
        finally:
            await agent.store.close()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(Path(tmp)))


# -- every number bounded, and the committed schemas say so ------------------------------


def _numbers(schema: dict[str, Any], node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            yield from _numbers(schema, schema["$defs"][name], path)
            return
        if node.get("type") in ("number", "integer"):
            yield path, node
        for key in ("anyOf", "allOf", "oneOf"):
            for sub in node.get(key, []):
                yield from _numbers(schema, sub, path)
        for name, sub in node.get("properties", {}).items():
            yield from _numbers(schema, sub, f"{path}.{name}" if path else name)
        if "items" in node:
            yield from _numbers(schema, node["items"], f"{path}[]")


@pytest.mark.parametrize("stem", ["dr-event", "price-signal", "signed-envelope"])
def test_every_number_in_an_input_schema_has_both_bounds(stem: str) -> None:
    schema = json.loads((REPO / "config" / "schemas" / f"{stem}.schema.json").read_text())
    found = list(_numbers(schema, schema, ""))
    assert found
    for path, node in found:
        assert "minimum" in node or "exclusiveMinimum" in node, (stem, path)
        assert "maximum" in node or "exclusiveMaximum" in node, (stem, path)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 1e30])
def test_a_value_that_cannot_be_encoded_is_a_value_error(value: float) -> None:
    from drivers.codec import encode

    for dtype in ("int16", "uint16", "int32", "uint32", "int64"):
        with pytest.raises(ValueError, match="does not fit"):
            encode(value, dtype)  # type: ignore[arg-type]
