"""`dr-agent diagnose` lines for the OpenADR VTN: the extra, reachable, TLS and its fingerprint, registered, last poll."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from agent.cli.diagnose import Check, open_read_only
from agent.config.model import SiteConfig
from agent.openadr.ven import META_KEY, VtnError, VtnLink


def _stored(cfg: SiteConfig) -> dict[str, Any] | None:
    store = open_read_only(cfg.storage.resolved())
    if store is None:
        return None
    try:
        raw = store.meta_get(META_KEY)
    except Exception:  # an older database without the row or the table
        return None
    finally:
        store.db.close()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def check_openadr(cfg: SiteConfig, timeout_s: float) -> list[Check]:
    """Ask the VTN about registration (oadrQueryRegistration: changes nothing) and read what the daemon stored."""
    oadr = cfg.openadr
    assert oadr is not None
    try:
        import openleadr  # noqa: F401
    except ImportError:
        return [
            Check(
                "openadr",
                "fail",
                "openadr is an event source but openleadr is not installed",
                "install the extra: pip install 'dr-agent[openadr]'",
            )
        ]
    checks: list[Check] = []
    link = VtnLink(oadr.model_copy(update={"timeout_s": min(oadr.timeout_s, timeout_s)}))
    tls = oadr.vtn_url.startswith("https://")
    try:
        mtype, body = await link.request("EiRegisterParty", "oadrQueryRegistration", request_id="diagnose")
        code = (body.get("response") or {}).get("response_code")
        detail = f"{oadr.vtn_url} answers ({mtype}, {code})"
        if tls:
            detail += f"; TLS, VTN fingerprint {link.peer_fingerprint}"
            if oadr.vtn_fingerprint:
                detail += " (matches vtn_fingerprint)"
        checks.append(Check("openadr.vtn", "ok", detail, data={"fingerprint": link.peer_fingerprint}))
    except VtnError as exc:
        hints = {
            "fingerprint": "ask the VTN operator for its certificate fingerprint and set openadr.vtn_fingerprint; "
            "a different one means another server answers at this address",
            "tls": "check openadr.ca_file (the VTN's CA), cert_file/key_file (ours) and the VTN's host name",
            "signature": "the VTN must sign its messages with the certificate of vtn_fingerprint",
            "unreachable": "check vtn_url, the network path and the VTN's firewall",
        }
        checks.append(
            Check(
                "openadr.vtn",
                "fail",
                f"{oadr.vtn_url}: {exc}",
                hints.get(exc.kind, "check the VTN's address and certificates"),
                data={"kind": exc.kind, "fingerprint": link.peer_fingerprint},
            )
        )
    finally:
        await link.close()
    own = link.own_fingerprint()
    stored = await asyncio.to_thread(_stored, cfg)
    if stored is None or stored.get("vtn_url") != oadr.vtn_url:
        checks.append(
            Check(
                "openadr.registration",
                "warn",
                "not registered with this VTN yet" + (f"; this VEN's fingerprint is {own}" if own else ""),
                "start the agent; the VTN operator needs this VEN's fingerprint for mutual TLS",
            )
        )
        return checks
    last = stored.get("last_poll_ts")
    age = None if last is None else time.time() - float(last)
    when = "never polled" if age is None else f"last poll {age:.0f} s ago"
    ok = bool(stored.get("registered")) and stored.get("error") is None
    detail = f"ven_id {stored.get('ven_id')}, registration {stored.get('registration_id')}; {when}"
    if stored.get("error"):
        detail += f"; last error: {stored['error']}"
    if own:
        detail += f"; this VEN's fingerprint {own}"
    checks.append(
        Check(
            "openadr.registration",
            "ok" if ok else "warn",
            detail,
            ""
            if ok
            else "see the openadr.vtn line; the agent registers again on its own once the VTN answers",
        )
    )
    return checks
