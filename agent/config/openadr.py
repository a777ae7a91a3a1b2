"""The `openadr:` section of the site config: which VTN, who we are, how signals become targets."""

from __future__ import annotations

import re
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.config.yamlsource import FieldError
from strategies.model import Program

#: OpenADR's certificate fingerprint: the last 10 bytes of the SHA-256 of the DER certificate.
FINGERPRINT = re.compile(r"^([0-9A-F]{2}:){9}[0-9A-F]{2}$")


SignalName = Literal["LOAD_DISPATCH", "LOAD_CONTROL", "SIMPLE"]
SIGNAL_NAMES: tuple[SignalName, ...] = ("LOAD_DISPATCH", "LOAD_CONTROL", "SIMPLE")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TargetFields(BaseModel):
    """The three ways to state a target, exactly one given: a SIMPLE level's here, an event's
    (`agent.events.model.Target`)."""

    reduce_kw: float | None = Field(default=None, gt=0, le=1_000_000, description="Reduce by this much, kW.")
    reduce_pct_of_peak: float | None = Field(
        default=None, gt=0, le=100, description="Reduce by this share of the contract peak, %."
    )
    cap_kw: float | None = Field(
        default=None, ge=0, le=1_000_000, description="Keep site load at or below, kW."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [k for k in ("reduce_kw", "reduce_pct_of_peak", "cap_kw") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(self._not_one(given))
        return self

    def _not_one(self, given: list[str]) -> str:
        return "needs exactly one of reduce_kw, reduce_pct_of_peak, cap_kw"


class LevelTarget(TargetFields, _Model):
    """What one SIMPLE level asks of the site: exactly one of the three target kinds."""

    def _not_one(self, given: list[str]) -> str:
        return "a level needs exactly one of reduce_kw, reduce_pct_of_peak, cap_kw"


class SignalMapping(_Model):
    """How the OpenADR signals become our targets (docs/openadr.md has the table)."""

    simple_levels: dict[Literal[1, 2, 3], LevelTarget] = Field(
        default_factory=dict,
        description="SIMPLE signal level (1 moderate, 2 high, 3 special) -> target; a level not listed "
        "takes the band: 1 its minimum, 2 its middle, 3 its maximum. Level 0 sheds nothing.",
    )
    load_control_percent_of: Literal["peak"] = Field(
        default="peak",
        description="LOAD_CONTROL x-loadControlPercentOffset is a reduction in % of the contract peak.",
    )
    prefer: list[SignalName] = Field(
        default_factory=lambda: list(SIGNAL_NAMES),
        min_length=1,
        description="With several signals in one event, the first of these names that is present is followed.",
    )


class OpenAdrConfig(_Model):
    """The VTN this agent takes events from as an OpenADR 2.0b VEN (needs the `openadr` extra)."""

    vtn_url: str = Field(
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="The VTN's base URL, e.g. https://vtn.example:8443/OpenADR2/Simple/2.0b.",
    )
    ven_name: str = Field(min_length=1, max_length=128, description="This VEN's name, as the VTN knows it.")
    ven_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="A venID given out of band; omitted: the one the VTN assigns (kept in the database).",
    )
    vtn_id: str | None = Field(
        default=None, description="The VTN's id; when given, messages naming another VTN are refused."
    )
    cert_file: str | None = Field(
        default=None,
        description="This VEN's certificate (PEM): the TLS client certificate and the signing key's.",
    )
    key_file: str | None = Field(default=None, description="This VEN's private key (PEM).")
    key_passphrase_env: str | None = Field(
        default=None, description="Environment variable holding the private key's passphrase, if any."
    )
    ca_file: str | None = Field(
        default=None, description="CA certificate (PEM) the VTN's TLS certificate chains to."
    )
    vtn_fingerprint: str | None = Field(
        default=None,
        description="The VTN certificate's OpenADR fingerprint (last 10 bytes of its SHA-256, AA:BB:...): "
        "checked on the TLS connection and on every signed message; messages that are not signed by it are refused.",
    )
    check_hostname: bool = Field(default=True, description="Check the VTN certificate's host name.")
    sign_messages: bool = Field(
        default=True, description="Sign outgoing messages (XML signature) with cert_file/key_file when given."
    )
    poll_interval_s: float | None = Field(
        default=None,
        gt=0,
        le=86400,
        description="Poll this often, s; omitted: as often as the VTN asks at registration (10 s if it says nothing).",
    )
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="One request to the VTN, s.")
    program: Program = Field(default="contracted", description="The programme OpenADR events run under.")
    market_contexts: dict[str, Program] = Field(
        default_factory=dict,
        description="Market context URI -> programme, overriding `program` for those events.",
    )
    signals: SignalMapping = Field(default_factory=SignalMapping, description="Signal -> target mapping.")
    max_held_reports: int = Field(
        default=2000,
        ge=1,
        le=100_000,
        description="Reports kept for the VTN while it is unreachable (oldest dropped).",
    )

    @field_validator("vtn_fingerprint")
    @classmethod
    def _fingerprint(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip().upper()
        if not FINGERPRINT.fullmatch(v):
            raise ValueError(
                "not an OpenADR fingerprint: 10 bytes as hex pairs, e.g. 0A:1B:2C:3D:4E:5F:60:71:82:93"
            )
        return v

    @model_validator(mode="after")
    def _pairs(self) -> OpenAdrConfig:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise FieldError(
                f"{missing} missing: cert_file and key_file go together (the VEN's certificate and its key)",
                "cert_file" if self.cert_file is not None else "key_file",
            )
        if self.vtn_url.startswith("https://") and self.cert_file is None:
            raise FieldError(
                "an https VTN needs cert_file and key_file: OpenADR 2.0b uses mutual TLS", "vtn_url"
            )
        return self
