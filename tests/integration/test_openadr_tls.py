"""The OpenADR VEN over mutual TLS with signed messages, against an openleadr VTN on loopback.

Certificates are made in the test (a CA, the VTN's and the VEN's). The VEN
pins the VTN's fingerprint on the TLS connection and on every signed message;
the VTN checks the VEN's client certificate and signatures. An event is
taken and shed (read back over Modbus), and an event missing from a later
distribution is treated as cancelled: every device restored. A VTN whose
fingerprint is not the configured one is refused, and `diagnose` says so.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.cli.diagnose_openadr import check_openadr
from agent.config.model import SiteConfig
from agent.openadr.ven import fingerprint_of_der
from agent.platform.clock import ScaledClock
from tests.conftest import Mosquitto, site_config
from tests.helpers import Observer
from tests.integration.test_openadr import Vtn, agent_on_plant, until, vtn_on_loopback, with_openadr
from tests.integration.test_supervision import changed, read_back

pytestmark = [
    # On uvloop too (the speed extra): its TLS is its own, not asyncio's.
    pytest.mark.each_loop,
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning"),
]


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    ca_key: ec.EllipticCurvePrivateKey | None,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
    )
    if issuer is None:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        import ipaddress

        b = b.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
    return b.sign(ca_key or key, hashes.SHA256())


def make_pki(d: Path) -> dict[str, str]:
    """A CA, and a certificate + key signed by it for the VTN and for the VEN, as PEM files."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, None, None)
    out = {"ca": str(d / "ca.crt")}
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who in ("vtn", "ven"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(f"{who}.test", key, ca.subject, ca_key)
        (d / f"{who}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (d / f"{who}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        out[f"{who}_cert"], out[f"{who}_key"] = str(d / f"{who}.crt"), str(d / f"{who}.key")
        out[f"{who}_fp"] = fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER))
    return out


@asynccontextmanager
async def tls_site(
    mosquitto: Mosquitto, tmp_path: Path, pin: str
) -> AsyncIterator[tuple[dict[str, str], Vtn, SiteConfig]]:
    """A fresh PKI, a VTN on loopback over mutual TLS, and a site whose VEN pins `pki[pin]` as the VTN's."""
    pki = make_pki(tmp_path)
    tls = {"cert": pki["vtn_cert"], "key": pki["vtn_key"], "ca": pki["ca"]}
    async with vtn_on_loopback(tls=tls, ven_fingerprint=pki["ven_fp"]) as vtn:
        yield (
            pki,
            vtn,
            with_openadr(
                site_config(mosquitto.port, tmp_path),
                vtn,
                cert_file=pki["ven_cert"],
                key_file=pki["ven_key"],
                ca_file=pki["ca"],
                vtn_fingerprint=pki[pin],
            ),
        )


async def test_mutual_tls_signed_messages_event_and_implied_cancel(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with tls_site(mosquitto, tmp_path, pin="vtn_fp") as (pki, vtn, cfg):
        tz = ZoneInfo(cfg.site.timezone)
        clock = ScaledClock(
            30.0, origin_sim=datetime(datetime.now(tz).year + 1, 7, 1, 10, 30, tzinfo=tz).timestamp()
        )
        async with agent_on_plant(cfg, clock) as run:
            before, agent = run.before, run.agent
            async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root) as obs:
                await until(lambda: vtn.registrations, 20, "the VEN never registered over mutual TLS")
                ven_id = vtn.registrations[0]
                start = datetime.fromtimestamp(clock.now() + 4 * 60, tz)
                vtn.add_event(ven_id, "tls-1", start, 30, delta_kw=100)
                await until(lambda: ("tls-1", "optIn") in vtn.opts, 20, "no optIn at the VTN")
                await obs.wait_for(
                    lambda t, b: t.endswith("/out/event/oadr:tls-1") and b["state"] == "active", 30
                )
                await clock.sleep(120)
                assert changed(before, await read_back(cfg)), "nothing was shed"

                # The next distribution holds another event only: tls-1 is over for the VEN.
                vtn.server.events[ven_id].clear()
                vtn.add_event(ven_id, "tls-2", start + timedelta(hours=1), 10, delta_kw=60)
                await obs.wait_for(
                    lambda t, b: t.endswith("/out/event/oadr:tls-1") and b["state"] == "cancelled", 30
                )
                await run.restored()
                assert not changed(before, await read_back(cfg)), "not restored after the implied cancel"
                assert agent.ven.status.error_kind is None

            checks = await check_openadr(cfg, 5.0)
            vtn_line = next(c for c in checks if c.name == "openadr.vtn")
            assert vtn_line.status == "ok" and pki["vtn_fp"] in vtn_line.detail, vtn_line


async def test_a_wrong_vtn_fingerprint_is_refused_and_diagnose_says_so(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    # The VEN pins its own fingerprint, not the VTN's.
    async with tls_site(mosquitto, tmp_path, pin="ven_fp") as (pki, vtn, cfg):
        checks = await check_openadr(cfg, 5.0)
        line = next(c for c in checks if c.name == "openadr.vtn")
        assert line.status == "fail", line
        assert (
            f"presented certificate fingerprint {pki['vtn_fp']}" in line.detail and "refused" in line.detail
        )
        assert "vtn_fingerprint" in line.hint

        clock = ScaledClock(
            30.0, origin_sim=datetime(datetime.now(ZoneInfo("UTC")).year + 1, 7, 1, 2, 30).timestamp()
        )
        async with agent_on_plant(cfg, clock) as run:
            agent = run.agent
            await until(
                lambda: agent.ven is not None and agent.ven.status.error_kind == "fingerprint",
                20,
                "not refused",
            )
            await asyncio.sleep(1.0)
            assert not vtn.registrations and not agent.ven.status.registered
