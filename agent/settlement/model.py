"""The settlement record as published on {root}/out/settlement/<event_id>.

It lives with the books that compute it; `agent.events.model` lists it with
the other payloads for the JSON Schemas under config/schemas/.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Settlement(BaseModel):
    """{root}/out/settlement/<event_id> (retained): the verified result of an event."""

    model_config = ConfigDict(extra="allow")

    event_id: str = Field(description="The event.")
    start: float = Field(description="Window start, epoch s.")
    end: float = Field(description="Window end (the cancellation time if cancelled), epoch s.")
    baseline_kw: float = Field(description="Baseline, kW.")
    measured_kw: float = Field(description="Mean metered load in the window, kW.")
    verified_reduction_kw: float = Field(description="(baseline energy - metered energy) / duration, kW.")
    committed_kw: float | None = Field(description="kW committed.")
    in_band: bool = Field(description="Verified reduction within the contract band.")
