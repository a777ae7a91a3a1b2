"""An oadrEvent (as openleadr parses it) becomes our `DrEvent`, or a refusal saying why.

Pure: no network, no clock. The event id is keyed by its source
(`oadr:<eiEventID>`), so an OpenADR event and an MQTT event never share an
id; an eiEventID our id pattern cannot hold becomes `oadr:h-<sha256 prefix>`.

Signals (the first of `signals.prefer` present in the event is followed):

- SIMPLE `level`: 1, 2, 3 → the configured target for that level (else the
  band's minimum, middle, maximum); 0 sheds nothing.
- LOAD_DISPATCH `delta`: a negative payload is a reduction in kW (the
  signal's measurement scale applies: W, kW, MW); `setpoint`: a cap on site
  load in kW.
- LOAD_CONTROL `x-loadControlPercentOffset`: a reduction in % of the contract
  peak; `x-loadControlCapacity`: a cap at that fraction (0-1) of the peak.

Level-0 (nothing to shed) intervals at the start or the end shorten the
event; one in the middle is held at the band's minimum, since an event the
site opted into cannot pause.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agent.config.model import ContractConfig
from agent.config.openadr import LevelTarget, OpenAdrConfig
from agent.events.model import ID_CHARS, DrEvent, EventError, Interval, Target
from agent.events.ports import OPENADR_PREFIX as PREFIX

_ID_OK = re.compile(rf"^{ID_CHARS}{{1,120}}$")
#: OpenADR priority 0 means "no priority", the lowest; ours: a lower number wins, 1000 is the lowest.
LOWEST_PRIORITY = 1000
_SCALE = {"none": 0.001, "k": 1.0, "M": 1000.0, "G": 1_000_000.0, "m": 1e-6}


@dataclass(frozen=True)
class Refusal:
    """An oadrEvent we cannot take on: answered optOut; `code` and `reason` go to the log and MQTT."""

    code: str
    reason: str


def our_id(oadr_id: str) -> str:
    """The agent's event id for an eiEventID: keyed by source, always within DrEvent's id pattern."""
    if _ID_OK.fullmatch(oadr_id):
        return PREFIX + oadr_id
    return PREFIX + "h-" + hashlib.sha256(oadr_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _seconds(v: Any) -> float:
    if v is None:
        return 0.0
    if isinstance(v, timedelta):
        return v.total_seconds()
    if isinstance(v, int | float):
        return float(v)
    raise ValueError(f"not a duration: {v!r}")


def _period(ap: dict[str, Any], name: str) -> float:
    # openleadr's parser names them notification/ramp_up/recovery; its objects *_period.
    return _seconds(ap.get(name, ap.get(f"{name}_period")))


def _start_after(ap: dict[str, Any]) -> float:
    tol = ap.get("tolerance") or {}
    tol = tol.get("tolerate", tol) if isinstance(tol, dict) else {}
    return _seconds(tol.get("startafter")) if isinstance(tol, dict) else 0.0


def _bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() not in ("", "false", "0", "no")
    return bool(v)


def _level_target(level: int, cfg: OpenAdrConfig, contract: ContractConfig) -> Target:
    lt: LevelTarget | None = cfg.signals.simple_levels.get(level)  # type: ignore[call-overload]
    if lt is not None:
        return Target(reduce_kw=lt.reduce_kw, reduce_pct_of_peak=lt.reduce_pct_of_peak, cap_kw=lt.cap_kw)
    lo, hi = contract.band_pct
    pct = {1: lo, 2: (lo + hi) / 2, 3: hi}[level]
    return Target(reduce_pct_of_peak=pct)


def _target(
    name: str, stype: str, value: float, scale_kw: float, cfg: OpenAdrConfig, contract: ContractConfig
) -> Target | Refusal | None:
    """The target one interval asks for; None when it asks for nothing (level 0, a zero delta)."""
    if name == "SIMPLE":
        level = round(value)
        if abs(value - level) > 1e-9 or not 0 <= level <= 3:
            return Refusal("unsupported_signal", f"SIMPLE level {value:g} is not 0, 1, 2 or 3")
        return None if level == 0 else _level_target(level, cfg, contract)
    if name == "LOAD_DISPATCH":
        if stype == "delta":
            kw = value * scale_kw
            if kw > 1e-9:
                return Refusal(
                    "unsupported_signal", f"LOAD_DISPATCH delta +{kw:g} kW asks for more load, not less"
                )
            return None if kw > -1e-9 else Target(reduce_kw=min(-kw, 1_000_000))
        if stype == "setpoint":
            kw = value * scale_kw
            if kw < 0:
                return Refusal("unsupported_signal", f"LOAD_DISPATCH setpoint {kw:g} kW is negative")
            return Target(cap_kw=min(kw, 1_000_000))
    if name == "LOAD_CONTROL":
        if stype == "x-loadControlPercentOffset":
            pct = -value if value < 0 else value  # providers send the offset with either sign
            if pct > 100:
                return Refusal("unsupported_signal", f"LOAD_CONTROL percent offset {value:g} is beyond 100 %")
            return None if pct < 1e-9 else Target(reduce_pct_of_peak=pct)
        if stype == "x-loadControlCapacity":
            if not 0 <= value <= 1:
                return Refusal("unsupported_signal", f"LOAD_CONTROL capacity {value:g} is not within 0-1")
            return Target(cap_kw=value * contract.peak_kw)
    return Refusal("unsupported_signal", f"{name} signal of type {stype!r} is not supported")


def _signal(event: dict[str, Any], cfg: OpenAdrConfig) -> dict[str, Any] | Refusal:
    signals = event.get("event_signals") or []
    if isinstance(signals, dict):
        signals = signals.get("event_signals") or []
    by_name: dict[str, dict[str, Any]] = {}
    for s in signals:
        by_name.setdefault(str(s.get("signal_name")), s)
    for name in cfg.signals.prefer:
        if name in by_name:
            return by_name[name]
    names = ", ".join(sorted(by_name)) or "none"
    return Refusal("unsupported_signal", f"no SIMPLE, LOAD_DISPATCH or LOAD_CONTROL signal (got {names})")


def to_dr_event(event: dict[str, Any], cfg: OpenAdrConfig, contract: ContractConfig) -> DrEvent | Refusal:
    """Map one parsed oadrEvent; a Refusal when it cannot be taken on (the bridge answers optOut)."""
    desc = event.get("event_descriptor") or {}
    ap = event.get("active_period") or {}
    oid = str(desc.get("event_id"))
    try:
        start = ap["dtstart"]
        if not isinstance(start, datetime) or start.utcoffset() is None:
            return Refusal("invalid_field", "active period dtstart is not a date-time with an offset")
        duration = _seconds(ap.get("duration"))
        if duration <= 0:
            return Refusal(
                "invalid_field", "an open-ended event (duration 0) is not supported: the end must be known"
            )
        sig = _signal(event, cfg)
        if isinstance(sig, Refusal):
            return sig
        name, stype = str(sig.get("signal_name")), str(sig.get("signal_type"))
        meas = sig.get("measurement") or {}
        scale_kw = _SCALE.get(str(meas.get("scale") or "k"), 1.0) if name == "LOAD_DISPATCH" else 1.0
        spans: list[tuple[float, Target | None]] = []
        for iv in sig.get("intervals") or []:
            tgt = _target(name, stype, float(iv["signal_payload"]), scale_kw, cfg, contract)
            if isinstance(tgt, Refusal):
                return tgt
            spans.append((_seconds(iv.get("duration")), tgt))
        if not spans:
            return Refusal("invalid_field", f"the {name} signal has no intervals")
        if any(d <= 0 for d, _t in spans):
            return Refusal("invalid_field", f"a {name} interval has no duration")
        total = sum(d for d, _t in spans)
        if abs(total - duration) > 1e-3:
            # The active period rules; intervals that stop short or run over are fitted to it.
            spans[-1] = (spans[-1][0] + duration - total, spans[-1][1])
            if spans[-1][0] <= 0:
                return Refusal("invalid_field", "the signal intervals run past the active period")
        offset = 0.0
        while spans and spans[0][1] is None:  # nothing asked at the start: the event starts later
            offset += spans.pop(0)[0]
        while spans and spans[-1][1] is None:
            spans.pop()
        if not spans:
            return Refusal("nothing_asked", f"every {name} interval asks for no reduction")
        floor = Target(reduce_pct_of_peak=contract.band_pct[0])
        intervals = [Interval(duration_s=d, target=t if t is not None else floor) for d, t in spans]
        context = str(desc.get("market_context") or "")
        priority = int(desc.get("priority") or 0)
        status = str(desc.get("event_status") or "far")
        return DrEvent(
            event_id=our_id(oid),
            modification_number=int(desc.get("modification_number") or 0),
            status=status if status in ("far", "near", "active", "completed", "cancelled") else "far",  # type: ignore[arg-type]
            program=cfg.market_contexts.get(context, cfg.program),
            priority=LOWEST_PRIORITY if priority <= 0 else min(priority, LOWEST_PRIORITY),
            test_event=_bool(desc.get("test_event")),
            start=start + timedelta(seconds=offset),
            duration_s=sum(i.duration_s for i in intervals),
            ramp_up_s=_period(ap, "ramp_up"),
            recovery_s=_period(ap, "recovery"),
            start_after_s=_start_after(ap),
            notification_s=_period(ap, "notification") or 900.0,
            target=intervals[0].target,
            intervals=intervals if len(intervals) > 1 else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        # pydantic's ValidationError is a ValueError: a period or a target out of our range.
        msg = str(exc).splitlines()
        detail = " ".join(m.strip() for m in msg[:3]) if msg else type(exc).__name__
        return Refusal("invalid_field", f"event {oid!r}: {detail}")
    except EventError as err:
        return Refusal(err.code, err.message)
