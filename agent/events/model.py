"""DR events and price signals as they arrive over MQTT, and every payload the agent sends.

The event shape mirrors oadrDistributeEvent closely enough that an OpenADR
bridge maps one to one (notification, ramp-up, recovery, start_after, signal
intervals); the response mirrors oadrCreatedEvent. Parsing never raises into
the caller: a bad message becomes an `EventError` naming the event id (when
one could be read) and the field. The outgoing payload models at the end are
the source of the JSON Schemas under config/schemas/ (`python -m agent.events.model`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from agent.config.openadr import TargetFields
from agent.settlement.model import Settlement
from strategies.model import Program

MAX_PAYLOAD_BYTES = 64 * 1024
#: Events that start further ahead than this are refused (a typo in the year, a clock gone wrong).
MAX_AHEAD_S = 366 * 86400
#: JSON nested deeper than this is refused before it is parsed (an event needs four levels).
MAX_JSON_DEPTH = 16
#: The characters of the ids a message carries (event, price and key ids; OpenADR ids kept as they
#: are): an event id, and a price id inside one, is a topic level of out/event/<event_id>, never a
#: wildcard or a separator.
ID_CHARS = r"[A-Za-z0-9_.:-]"
#: Upper bound of modification_number and revision: OpenADR's unsignedInt, and it always fits SQLite.
MAX_SEQUENCE = 2**32 - 1
#: Input models are strict: no string becomes a number, no number a boolean or a date.
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
EventStatus = Literal["far", "near", "active", "completed", "cancelled"]


class Target(TargetFields):
    """Exactly one of: a reduction in kW, a reduction in % of the contract peak, or a cap on site load."""

    model_config = _STRICT

    def _not_one(self, given: list[str]) -> str:
        return "target needs exactly one of reduce_kw, reduce_pct_of_peak, cap_kw" + (
            f" (got {', '.join(given)})" if given else ""
        )

    def reduction_kw(self, peak_kw: float, baseline_kw: float) -> float:
        """The requested reduction in kW against `baseline_kw`."""
        if self.reduce_kw is not None:
            return self.reduce_kw
        if self.reduce_pct_of_peak is not None:
            return peak_kw * self.reduce_pct_of_peak / 100
        assert self.cap_kw is not None
        return max(0.0, baseline_kw - self.cap_kw)


_RFC3339 = re.compile(r"(\d{4})-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(?:\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)?", re.ASCII)


def _rfc3339(v: Any) -> datetime:
    """An RFC 3339 string with an offset, years 2000-2999; never a number, an epoch or a bare date."""
    example = "e.g. 2026-07-01T14:00:00+08:00"
    if isinstance(v, datetime):  # built in code (price runs, stored events); JSON never yields one
        if v.utcoffset() is None:
            raise ValueError(f"needs a UTC offset, {example}")
        return v
    if not isinstance(v, str):
        raise ValueError(f"must be an RFC 3339 date-time string, {example} (got {_json_type(v)})")
    m = _RFC3339.fullmatch(v)
    if m is None:
        raise ValueError(f"not an RFC 3339 date-time, {example}")
    if m.group(2) is None:
        raise ValueError(f"needs a UTC offset, {example}")
    if not 2000 <= int(m.group(1)) <= 2999:
        raise ValueError("year must be 2000 to 2999")
    try:
        return datetime.fromisoformat(v.upper())
    except ValueError as exc:
        raise ValueError(f"not a valid date-time: {exc}") from None


def _json_type(v: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return "a number"
    names = {str: "a string", list: "an array", dict: "an object", type(None): "null"}
    return names.get(type(v), type(v).__name__)


#: A date-time field of an input model (the validator makes strict mode accept the string).
Rfc3339 = Annotated[datetime, BeforeValidator(_rfc3339)]


class Interval(BaseModel):
    """One signal interval (oadrSignal interval): a target for part of the event."""

    model_config = _STRICT

    duration_s: float = Field(gt=0, le=86400, description="Length of this interval, s.")
    target: Target = Field(description="What the site is asked to do in this interval.")


class DrEvent(BaseModel):
    """A DR event from the provider (oadrEvent, flattened)."""

    model_config = _STRICT

    event_id: str = Field(min_length=1, max_length=128, pattern=rf"^{ID_CHARS}+$", description="Event id.")
    modification_number: int = Field(
        default=0, ge=0, le=MAX_SEQUENCE, description="Goes up with every change."
    )
    status: EventStatus = Field(default="far", description="Status as sent; the agent derives its own.")
    program: Program = Field(default="contracted", description="contracted, realtime or price.")
    priority: int = Field(default=0, ge=0, le=1000, description="Lower number = higher priority (OpenADR).")
    test_event: bool = Field(default=False, description="A test: respond and report, shed nothing.")
    start: Rfc3339 = Field(description="Start, RFC 3339 with an offset, years 2000-2999.")
    duration_s: float = Field(gt=0, le=86400, description="Event length, s.")
    ramp_up_s: float = Field(default=0.0, ge=0, le=3600, description="Time allowed to reach the target, s.")
    recovery_s: float = Field(default=0.0, ge=0, le=7200, description="Recovery window after the end, s.")
    start_after_s: float = Field(
        default=0.0, ge=0, le=3600, description="Randomize the start within this, s (the end stays)."
    )
    notification_s: float = Field(
        default=900.0, ge=0, le=7 * 86400, description="The event is 'near' this long before its start, s."
    )
    target: Target = Field(
        description="What the site is asked to do (with intervals: optional, defaults to the first interval's)."
    )
    intervals: list[Interval] | None = Field(
        default=None,
        min_length=1,
        max_length=96,
        description="Signal intervals, a target that changes over the event; durations add up to duration_s.",
    )

    @model_validator(mode="before")
    @classmethod
    def _target_from_intervals(cls, data: Any) -> Any:
        if isinstance(data, dict) and "target" not in data and isinstance(data.get("intervals"), list):
            first = data["intervals"][0] if data["intervals"] else None
            if isinstance(first, dict) and "target" in first:
                data = {**data, "target": first["target"]}
        return data

    @model_validator(mode="after")
    def _intervals_fill(self) -> DrEvent:
        if self.intervals:
            total = sum(i.duration_s for i in self.intervals)
            if abs(total - self.duration_s) > 1e-6:
                raise ValueError(f"intervals add up to {total:g} s but duration_s is {self.duration_s:g} s")
        return self

    def targets(self) -> list[tuple[float, float, Target]]:
        """(start ts, end ts, target) of each interval; one covering the event without intervals."""
        if not self.intervals:
            return [(self.start_ts, self.end_ts, self.target)]
        out, t = [], self.start_ts
        for i in self.intervals:
            out.append((t, t + i.duration_s, i.target))
            t += i.duration_s
        return out

    def target_at(self, ts: float) -> tuple[int, Target]:
        """The interval index and target in force at `ts` (the first before the start, the last after)."""
        spans = self.targets()
        for n, (_a, b, tgt) in enumerate(spans):
            if ts < b:
                return n, tgt
        return len(spans) - 1, spans[-1][2]

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


_STRUCTURE = re.compile(r'[\[\]{}"\\]')


def json_depth(text: str, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep arrays and objects nest in `text` (strings skipped), stopping once past `limit`.

    A linear scan over the structural characters only: it cannot recurse or
    backtrack, so it runs before `json.loads`, whose recursion a deep payload
    would exhaust.
    """
    depth = deepest = 0
    in_string = False
    skip_to = 0
    for m in _STRUCTURE.finditer(text):
        pos, c = m.start(), m.group()
        if pos < skip_to:
            continue
        if in_string:
            if c == "\\":
                skip_to = pos + 2  # the escaped character, whatever it is
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif c in "]}":
            depth -= 1
    return deepest


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k[:64]!r}")
        out[k] = v
    return out


def decode_json(raw: bytes | str, where: str = "") -> Any:
    """Decode JSON strictly: nesting checked first, no NaN or Infinity, no duplicate keys; raises EventError."""
    try:
        text = raw if isinstance(raw, str) else raw.decode(json.detect_encoding(raw), "surrogatepass")
    except (UnicodeDecodeError, LookupError) as exc:
        raise EventError("bad_json", f"{where}not valid JSON: {exc}") from None
    # Nesting is at most the number of [ and {: counting them (in C) spares most messages the scan.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and json_depth(text) > MAX_JSON_DEPTH:
        raise EventError("too_deep", f"{where}JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text, parse_constant=_no_constants, object_pairs_hook=_no_duplicates)
    except ValueError as exc:
        raise EventError("bad_json", f"{where}not valid JSON: {exc}") from None


def load_json(raw: bytes | str, max_bytes: int = MAX_PAYLOAD_BYTES, what: str = "an event") -> dict[str, Any]:
    """Size-check and decode one JSON object; raises EventError."""
    if len(raw) > max_bytes:
        raise EventError("too_large", f"payload of {len(raw)} bytes exceeds {max_bytes}")
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise EventError("bad_event", f"{what} must be a JSON object")
    return data


def parse_event(raw: bytes | str | dict[str, Any], max_bytes: int = MAX_PAYLOAD_BYTES) -> DrEvent:
    """Parse and validate one event message; raises EventError saying what and where."""
    data = raw if isinstance(raw, dict) else load_json(raw, max_bytes)
    return _validate(DrEvent, data, "event_id")


def parse_price(raw: bytes | str | dict[str, Any], max_bytes: int = MAX_PAYLOAD_BYTES) -> PriceSignal:
    """Parse and validate one price message; raises EventError saying what and where."""
    data = raw if isinstance(raw, dict) else load_json(raw, max_bytes, "a price signal")
    return _validate(PriceSignal, data, "price_id")


M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], data: dict[str, Any], id_field: str) -> M:
    given = data.get(id_field)
    event_id = given[:128] if isinstance(given, str) else None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        if "target" not in data:  # a target copied from intervals[0]: name the field that was sent
            errors.sort(key=lambda e: bool(e["loc"]) and e["loc"][0] == "target")
        first = errors[0]
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
            if first["type"].endswith("_type"):  # strict: say what came instead
                msg += f" (got {_json_type(first['input'])})"
            code, msg = "invalid_field", f"{field}: {msg}" if field else msg
        if len(errors) > 1:
            msg += f" (and {len(errors) - 1} more)"
        raise EventError(code, msg, event_id=event_id, field=field) from None


def response(
    event: DrEvent, opt: Literal["in", "out"], code: str, reason: str, **extra: Any
) -> dict[str, Any]:
    """The oadrCreatedEvent-shaped answer to an event, built and checked by `EventResponse`.

    `extra` holds the model's optional fields (committed_kw, partial, ...);
    an unknown one is an error, so the payload cannot drift from its schema.
    """
    body = EventResponse(
        status="ok",
        event_id=event.event_id,
        modification_number=event.modification_number,
        opt=opt,
        code=code,
        reason=reason,
        **extra,
    )
    return body.model_dump(mode="json", exclude_none=True)


# -- price signals (in) -----------------------------------------------------------------


class PriceInterval(BaseModel):
    """One priced interval."""

    model_config = _STRICT

    start: Rfc3339 = Field(description="Interval start, RFC 3339 with an offset, years 2000-2999.")
    duration_s: float = Field(gt=0, le=86400, description="Interval length, s.")
    price: float = Field(ge=-10000, le=100000, description="Energy price in this interval, currency per kWh.")

    @property
    def start_ts(self) -> float:
        return self.start.timestamp()

    @property
    def end_ts(self) -> float:
        return self.start_ts + self.duration_s


class PriceSignal(BaseModel):
    """A tariff signal: time-of-use, critical-peak or real-time prices per interval."""

    model_config = _STRICT

    price_id: str = Field(
        min_length=1, max_length=96, pattern=rf"^{ID_CHARS}+$", description="Id of this price schedule."
    )
    revision: int = Field(
        default=0, ge=0, le=MAX_SEQUENCE, description="Goes up with every change of the schedule."
    )
    kind: Literal["tou", "critical_peak", "realtime"] = Field(description="Tariff kind.")
    currency: str = Field(default="CNY", pattern=r"^[A-Z]{3}$", description="ISO 4217 currency.")
    intervals: list[PriceInterval] = Field(
        min_length=1, max_length=288, description="Priced intervals, in order."
    )

    @model_validator(mode="after")
    def _ordered(self) -> PriceSignal:
        for n, (a, b) in enumerate(zip(self.intervals, self.intervals[1:], strict=False), start=1):
            if b.start_ts < a.end_ts - 1e-6:
                raise ValueError(f"intervals[{n}] starts before intervals[{n - 1}] ends")
        return self


# -- what the agent sends (the models behind config/schemas/*.json) ----------------------

#: Every code the agent puts in an error reply, with what it means (docs/mqtt-api.md lists them).
ERROR_CODES: dict[str, str] = {
    "too_large": "payload exceeds mqtt.max_payload_bytes",
    "bad_json": "not valid JSON (NaN, Infinity and duplicate keys included)",
    "too_deep": "JSON nested deeper than 16 levels (refused before parsing)",
    "bad_event": "not a JSON object",
    "missing_field": "a required field is missing",
    "unknown_field": "a field the API does not define",
    "unknown_target": "a target kind the API does not define",
    "invalid_field": "a field out of range or of the wrong type",
    "stale_event": "the event already ended (or starts too far in the past)",
    "start_too_far": "the event starts more than a year ahead",
    "stale_modification": "a modification number below the one the agent holds",
    "unknown_event": "a cancellation of an event the agent never received",
    "event_final": "a modification of an event that is already completed, cancelled or superseded",
    "unsigned": "signing is required and the message is not signed",
    "bad_signature": "the signature does not verify",
    "unknown_key": "the message names a key or algorithm the agent does not hold",
    "stale_message": "the signed timestamp is outside max_skew_s of now",
    "replay": "the nonce was already seen within replay_window_s",
}


class State(StrEnum):
    """An event's lifecycle state, as published on {root}/out/event/<event_id> and stored."""

    FAR = "far"
    NEAR = "near"
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    OPTED_OUT = "opted_out"
    SUPERSEDED = "superseded"


#: States an event never leaves.
FINAL_STATES = frozenset({State.COMPLETED, State.CANCELLED, State.OPTED_OUT, State.SUPERSEDED})


class EventResponse(BaseModel):
    """{root}/out/response: the agent's answer to an event (oadrCreatedEvent)."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["ok"] = Field(description="Always ok; refusals of bad messages go to out/error.")
    event_id: str = Field(description="The event answered.")
    modification_number: int = Field(description="The modification answered.")
    opt: Literal["in", "out"] = Field(description="Opt in or opt out.")
    code: str = Field(
        description="Machine-readable: accepted, partial, cancelled, superseded or the rule refused."
    )
    reason: str = Field(description="For people, naming the rule, e.g. 'daily_event_limit: ...'.")
    committed_kw: float | None = Field(default=None, description="The reduction committed to, kW.")
    partial: bool | None = Field(default=None, description="True when less than asked is committed.")
    intervals_committed_kw: list[float] | None = Field(
        default=None, description="Per signal interval, the kW committed."
    )
    effective_start: str | None = Field(
        default=None, description="The randomized start, when start_after_s applied."
    )
    supersedes: list[str] | None = Field(
        default=None, description="Lower-priority events this one displaced."
    )
    superseded_by: str | None = Field(
        default=None, description="The higher-priority event that displaced this one."
    )
    participation_warning: str | None = Field(
        default=None, description="Set when the site is on course to miss its participation minimum."
    )


class EventState(BaseModel):
    """{root}/out/event/<event_id> (retained): the event's current state."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(description="The event.")
    modification_number: int = Field(description="The modification in force.")
    state: State = Field(description="Lifecycle state.")
    opt: Literal["in", "out"] = Field(description="The agent's decision.")
    code: str = Field(description="The decision's code.")
    reason: str = Field(description="The decision's reason.")
    program: str = Field(description="contracted, realtime or price.")
    priority: int = Field(description="Lower number = higher priority.")
    start: str = Field(description="Start as sent, RFC 3339.")
    effective_start: str = Field(description="Start after randomization, RFC 3339.")
    end: str = Field(description="Absolute end, RFC 3339; never extended.")
    interval: int | None = Field(
        default=None, description="Index of the signal interval in force (active only)."
    )
    committed_kw: float | None = Field(default=None, description="kW committed now.")
    ts: float = Field(description="When this state was entered, epoch s.")


class ErrorReply(BaseModel):
    """{root}/out/error: a message the agent refused, and why."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["error"] = Field(description="Always error.")
    code: str = Field(description="One of the documented error codes.")
    event_id: str | None = Field(description="The event (or price) id, when one could be read.")
    field: str | None = Field(description="The offending field, when there is one.")
    error: str = Field(description="What is wrong and where, for people.")


class LiveState(BaseModel):
    """A live report without its sequence number: what the lifecycle builds every report interval."""

    model_config = ConfigDict(extra="forbid")

    ts: float = Field(description="Time of the report, epoch s.")
    event_id: str = Field(description="The running event.")
    state: State = Field(description="The event's lifecycle state.")
    phase: Literal["armed", "shedding", "restoring", "recovering", "done"] = Field(
        description="Control phase: shedding during the event, restoring after its end."
    )
    measured_kw: float | None = Field(description="Filtered site load, kW (null when the meter is unknown).")
    baseline_kw: float = Field(description="Real-time baseline control runs on, kW.")
    realized_kw: float | None = Field(description="Baseline minus load, kW.")
    realized_pct_of_peak: float | None = Field(description="Realized curtailment, % of the contract peak.")
    committed_kw: float = Field(description="kW committed now (after any modification or interval change).")
    band_kw: list[float] = Field(description="The contract band, kW [min, max].")
    band_pct: list[float] = Field(description="The contract band, % of peak [min, max].")
    target_kw: list[float] = Field(
        description="Where control holds realized curtailment now, kW [min, max]: the commitment "
        "(kept a margin inside the band) plus or minus the deadband."
    )
    in_band: bool | None = Field(description="Realized curtailment within the band.")
    active_steps: list[str] = Field(description="Shed steps in force.")
    degraded: bool = Field(description="True while the meter is unknown and control holds blind.")
    last_decision: str = Field(description="The controller's last decision, for people.")


class LiveReport(LiveState):
    """{root}/out/report: live progress during an event, every control.report_interval_s."""

    seq: int = Field(description="Increases by one per report, across restarts; dedupe on it.")


class PriceReading(BaseModel):
    """{root}/out/price (retained): how the agent read the latest price signal."""

    model_config = ConfigDict(extra="forbid")

    price_id: str = Field(description="The price schedule.")
    revision: int = Field(description="Its revision.")
    kind: Literal["tou", "critical_peak", "realtime"] = Field(description="Tariff kind.")
    max_price: float = Field(description="Highest price in the schedule, per kWh.")
    events: list[str] = Field(description="Ids of the events it became (program price).")
    ts: float = Field(description="When it was read, epoch s.")


class ReloadOutcome(BaseModel):
    """The last configuration reload, on the online status (never the config's content)."""

    model_config = ConfigDict(extra="forbid")

    digest: str | None = Field(default=None, description="Digest identifying the running configuration.")
    reload: Literal["applied", "rejected"] = Field(description="applied, or rejected (the old one runs on).")
    errors: int = Field(ge=0, description="Problems found; listed as file:line:col in the agent's log.")
    ts: float = Field(description="When the reload was judged, epoch s.")


class Status(BaseModel):
    """{root}/status (retained): availability; `offline` is the last will, `failed` a stop on a fault."""

    model_config = ConfigDict(extra="allow")

    state: Literal["online", "offline", "stopped", "failed"] = Field(
        description="Availability: online; stopped (clean stop, devices restored); failed (stopped on a "
        "fault, devices restored unless `reason` says otherwise); offline (the last will: connection lost)."
    )
    reason: str | None = Field(
        default=None,
        description="With `failed`: why the agent stopped, and any device it could not restore.",
    )
    config: ReloadOutcome | None = Field(default=None, description="Outcome of the last reload, if any.")


class LedgerReport(BaseModel):
    """{root}/out/ledger (retained): the year to date, republished after every settlement."""

    model_config = ConfigDict(extra="forbid")

    year: int = Field(description="Calendar year in the site's timezone.")
    programs: dict[str, dict[str, float]] = Field(description="Per programme: events, planned, hours, days.")
    participation: dict[str, Any] = Field(
        description="Responses against the contract's minimum: status ok, met, below_minimum or default_risk."
    )
    money: dict[str, Any] = Field(
        description="Verified kW and kWh and the estimated incentive, per programme and total."
    )
    days: dict[str, dict[str, float]] = Field(description="Per local date: events, hours, verified kWh.")
    period: dict[str, Any] | None = Field(
        default=None, description="The contract period's count, if configured."
    )
    ts: float = Field(description="When it was computed, epoch s.")


def payload_models() -> dict[str, type[BaseModel]]:
    """Schema file stem → model, for every payload in docs/mqtt-api.md."""
    from agent.events.signing import SignedEnvelope

    return {
        "dr-event": DrEvent,
        "price-signal": PriceSignal,
        "signed-envelope": SignedEnvelope,
        "event-response": EventResponse,
        "event-state": EventState,
        "error-reply": ErrorReply,
        "live-report": LiveReport,
        "settlement": Settlement,
        "price-reading": PriceReading,
        "status": Status,
        "ledger": LedgerReport,
    }


def payload_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every payload, as written to config/schemas/<stem>.schema.json."""
    out = {}
    for stem, model in payload_models().items():
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://dr-agent.example/schemas/{stem}.schema.json"
        out[stem] = schema
    return out


if __name__ == "__main__":  # python -m agent.events.model [DIR]: regenerate the payload schemas
    import sys
    from pathlib import Path

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "config/schemas")
    for stem, schema in payload_schemas().items():
        (target / f"{stem}.schema.json").write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {target / stem}.schema.json")
