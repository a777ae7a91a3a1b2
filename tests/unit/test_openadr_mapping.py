"""An oadrEvent (as openleadr parses it) becomes our DrEvent: each signal kind, the periods, the
source-keyed id, level-0 edges, and a refusal naming why; docs/openadr.md's example config loads."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.config.load import load_site_config
from agent.config.openadr import OpenAdrConfig
from agent.events.model import DrEvent
from agent.openadr.mapping import LOWEST_PRIORITY, Refusal, our_id, to_dr_event

REPO = Path(__file__).resolve().parents[2]
START = datetime(2027, 7, 1, 3, 0, tzinfo=UTC)
CFG = OpenAdrConfig(vtn_url="http://127.0.0.1:8080/OpenADR2/Simple/2.0b", ven_name="v")
CONTRACT = load_site_config(REPO / "config" / "demo-site.yaml")[0].contract  # peak 1000 kW, band 5-20 %


def oadr(name: str, stype: str, payloads: list[float], minutes: float = 10, **desc: Any) -> dict[str, Any]:
    return {
        "event_descriptor": {"event_id": "e-1", "modification_number": 2, "event_status": "far", **desc},
        "active_period": {
            "dtstart": START,
            "duration": timedelta(minutes=minutes * len(payloads)),
            "ramp_up": timedelta(seconds=60),
            "recovery": timedelta(seconds=300),
            "notification": timedelta(seconds=600),
            "tolerance": {"tolerate": {"startafter": timedelta(seconds=30)}},
        },
        "event_signals": [
            {
                "signal_name": name,
                "signal_type": stype,
                "intervals": [
                    {"duration": timedelta(minutes=minutes), "signal_payload": p, "uid": i}
                    for i, p in enumerate(payloads)
                ],
            }
        ],
        "response_required": "always",
    }


def mapped(ev: dict[str, Any], cfg: OpenAdrConfig = CFG) -> DrEvent:
    out = to_dr_event(ev, cfg, CONTRACT)
    assert isinstance(out, DrEvent), out
    return out


def test_periods_priority_and_source_keyed_id() -> None:
    ev = mapped(oadr("LOAD_DISPATCH", "delta", [-100]))
    assert ev.event_id == "oadr:e-1" and ev.modification_number == 2
    assert (ev.ramp_up_s, ev.recovery_s, ev.notification_s, ev.start_after_s) == (60, 300, 600, 30)
    assert ev.start == START and ev.duration_s == 600 and ev.target.reduce_kw == 100
    assert ev.priority == LOWEST_PRIORITY and ev.program == "contracted"
    assert mapped(oadr("LOAD_DISPATCH", "delta", [-100], priority=3)).priority == 3
    weird = our_id("urn:uuid/a b#c")
    assert re.fullmatch(r"oadr:h-[0-9a-f]{40}", weird) and weird == our_id("urn:uuid/a b#c")


@pytest.mark.parametrize(
    ("name", "stype", "payload", "target"),
    [
        ("SIMPLE", "level", 1, {"reduce_pct_of_peak": 5}),
        ("SIMPLE", "level", 2, {"reduce_pct_of_peak": 12.5}),
        ("SIMPLE", "level", 3, {"reduce_pct_of_peak": 20}),
        ("LOAD_DISPATCH", "delta", -80, {"reduce_kw": 80}),
        ("LOAD_DISPATCH", "setpoint", 700, {"cap_kw": 700}),
        ("LOAD_CONTROL", "x-loadControlPercentOffset", -10, {"reduce_pct_of_peak": 10}),
        ("LOAD_CONTROL", "x-loadControlCapacity", 0.8, {"cap_kw": 800}),
    ],
)
def test_each_signal_kind_becomes_a_target(
    name: str, stype: str, payload: float, target: dict[str, float]
) -> None:
    got = mapped(oadr(name, stype, [payload])).target.model_dump(exclude_none=True)
    assert got == pytest.approx(target)


def test_configured_simple_level_and_measurement_scale() -> None:
    cfg = OpenAdrConfig.model_validate(
        {**CFG.model_dump(exclude_none=True), "signals": {"simple_levels": {2: {"reduce_kw": 150}}}}
    )
    assert mapped(oadr("SIMPLE", "level", [2]), cfg).target.reduce_kw == 150
    ev = oadr("LOAD_DISPATCH", "delta", [-0.2])
    ev["event_signals"][0]["measurement"] = {"scale": "M"}
    assert mapped(ev).target.reduce_kw == pytest.approx(200)


def test_level_zero_edges_shorten_the_event_and_a_middle_one_holds_the_band_minimum() -> None:
    ev = mapped(oadr("SIMPLE", "level", [0, 2, 0, 3, 0]))
    assert ev.start == START + timedelta(minutes=10) and ev.duration_s == 30 * 60
    assert ev.intervals is not None and [i.target.reduce_pct_of_peak for i in ev.intervals] == [12.5, 5, 20]


@pytest.mark.parametrize(
    ("ev", "code"),
    [
        (oadr("ELECTRICITY_PRICE", "price", [0.3]), "unsupported_signal"),
        (oadr("LOAD_DISPATCH", "delta", [50]), "unsupported_signal"),
        (oadr("SIMPLE", "level", [4]), "unsupported_signal"),
        (oadr("SIMPLE", "level", [0, 0]), "nothing_asked"),
        (oadr("LOAD_DISPATCH", "delta", [-10], minutes=0), "invalid_field"),
    ],
)
def test_what_cannot_be_taken_on_is_a_refusal_naming_why(ev: dict[str, Any], code: str) -> None:
    out = to_dr_event(ev, CFG, CONTRACT)
    assert isinstance(out, Refusal) and out.code == code and out.reason, out


def test_the_docs_example_config_loads(tmp_path: Path) -> None:
    doc = (REPO / "docs" / "openadr.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(event_sources:.*?)```", doc, re.S)
    assert block is not None
    site = (
        (REPO / "config" / "demo-site.yaml").read_text(encoding="utf-8").rstrip("\n") + "\n" + block.group(1)
    )
    (tmp_path / "site.yaml").write_text(site, encoding="utf-8")
    cfg, _ = load_site_config(tmp_path / "site.yaml")
    assert cfg.event_sources == ["mqtt", "openadr"] and cfg.openadr is not None
    assert cfg.openadr.market_contexts["http://utility.example/realtime"] == "realtime"


async def test_an_mqtt_event_cannot_take_an_openadr_id(tmp_path: Path) -> None:
    import json

    from tests.unit.test_daemon_robustness import make_agent

    agent, _plant = make_agent(tmp_path)
    sent: list[tuple[str, dict[str, Any]]] = []
    agent.sink = lambda t, b: sent.append((t, b))
    body = {"event_id": "oadr:e-1", "start": "2027-07-01T11:00:00+08:00", "duration_s": 600}
    body["target"] = {"reduce_kw": 100}
    await agent.lifecycle.on_message(agent.topics.event_in, json.dumps(body).encode())
    assert "oadr:e-1" not in agent.events
    [(topic, err)] = sent
    assert topic == agent.topics.error and err["field"] == "event_id" and "reserved" in err["error"], err
    await agent.store.close()
