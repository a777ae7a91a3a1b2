"""DR events as they arrive over MQTT: the OpenADR 2.0b-shaped payload, parsing, and responses.

The event shape mirrors oadrDistributeEvent closely enough that an OpenADR
bridge maps one to one; the response mirrors oadrCreatedEvent. Parsing never
raises into the caller: a bad message becomes an `EventError` naming the
event id (when one could be read) and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from strategies.model import Program

MAX_PAYLOAD_BYTES = 64 * 1024
EventStatus = Literal["far", "near", "active", "completed", "cancelled"]


class Target(BaseModel):
    """Exactly one of: a reduction in kW, a reduction in % of the contract peak, or a cap on site load."""

    model_config = ConfigDict(extra="forbid")

    reduce_kw: float | None = Field(default=None, gt=0, le=1_000_000, description="Reduce by this much, kW.")
    reduce_pct_of_peak: float | None = Field(
        default=None, gt=0, le=100, description="Reduce by this share of the contract peak, %."
    )
    cap_kw: float | None = Field(
        default=None, ge=0, le=1_000_000, description="Keep site load at or below, kW."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Target:
        given = [k for k in ("reduce_kw", "reduce_pct_of_peak", "cap_kw") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "target needs exactly one of reduce_kw, reduce_pct_of_peak, cap_kw"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    def reduction_kw(self, peak_kw: float, baseline_kw: float) -> float:
        """The requested reduction in kW against `baseline_kw`."""
        if self.reduce_kw is not None:
            return self.reduce_kw
        if self.reduce_pct_of_peak is not None:
            return peak_kw * self.reduce_pct_of_peak / 100
        assert self.cap_kw is not None
        return max(0.0, baseline_kw - self.cap_kw)


class DrEvent(BaseModel):
    """A DR event from the provider (oadrEvent, flattened)."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(
        min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$", description="Event id."
    )
    modification_number: int = Field(default=0, ge=0, description="Goes up with every change.")
    status: EventStatus = Field(default="far", description="Status as sent; the agent derives its own.")
    program: Program = Field(default="contracted", description="contracted, realtime or price.")
    priority: int = Field(default=0, ge=0, le=1000, description="Lower number = higher priority (OpenADR).")
    test_event: bool = Field(default=False, description="A test: respond and report, shed nothing.")
    start: datetime = Field(description="Start, RFC 3339 with an offset.")
    duration_s: float = Field(gt=0, le=86400, description="Event length, s.")
    ramp_up_s: float = Field(default=0.0, ge=0, le=3600, description="Time allowed to reach the target, s.")
    recovery_s: float = Field(default=0.0, ge=0, le=7200, description="Recovery window after the end, s.")
    start_after_s: float = Field(
        default=0.0, ge=0, le=3600, description="Randomize the start within this, s."
    )
    target: Target = Field(description="What the site is asked to do.")

    @field_validator("start")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None or v.utcoffset() is None:
            raise ValueError("start needs a UTC offset, e.g. 2026-07-01T14:00:00+08:00")
        return v

    @property
    def start_ts(self) -> float:
        return self.start.timestamp()

    @property
    def end_ts(self) -> float:
        return self.start_ts + self.duration_s


@dataclass
class EventError(Exception):
    """A message the agent refused; published on the error topic."""

    code: str
    message: str
    event_id: str | None = None
    field: str | None = None

    def payload(self) -> dict[str, Any]:
        return {
            "status": "error",
            "code": self.code,
            "event_id": self.event_id,
            "field": self.field,
            "error": self.message,
        }


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_event(raw: bytes | str) -> DrEvent:
    """Parse and validate one event message; raises EventError saying what and where."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise EventError("too_large", f"payload of {len(raw)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventError("bad_json", f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EventError("bad_event", "an event must be a JSON object")
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    try:
        return DrEvent.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _loc(tuple(first["loc"])) or None
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "missing":
            code, msg = "missing_field", f"{field}: required field missing"
        elif first["type"] == "extra_forbidden":
            code, msg = "unknown_field", f"{field}: unknown field"
            if field and field.startswith("target."):
                code = "unknown_target"
                msg = f"{field}: unknown target kind; use reduce_kw, reduce_pct_of_peak or cap_kw"
        else:
            code, msg = "invalid_field", f"{field}: {msg}" if field else msg
        if len(exc.errors()) > 1:
            msg += f" (and {len(exc.errors()) - 1} more)"
        raise EventError(code, msg, event_id=event_id, field=field) from None


def response(
    event: DrEvent, opt: Literal["in", "out"], code: str, reason: str, **extra: Any
) -> dict[str, Any]:
    """The oadrCreatedEvent-shaped answer to an event."""
    body: dict[str, Any] = {
        "event_id": event.event_id,
        "modification_number": event.modification_number,
        "opt": opt,
        "code": code,
        "reason": reason,
    }
    body.update(extra)
    return body
