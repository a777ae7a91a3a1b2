"""The OpenADR 2.0b VEN: registration, polling, opt-in/out, TELEMETRY_USAGE reports.

openleadr is the wire layer only (message templates, XML schema, XML
signatures); the VEN's behaviour is ours, because the library's client leaves
the parts that matter to the application: it schedules nothing, ignores
`startafter`, drops the ramp-up, never treats an event missing from a later
distribution as cancelled, keeps nothing across a restart, does not
re-register with a VTN that forgot it, and on losing the VTN only logs.

Here every event goes to the same `EventLifecycle` as an MQTT event (keyed
`oadr:<eiEventID>`, persisted in the events table), so the contract decides
opt-in/out, the lifecycle runs it (randomized start, ramp-up, intervals,
recovery, resume after restart) and live reports and settlements still go to
MQTT and Prometheus. The VEN answers each event with the lifecycle's decision,
cancels an event a later distribution no longer holds, re-registers when the
VTN asks or answers that it does not know us, keeps running accepted events
while the VTN is unreachable, and holds its reports until the VTN is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from agent.config.model import ContractConfig
from agent.config.openadr import OpenAdrConfig
from agent.events.lifecycle import EventLifecycle
from agent.events.model import (
    FINAL_STATES,
    ErrorReply,
    EventError,
    EventResponse,
    EventState,
    LiveState,
    PriceReading,
)
from agent.events.ports import ProviderLink
from agent.openadr.mapping import PREFIX, Refusal, our_id, to_dr_event
from agent.platform.clock import Clock
from agent.platform.logs import FailureLog
from drivers.backoff import Backoff

log = logging.getLogger("dr_agent")

#: Our one report: site demand, the baseline control runs on, and the realized shed, in kW.
REPORT_SPECIFIER_ID = "dr-agent-telemetry"
R_IDS = ("site_demand", "baseline", "realized_shed")
#: An event the VTN no longer lists this close to its end is left to end on its own (clock skew).
IMPLIED_CANCEL_GRACE_S = 60.0
#: OpenADR's "invalid ID" answer: the VTN does not know our venID or registration.
INVALID_ID = 452
META_KEY = "openadr_registration"
#: The VEN's status goes to the database (for diagnose) at most this often, s.
SAVE_EVERY_S = 60.0


class VtnError(Exception):
    """A request to the VTN that failed; `kind` says how (unreachable, tls, fingerprint, signature, ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class RegistrationLost(Exception):
    """The VTN does not know this VEN (any more): register again."""


def fingerprint_of_der(der: bytes) -> str:
    """OpenADR's certificate fingerprint: the last 10 bytes of the SHA-256, as AA:BB:... pairs."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(44, 64, 2))


def _id() -> str:
    return uuid.uuid4().hex


class VtnLink:
    """One VTN over HTTP(S): build, sign, post, check the TLS peer, validate and parse each message."""

    def __init__(self, cfg: OpenAdrConfig, base: Path | None = None) -> None:
        self.cfg = cfg
        self.base = base or Path.cwd()
        self._session: Any = None
        self.cert: bytes | None = None
        self.key: bytes | None = None
        self.passphrase: str | None = None
        if cfg.cert_file and cfg.key_file:
            self.cert = self._path(cfg.cert_file).read_bytes()
            self.key = self._path(cfg.key_file).read_bytes()
        if cfg.key_passphrase_env:
            self.passphrase = os.environ.get(cfg.key_passphrase_env)
        #: The TLS fingerprint the VTN presented last, for diagnose.
        self.peer_fingerprint: str | None = None

    def _path(self, p: str) -> Path:
        path = Path(p)
        return path if path.is_absolute() else self.base / path

    def own_fingerprint(self) -> str | None:
        """This VEN's fingerprint, for the VTN operator (never a secret)."""
        if self.cert is None:
            return None
        return fingerprint_of_der(ssl.PEM_cert_to_DER_cert(self.cert.decode()))

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.cfg.vtn_url.startswith("https://"):
            return None
        ctx = ssl.create_default_context(
            cafile=str(self._path(self.cfg.ca_file)) if self.cfg.ca_file else None
        )
        ctx.check_hostname = self.cfg.check_hostname
        if self.cfg.cert_file and self.cfg.key_file:
            ctx.load_cert_chain(
                str(self._path(self.cfg.cert_file)), str(self._path(self.cfg.key_file)), self.passphrase
            )
        return ctx

    async def _ensure(self) -> Any:
        import aiohttp

        if self._session is None or self._session.closed:
            # Reads the CA, certificate and key files (and decrypts the key): not on the event loop.
            ctx = await asyncio.to_thread(self._ssl)
            if ctx is not None:
                await self._pin(ctx)
            timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
            connector = aiohttp.TCPConnector(ssl=ctx or False)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=timeout, headers={"content-type": "application/xml"}
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def message(self, message_type: str, **payload: Any) -> str:
        from openleadr.messaging import create_message

        sign = self.cfg.sign_messages and self.cert is not None
        return str(
            create_message(
                message_type,
                cert=self.cert if sign else None,
                key=self.key if sign else None,
                passphrase=self.passphrase,
                disable_signature=not sign,
                **payload,
            )
        )

    async def request(
        self, service: str, message_type: str, **payload: Any
    ) -> tuple[str | None, dict[str, Any]]:
        """Send one message to `<vtn_url>/<service>`; the answer's type and payload. Raises VtnError."""
        import aiohttp
        from lxml.etree import XMLSyntaxError
        from openleadr import errors
        from openleadr.messaging import parse_message, validate_xml_schema, validate_xml_signature
        from signxml.exceptions import InvalidSignature

        body = self.message(message_type, **payload)
        session = await self._ensure()
        url = f"{self.cfg.vtn_url.rstrip('/')}/{service}"
        try:
            async with session.post(url, data=body) as resp:
                content = await resp.read()
                if resp.status != 200:
                    text = content.decode("utf-8", "replace")[:200]
                    raise VtnError("http", f"{service}: HTTP {resp.status} {text!r}")
        except VtnError:
            await self.close()  # a refused peer is never reused
            raise
        except aiohttp.ClientConnectorCertificateError as exc:
            raise VtnError(
                "tls", f"TLS: the VTN's certificate was refused: {exc.certificate_error}"
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise VtnError("tls", f"TLS handshake failed: {exc}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise VtnError("unreachable", f"{url}: {type(exc).__name__}: {exc}".rstrip(": ")) from None
        if not content:
            return None, {}
        try:
            tree = validate_xml_schema(content)
            if self.cfg.vtn_fingerprint:
                validate_xml_signature(tree, cert_fingerprint=self.cfg.vtn_fingerprint)
            mtype, mpayload = parse_message(content)
        except errors.FingerprintMismatch as exc:
            raise VtnError("fingerprint", f"message signed by another certificate: {exc}") from None
        except InvalidSignature as exc:
            raise VtnError("signature", f"the VTN's message signature does not verify: {exc}") from None
        except XMLSyntaxError as exc:
            raise VtnError("schema", f"the VTN's answer is not valid OpenADR 2.0b: {exc}") from None
        except Exception as exc:  # an unsigned message when one is required, a broken payload
            raise VtnError(
                "signature" if self.cfg.vtn_fingerprint else "schema", f"{type(exc).__name__}: {exc}"
            ) from None
        vtn = mpayload.get("vtn_id")
        if self.cfg.vtn_id and vtn and vtn != self.cfg.vtn_id:
            raise VtnError("vtn_id", f"the answer names VTN {vtn!r}, not the configured {self.cfg.vtn_id!r}")
        return str(mtype), dict(mpayload)

    async def _pin(self, ctx: ssl.SSLContext) -> None:
        """Pin the VTN's TLS certificate to vtn_fingerprint (on top of the CA check), once per session.

        aiohttp releases a connection as soon as a short answer is read, so the peer certificate is
        taken from a handshake of our own; every message is also checked against the same
        fingerprint through its signature.
        """
        from urllib.parse import urlsplit

        u = urlsplit(self.cfg.vtn_url)
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                _r, w = await asyncio.open_connection(u.hostname, u.port or 443, ssl=ctx)
        except ssl.SSLError as exc:
            raise VtnError("tls", f"TLS handshake with the VTN failed: {exc}") from None
        except (OSError, TimeoutError) as exc:
            raise VtnError("unreachable", f"{self.cfg.vtn_url}: {type(exc).__name__}: {exc}") from None
        try:
            sslobj = w.get_extra_info("ssl_object")
            der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        finally:
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
        if der is None:
            raise VtnError("tls", "the VTN presented no certificate")
        self.peer_fingerprint = fingerprint_of_der(der)
        want = self.cfg.vtn_fingerprint
        if want and self.peer_fingerprint != want:
            raise VtnError(
                "fingerprint",
                f"the VTN presented certificate fingerprint {self.peer_fingerprint}, not the configured "
                f"vtn_fingerprint {want}: refused",
            )


@dataclass
class ReportRequest:
    """One oadrReportRequest the VTN made: what to sample, how often, and how often to send."""

    request_id: str
    r_ids: list[str]
    granularity_s: float
    back_s: float
    task: asyncio.Task[None] | None = None
    samples: list[tuple[datetime, str, float]] = field(default_factory=list)


@dataclass
class VenStatus:
    """What `diagnose` and the logs say about the VTN."""

    reachable: bool | None = None
    registered: bool = False
    ven_id: str | None = None
    registration_id: str | None = None
    last_poll_ts: float | None = None
    last_error: str | None = None
    error_kind: str | None = None
    poll_s: float = 10.0
    reports_sent: int = 0
    reports_held: int = 0


class MetaStore(Protocol):
    """Where the VEN keeps its registration across restarts (the store's meta table)."""

    async def meta_get(self, key: str) -> str | None: ...

    async def meta_set(self, key: str, value: str) -> None: ...


class VenBridge:
    """The VEN as a supervised component of the agent (`openadr`): run() loops until cancelled.

    An event source for the lifecycle (it feeds it the VTN's events) and a `ProviderLink` for
    the events it brought (agent/events/ports.py): the lifecycle's responses to them become the
    optIn/optOut of the VTN's oadrCreatedEvent. Telemetry goes to the VTN as TELEMETRY_USAGE at
    the cadence the VTN's report requests set; everything else (states, live reports,
    settlements, refusals) goes to `provider` (MQTT) as for any event.
    """

    def __init__(
        self,
        cfg: OpenAdrConfig,
        lifecycle: EventLifecycle,
        clock: Clock,
        store: MetaStore,
        provider: ProviderLink,
        contract: Callable[[], ContractConfig],
        site_load_kw: Callable[[], float | None],
        base: Path | None = None,
    ) -> None:
        """`contract` gives the contract in force (a reload replaces it); `site_load_kw` the
        filtered site load (None when the meter is stale)."""
        self.cfg = cfg
        self.lifecycle = lifecycle
        self.clock = clock
        self.store = store
        self.provider = provider
        self.contract = contract
        self.site_load_kw = site_load_kw
        #: The lifecycle's latest answer to each of our events: optIn or optOut.
        self.answers: dict[str, str] = {}
        self.link = VtnLink(cfg, base)
        self.status = VenStatus(ven_id=cfg.ven_id)
        self.requests: dict[str, ReportRequest] = {}
        self.held: deque[dict[str, Any]] = deque(maxlen=cfg.max_held_reports)
        #: eiEventID of each of our ids seen in a distribution (answers name the VTN's id).
        self.oadr_ids: dict[str, str] = {}
        self._fails = FailureLog(log, "openadr_vtn", level=logging.ERROR)
        self._send_lock = asyncio.Lock()
        #: Report sends started by _queue: held here, as the loop keeps only weak references to tasks.
        self._sends: set[asyncio.Task[None]] = set()
        self._saved_at = -SAVE_EVERY_S

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        backoff = Backoff(base_s=1.0, cap_s=max(60.0, self.cfg.poll_interval_s or 0.0))
        await self._load_registration()
        try:
            while True:
                try:
                    if not self.status.registered:
                        await self.register()
                    await self.poll_once()
                    await self.flush_reports()
                    self._ok()
                    await self._save_now_and_then()
                    backoff.succeeded()
                    await asyncio.sleep(self.status.poll_s)
                except RegistrationLost as exc:
                    log.warning("event=openadr_reregister reason=%r", str(exc))
                    self.status.registered = False
                except VtnError as exc:
                    self._failed(exc)
                    with contextlib.suppress(Exception):
                        await self._save_now_and_then()
                    await asyncio.sleep(max(0.2, backoff.failed()))
        finally:
            for rq in self.requests.values():
                if rq.task is not None:
                    rq.task.cancel()
            with contextlib.suppress(Exception):
                await self.link.close()

    async def _save_now_and_then(self) -> None:
        # Once a minute at most: a poll every few seconds must not wear the flash.
        if time.monotonic() - self._saved_at >= SAVE_EVERY_S:
            await self._save_registration()

    def _ok(self) -> None:
        was_down = self.status.reachable is False
        self.status.reachable, self.status.last_error, self.status.error_kind = True, None, None
        self.status.last_poll_ts = self.clock.now()
        self._fails.ok()
        if was_down:
            log.info("event=openadr_vtn_back held_reports=%d", len(self.held))

    def _failed(self, exc: VtnError) -> None:
        self.status.reachable = False if exc.kind == "unreachable" else self.status.reachable
        self.status.last_error, self.status.error_kind = str(exc), exc.kind
        if exc.kind in ("fingerprint", "tls", "signature", "vtn_id"):
            self.status.reachable = False
        # Accepted events run on: the lifecycle owns them, the VTN only gets their answers late.
        self._fails.failed(f"{exc.kind}: {exc}")

    async def _request(
        self, service: str, message_type: str, **payload: Any
    ) -> tuple[str | None, dict[str, Any]]:
        mtype, body = await self.link.request(service, message_type, **payload)
        if mtype == "oadrRequestReregistration":
            with contextlib.suppress(VtnError):
                await self.link.request(
                    "EiRegisterParty",
                    "oadrResponse",
                    ven_id=self.status.ven_id,
                    response=self._ok_response(None),
                )
            raise RegistrationLost("the VTN asked this VEN to register again")
        code = (body.get("response") or {}).get("response_code")
        if code is not None and int(code) == INVALID_ID and message_type != "oadrCreatePartyRegistration":
            raise RegistrationLost(f"the VTN answered {message_type} with 452 (invalid id)")
        return mtype, body

    @staticmethod
    def _ok_response(request_id: str | None) -> dict[str, Any]:
        return {"response_code": 200, "response_description": "OK", "request_id": request_id}

    # -- registration -----------------------------------------------------------------

    async def _load_registration(self) -> None:
        import json

        raw = await self.store.meta_get(META_KEY)
        if raw:
            with contextlib.suppress(ValueError, TypeError):
                kept = json.loads(raw)
                if kept.get("vtn_url") == self.cfg.vtn_url:
                    self.status.ven_id = self.cfg.ven_id or kept.get("ven_id")
                    self.status.registration_id = kept.get("registration_id")

    async def _save_registration(self) -> None:
        """What a restart and `diagnose` need: who we are at this VTN, and when we last polled it."""
        import json

        body = {
            "vtn_url": self.cfg.vtn_url,
            "ven_id": self.status.ven_id,
            "registration_id": self.status.registration_id,
            "registered": self.status.registered,
            "last_poll_ts": self.status.last_poll_ts,
            "error": self.status.last_error,
        }
        await self.store.meta_set(META_KEY, json.dumps(body))
        self._saved_at = time.monotonic()

    async def register(self) -> None:
        """Query, create the party registration, offer our report, and take the VTN's events."""
        mtype, body = await self._request("EiRegisterParty", "oadrQueryRegistration", request_id=_id())
        mtype, body = await self._request(
            "EiRegisterParty",
            "oadrCreatePartyRegistration",
            request_id=_id(),
            ven_name=self.cfg.ven_name,
            ven_id=self.status.ven_id,
            http_pull_model=True,
            xml_signature=bool(self.cfg.sign_messages and self.link.cert),
            report_only=False,
            profile_name="2.0b",
            transport_name="simpleHttp",
            transport_address=None,
            registration_id=None,
        )
        resp = body.get("response") or {}
        if mtype != "oadrCreatedPartyRegistration" or int(resp.get("response_code") or 0) != 200:
            raise VtnError(
                "registration",
                f"registration refused: {resp.get('response_code')} {resp.get('response_description')!r}",
            )
        if not body.get("registration_id") or not body.get("ven_id"):
            raise VtnError(
                "registration", "the VTN answered the registration without a registrationID or venID"
            )
        self.status.registration_id = str(body["registration_id"])
        self.status.ven_id = str(body["ven_id"])
        freq = body.get("requested_oadr_poll_freq")
        vtn_s = freq.total_seconds() if isinstance(freq, timedelta) and freq.total_seconds() > 0 else 10.0
        self.status.poll_s = self.cfg.poll_interval_s or min(vtn_s, 86400.0)
        self.status.registered = True
        await self._save_registration()
        log.info(
            "event=openadr_registered ven_id=%s registration_id=%s poll_s=%g",
            self.status.ven_id,
            self.status.registration_id,
            self.status.poll_s,
        )
        await self.register_reports()
        mtype, body = await self._request(
            "EiEvent", "oadrRequestEvent", request_id=_id(), ven_id=self.status.ven_id, reply_limit=None
        )
        # The answer to oadrRequestEvent is the full list: none (oadrResponse) cancels what we hold.
        await self.on_distribution(body if mtype == "oadrDistributeEvent" else {"events": []})

    # -- polling --------------------------------------------------------------------------

    async def poll_once(self) -> None:
        """Poll until the VTN has nothing more for us this round (a few messages at most)."""
        for _ in range(10):
            mtype, body = await self._request("OadrPoll", "oadrPoll", ven_id=self.status.ven_id)
            self.status.last_poll_ts = self.clock.now()
            if mtype in (None, "oadrResponse"):
                return
            await self.on_message(mtype, body)

    async def on_message(self, mtype: str, body: dict[str, Any]) -> None:
        if mtype == "oadrDistributeEvent":
            await self.on_distribution(body)
        elif mtype == "oadrCreateReport":
            await self.on_report_requests(body)
        elif mtype == "oadrCancelReport":
            await self.on_cancel_report(body)
        elif mtype == "oadrRegisterReport":
            # Reports from the VTN to us: none are wanted.
            await self._request(
                "EiReport",
                "oadrRegisteredReport",
                ven_id=self.status.ven_id,
                report_requests=[],
                response=self._ok_response(body.get("request_id")),
            )
        elif mtype == "oadrCancelPartyRegistration":
            await self._request(
                "EiRegisterParty",
                "oadrCanceledPartyRegistration",
                ven_id=self.status.ven_id,
                registration_id=body.get("registration_id"),
                response=self._ok_response(body.get("request_id")),
            )
            log.warning("event=openadr_registration_cancelled_by_vtn registering_again=true")
            raise RegistrationLost("the VTN cancelled our registration")
        else:
            log.warning("event=openadr_unhandled message=%s", mtype)

    # -- events ---------------------------------------------------------------------------

    async def on_distribution(self, body: dict[str, Any]) -> None:
        """Answer every event of one oadrDistributeEvent with the lifecycle's decision."""
        lc = self.lifecycle
        now = self.clock.now()
        answers: list[dict[str, Any]] = []
        seen: set[str] = set()
        for raw in body.get("events") or []:
            desc = raw.get("event_descriptor") or {}
            oid = str(desc.get("event_id"))
            ours = our_id(oid)
            seen.add(ours)
            self.oadr_ids[ours] = oid
            mod = int(desc.get("modification_number") or 0)
            opt = await self._take(raw, ours, oid, mod, now)
            if raw.get("response_required", "always") == "always":
                answers.append(
                    {
                        "response_code": 200,
                        "response_description": "OK",
                        "request_id": body.get("request_id"),
                        "event_id": oid,
                        "modification_number": mod,
                        "opt_type": opt,
                    }
                )
        # An event the VTN no longer lists is over for us (openleadr has no such rule: its issue #42).
        for ours, rec in list(lc.events.items()):
            if not ours.startswith(PREFIX) or ours in seen or rec.opt.opt != "in":
                continue
            if rec.state in FINAL_STATES or rec.event.end_ts <= now + IMPLIED_CANCEL_GRACE_S:
                continue
            log.warning(
                "event_id=%s event=openadr_implied_cancel reason='missing from the distribution'", ours
            )
            cancel = rec.event.model_copy(
                update={"modification_number": rec.event.modification_number + 1, "status": "cancelled"}
            )
            await lc.handle_event(cancel)
        if answers:
            await self._request(
                "EiEvent",
                "oadrCreatedEvent",
                ven_id=self.status.ven_id,
                response=self._ok_response(body.get("request_id")),
                event_responses=answers,
            )

    async def _take(self, raw: dict[str, Any], ours: str, oid: str, mod: int, now: float) -> str:
        """Feed one event to the lifecycle (unless it holds this modification already): optIn or optOut."""
        lc = self.lifecycle
        known = lc.events.get(ours)
        mapped = to_dr_event(raw, self.cfg, self.contract())
        status = str((raw.get("event_descriptor") or {}).get("event_status"))
        if isinstance(mapped, Refusal):
            if (
                known is not None
                and known.state not in FINAL_STATES
                and mod > known.event.modification_number
            ):
                # A modification we cannot follow ends the event as we knew it.
                cancel = known.event.model_copy(update={"modification_number": mod, "status": "cancelled"})
                await lc.handle_event(cancel)
            if known is None or mod > known.event.modification_number:
                log.warning(
                    "event_id=%s event=openadr_refused code=%s reason=%r", ours, mapped.code, mapped.reason
                )
                err = EventError(mapped.code, f"OpenADR event {oid!r}: {mapped.reason}", ours)
                await self.provider.send_error(ErrorReply(**err.payload()))
            return "optOut"
        if status == "cancelled" and known is None:
            return "optOut"  # nothing to cancel here
        if known is not None and mod == known.event.modification_number:
            return "optIn" if known.opt.opt == "in" else "optOut"  # a repeat of what we answered
        if known is None and mapped.end_ts <= now:
            return "optOut"  # over before we saw it
        self.answers.pop(ours, None)
        await lc.handle_event(mapped)  # its response comes back through send_response
        rec = lc.events.get(ours)
        if rec is None:
            return "optOut"
        log.info("event_id=%s event=openadr_answer opt=%s code=%s", ours, rec.opt.opt, rec.opt.code)
        return self.answers.get(ours) or ("optIn" if rec.opt.opt == "in" else "optOut")

    # -- the ProviderLink for our events ------------------------------------------------------

    async def send_response(self, body: EventResponse) -> None:
        """The lifecycle's answer to one of our events: the optIn/optOut the VTN gets (in the
        oadrCreatedEvent of the distribution being answered, or of the next one that asks)."""
        self.answers[body.event_id] = "optIn" if body.opt == "in" else "optOut"

    async def send_report(self, body: LiveState) -> int:
        return 0  # the VTN's report requests sample the site on their own cadence (values())

    async def send_state(self, body: EventState) -> None:
        return None

    async def send_settlement(self, event_id: str, body: dict[str, Any]) -> None:
        return None

    async def send_ledger(self, body: dict[str, Any]) -> None:
        return None

    async def send_error(self, body: ErrorReply) -> None:
        return None

    async def send_price(self, body: PriceReading) -> None:
        return None

    # -- reports ----------------------------------------------------------------------------

    def _report_metadata(self) -> Any:
        from openleadr import enums, objects

        rate = objects.SamplingRate(
            min_period=timedelta(seconds=1), max_period=timedelta(hours=1), on_change=False
        )
        kinds = {"site_demand": "demand", "baseline": "baseline", "realized_shed": "deviation"}
        report = objects.Report(
            report_specifier_id=REPORT_SPECIFIER_ID,
            report_name="METADATA_TELEMETRY_USAGE",
            created_date_time=datetime.now(UTC),
            duration=timedelta(hours=1),
            dtstart=datetime.now(UTC),
        )
        for r_id in R_IDS:
            meas = objects.Measurement(
                name=enums.MEASUREMENTS.REAL_POWER.name,
                description=enums.MEASUREMENTS.REAL_POWER.description,
                unit=enums.MEASUREMENTS.REAL_POWER.unit,
                scale="k",
                power_attributes=objects.PowerAttributes(),
            )
            target = objects.Target(resource_id=r_id)
            report.report_descriptions.append(
                objects.ReportDescription(
                    r_id=r_id,
                    market_context=None,
                    reading_type="Direct Read",
                    report_subject=target,
                    report_data_source=target,
                    report_type=kinds[r_id],
                    sampling_rate=rate,
                    measurement=meas,
                )
            )
        return report

    async def register_reports(self) -> None:
        for rq in self.requests.values():
            if rq.task is not None:
                rq.task.cancel()
        self.requests.clear()
        _mtype, body = await self._request(
            "EiReport",
            "oadrRegisterReport",
            request_id=_id(),
            ven_id=self.status.ven_id,
            reports=[self._report_metadata()],
            report_request_id=0,
        )
        if body.get("report_requests"):
            await self.on_report_requests(body)

    async def on_report_requests(self, body: dict[str, Any]) -> None:
        """Start sampling what the VTN asked for, at its granularity; answer oadrCreatedReport."""
        pending = []
        for rr in body.get("report_requests") or []:
            spec = rr.get("report_specifier") or {}
            rid = str(rr.get("report_request_id"))
            if spec.get("report_specifier_id") != REPORT_SPECIFIER_ID:
                log.warning("event=openadr_unknown_report specifier=%r", spec.get("report_specifier_id"))
                continue
            r_ids = [
                str(p.get("r_id")) for p in spec.get("specifier_payloads") or [] if p.get("r_id") in R_IDS
            ]
            gran = spec.get("granularity")
            back = spec.get("report_back_duration")
            g = gran.total_seconds() if isinstance(gran, timedelta) else 0.0
            b = back.total_seconds() if isinstance(back, timedelta) else g
            old = self.requests.pop(rid, None)
            if old is not None and old.task is not None:
                old.task.cancel()
            rq = ReportRequest(rid, r_ids, g, max(b, g))
            rq.task = asyncio.get_running_loop().create_task(self._sample(rq), name=f"openadr-report[{rid}]")
            self.requests[rid] = rq
            pending.append({"report_request_id": rid})
            log.info(
                "event=openadr_report_requested request=%s r_ids=%s granularity_s=%g report_back_s=%g",
                rid,
                ",".join(r_ids),
                g,
                rq.back_s,
            )
        await self._request(
            "EiReport",
            "oadrCreatedReport",
            ven_id=self.status.ven_id,
            pending_reports=pending,
            response=self._ok_response(
                body.get("request_id") or (body.get("response") or {}).get("request_id")
            ),
        )

    async def on_cancel_report(self, body: dict[str, Any]) -> None:
        rid = str(body.get("report_request_id"))
        rq = self.requests.pop(rid, None)
        if rq is not None and rq.task is not None:
            rq.task.cancel()
        await self._request(
            "EiReport",
            "oadrCanceledReport",
            ven_id=self.status.ven_id,
            report_request_id=rid,
            pending_reports=[],
            response=self._ok_response(body.get("request_id")),
        )

    def values(self) -> dict[str, float] | None:
        """Site demand, the baseline control runs on (the demand itself without an event), realized shed; kW."""
        load = self.site_load_kw()
        if load is None:
            return None
        rec = self.lifecycle.running()
        baseline = rec.control.baseline_kw if rec is not None and rec.control is not None else load
        return {"site_demand": load, "baseline": baseline, "realized_shed": baseline - load}

    async def _sample(self, rq: ReportRequest) -> None:
        """Sample every granularity (the agent's clock); queue a report every report-back duration."""
        clock = self.clock
        step = rq.granularity_s if rq.granularity_s > 0 else 0.0
        next_send = clock.now() + rq.back_s
        while True:
            now = clock.now()
            vals = self.values()
            if vals is not None:
                dt = datetime.fromtimestamp(now, UTC)
                rq.samples.extend((dt, r, round(vals[r], 3)) for r in rq.r_ids)
            if step == 0.0:  # a single report
                self._queue(rq)
                return
            if clock.now() >= next_send - 1e-6:
                self._queue(rq)
                next_send += rq.back_s
            await clock.sleep(step)

    def _queue(self, rq: ReportRequest) -> None:
        if not rq.samples:
            return
        samples, rq.samples = rq.samples, []
        dropped = len(self.held) == self.held.maxlen
        self.held.append({"request_id": rq.request_id, "samples": samples})
        if dropped:
            log.warning(
                "event=openadr_report_dropped reason='held reports full' max=%d", self.cfg.max_held_reports
            )
        self.status.reports_held = len(self.held)
        if self.status.reachable and self.status.registered:
            task = asyncio.get_running_loop().create_task(self._flush_quietly(), name="openadr-report-send")
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(VtnError, RegistrationLost):
            await self.flush_reports()

    async def flush_reports(self) -> None:
        """Send every held report, oldest first; stop at the first failure (kept for the next round)."""
        from openleadr import objects

        async with self._send_lock:
            while self.held:
                item = self.held[0]
                intervals = [
                    objects.ReportInterval(dtstart=dt, report_payload=objects.ReportPayload(r_id=r, value=v))
                    for dt, r, v in item["samples"]
                ]
                report = objects.Report(
                    report_specifier_id=REPORT_SPECIFIER_ID,
                    report_name="TELEMETRY_USAGE",
                    report_request_id=item["request_id"],
                    intervals=intervals,
                    dtstart=min(i.dtstart for i in intervals),
                )
                await self._request(
                    "EiReport",
                    "oadrUpdateReport",
                    request_id=_id(),
                    ven_id=self.status.ven_id,
                    reports=[report],
                )
                self.held.popleft()
                self.status.reports_sent += 1
                self.status.reports_held = len(self.held)

    # -- for diagnose and the state file ------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        s = self.status
        return {
            "vtn_url": self.cfg.vtn_url,
            "reachable": s.reachable,
            "registered": s.registered,
            "ven_id": s.ven_id,
            "last_poll_age_s": None
            if s.last_poll_ts is None
            else round(self.clock.now() - s.last_poll_ts, 1),
            "error": s.last_error,
            "reports_held": s.reports_held,
            "reports_sent": s.reports_sent,
        }
