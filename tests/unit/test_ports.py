"""The lifecycle's provider ports: routing by event source, and the simulation's sink."""

from __future__ import annotations

from typing import Any

from agent.events.model import ErrorReply, EventResponse, LiveState, State
from agent.events.ports import ProviderRouter, SinkLink, source_of


def answer(event_id: str, opt: str = "in") -> EventResponse:
    return EventResponse.model_validate(
        {
            "status": "ok",
            "event_id": event_id,
            "modification_number": 0,
            "opt": opt,
            "code": "c",
            "reason": "r",
        }
    )


def live(event_id: str) -> LiveState:
    return LiveState(
        ts=1.0,
        event_id=event_id,
        state=State.ACTIVE,
        phase="shedding",
        measured_kw=900.0,
        baseline_kw=1000.0,
        realized_kw=100.0,
        realized_pct_of_peak=10.0,
        committed_kw=100.0,
        band_kw=[50.0, 150.0],
        band_pct=[5.0, 15.0],
        target_kw=[90.0, 110.0],
        in_band=True,
        active_steps=[],
        degraded=False,
        last_decision="hold",
    )


def test_source_of_an_event_id() -> None:
    assert source_of("oadr:ev-1") == "openadr"
    assert source_of("ev-1") == "mqtt"
    assert source_of(None) == "mqtt"


async def test_router_sends_everything_to_mqtt_and_an_openadr_event_s_answer_to_the_vtn_too() -> None:
    mqtt: list[tuple[str, dict[str, Any]]] = []
    vtn: list[tuple[str, dict[str, Any]]] = []
    primary, ven = (
        SinkLink("dr/x", lambda t, p: mqtt.append((t, p))),
        SinkLink("vtn", lambda t, p: vtn.append((t, p))),
    )
    router = ProviderRouter(primary)
    router.add_source("openadr", ven)
    await router.send_response(answer("ev-1"))
    await router.send_response(answer("oadr:ev-2", "out"))
    assert [p["event_id"] for t, p in mqtt if t == "dr/x/out/response"] == ["ev-1", "oadr:ev-2"]
    assert [(t, p["opt"]) for t, p in vtn] == [("vtn/out/response", "out")]
    assert "committed_kw" not in mqtt[0][1]  # None fields are left out of a response, as before
    assert await router.send_report(live("oadr:ev-2")) == 1
    assert await router.send_report(live("ev-1")) == 2  # the sequence is MQTT's, whatever the source
    assert [p["seq"] for t, p in mqtt if t == "dr/x/out/report"] == [1, 2]
    assert len([t for t, _ in vtn if t == "vtn/out/report"]) == 1
    await router.send_error(ErrorReply(status="error", code="x", event_id="oadr:ev-2", field=None, error="e"))
    assert mqtt[-1] == (
        "dr/x/out/error",
        {"status": "error", "code": "x", "event_id": "oadr:ev-2", "field": None, "error": "e"},
    )
    assert not [t for t, _ in vtn if t.endswith("/error")]  # refusals go to MQTT only
