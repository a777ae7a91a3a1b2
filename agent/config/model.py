"""The site configuration: one versioned YAML, validated by pydantic, the single source of truth.

`dr-agent schema` prints the JSON Schema generated from these models;
`dr-agent validate` reports every error as `file:line:col: field: message`.
Regional rules (the band, allowed hours, limits, incentives) are all here,
never constants in code.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import ssl
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, field_validator, model_validator
from pydantic_core import CoreSchema

from agent.config.openadr import OpenAdrConfig
from agent.config.yamlsource import FieldError, did_you_mean
from drivers.device import DeviceConfigBase
from drivers.registry import kinds, on_change
from strategies.model import Program, Strategy, StrategySelection

#: The baseline methods a programme can settle on. Configuration owns the names;
#: `agent.settlement.baseline.METHODS` implements each (a unit test holds the two equal).
BASELINE_METHODS: tuple[str, ...] = (
    "jiangsu_5day",
    "realtime_15min",
    "beijing_5of10",
    "caiso_10in10",
    "pjm_high4of5",
    "linear_trend",
    "regression",
)

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")


EventSource = Literal["mqtt", "openadr"]
_MQTT: EventSource = "mqtt"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SiteInfo(_Model):
    id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", description="Site id; also the MQTT topic segment."
    )
    name: str = Field(default="", description="Human-readable site name.")
    timezone: str = Field(default="UTC", description="IANA timezone of the site, e.g. Asia/Shanghai.")
    meter: str = Field(description="Name of the device that meters the whole site.")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            from zoneinfo import available_timezones

            hint = did_you_mean(v, available_timezones())
            raise ValueError(
                f"unknown timezone {v!r}; {hint + ' ' if hint else ''}use an IANA name like Asia/Shanghai"
            ) from None
        return v


class TlsConfig(_Model):
    ca_file: str | None = Field(default=None, description="CA certificate (PEM) to verify the broker.")
    cert_file: str | None = Field(default=None, description="Client certificate (PEM), for mutual TLS.")
    key_file: str | None = Field(default=None, description="Client private key (PEM).")
    insecure: bool = Field(default=False, description="Skip hostname verification (testing only).")

    def context(self) -> ssl.SSLContext:
        """The client's TLS context (the agent's MQTT connection and diagnose's check both use it)."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.insecure:
            ctx.check_hostname = False
        return ctx


class MessageSecurity(_Model):
    """Payload signing: who may steer the site, even if someone else can publish on its topics."""

    require_signature: bool = Field(default=True, description="Refuse unsigned events and prices.")
    hmac_key_env: str | None = Field(
        default="DR_AGENT_HMAC_KEY",
        description="Environment variable holding the shared HMAC-SHA256 key (or systemd credential 'mqtt-hmac-key').",
    )
    ed25519_public_key_file: str | None = Field(
        default=None,
        description="The provider's Ed25519 public key (PEM or raw 32-byte hex); needs `cryptography`.",
    )
    max_skew_s: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        description="A signed message's ts may differ from now by this much, s.",
    )
    replay_window_s: float = Field(
        default=900.0, gt=0, le=7 * 86400, description="Nonces are remembered this long to refuse replays, s."
    )

    @model_validator(mode="after")
    def _window(self) -> MessageSecurity:
        if self.replay_window_s < 2 * self.max_skew_s:
            raise FieldError(
                f"replay_window_s ({self.replay_window_s:g}) must be at least 2 x max_skew_s ({self.max_skew_s:g}),"
                " or a replay could slip in after its nonce is forgotten",
                "replay_window_s",
            )
        return self

    def hmac_key(self) -> bytes | None:
        """From systemd credentials first, then the environment; never from the config file."""
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if cred_dir:
            p = Path(cred_dir) / "mqtt-hmac-key"
            if p.is_file() and p.read_text().strip():
                return p.read_text().strip().encode()
        value = os.environ.get(self.hmac_key_env) if self.hmac_key_env else None
        return value.encode() if value else None


class MqttConfig(_Model):
    host: str = Field(default="127.0.0.1", description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port.")
    tls: TlsConfig | None = Field(default=None, description="TLS settings; omit for plain TCP.")
    username: str | None = Field(default=None, description="User name, if the broker needs one.")
    password_env: str = Field(
        default="DR_AGENT_MQTT_PASSWORD",
        description="Environment variable holding the password (or systemd credential 'mqtt-password').",
    )
    client_id: str | None = Field(default=None, description="MQTT client id (default dr-agent-<site id>).")
    topic_root: str | None = Field(
        default=None,
        max_length=128,
        # A topic, not a filter: no + or # wildcards, no empty level, not $SYS-like.
        pattern=r"^[^/+#$\x00][^/+#\x00]*(/[^/+#\x00]+)*$",
        description="Topic prefix (default dr/<site id>); levels without + or #, no empty level, not starting with $.",
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive, s.")
    max_payload_bytes: int = Field(
        default=64 * 1024, ge=1024, le=1024 * 1024, description="Larger incoming messages are refused."
    )
    security: MessageSecurity | None = Field(
        default=None, description="Signed messages from the DR provider (HMAC or Ed25519); omit for none."
    )

    def password(self) -> str | None:
        """From systemd credentials first, then the environment; never from the config file."""
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if cred_dir:
            p = Path(cred_dir) / "mqtt-password"
            if p.is_file():
                # An empty credential file (as the installer creates) means "no password".
                secret = p.read_text().strip()
                if secret:
                    return secret
        return os.environ.get(self.password_env)


class ModbusEndpoint(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Endpoint name devices refer to.")
    protocol: Literal["tcp", "rtu", "rtu_over_tcp"] = Field(
        default="tcp", description="tcp (Modbus TCP), rtu (serial RS-485), rtu_over_tcp (serial gateway)."
    )
    host: str | None = Field(default=None, description="Host, for tcp and rtu_over_tcp.")
    port: int = Field(default=502, ge=1, le=65535, description="TCP port.")
    serial_port: str | None = Field(default=None, description="Serial device, for rtu (e.g. /dev/ttyUSB0).")
    baudrate: int = Field(default=9600, description="Serial baud rate.")
    parity: Literal["N", "E", "O"] = Field(default="N", description="Serial parity.")
    stopbits: Literal[1, 2] = Field(default=1, description="Serial stop bits.")
    timeout_s: float = Field(default=1.0, gt=0, le=30, description="Timeout of every request, s.")
    inter_frame_delay_ms: float = Field(
        default=0.0, ge=0, le=1000, description="Quiet time between requests (slow serial devices), ms."
    )

    @model_validator(mode="after")
    def _transport(self) -> ModbusEndpoint:
        if self.protocol == "rtu":
            if not self.serial_port:
                raise ValueError("protocol rtu needs serial_port")
            if self.host:
                raise ValueError("protocol rtu takes serial_port, not host (use rtu_over_tcp for a gateway)")
        elif not self.host:
            raise ValueError(f"protocol {self.protocol} needs host")
        elif self.serial_port:
            raise ValueError(f"protocol {self.protocol} takes host, not serial_port")
        return self


class ModbusConfig(_Model):
    endpoints: list[ModbusEndpoint] = Field(
        min_length=1, description="Modbus endpoints (one connection each)."
    )
    poll_interval_s: float = Field(default=1.0, gt=0, le=60, description="How often every device is read, s.")

    @model_validator(mode="after")
    def _one_protocol_per_line(self) -> ModbusConfig:
        """One connection per physical endpoint: two endpoints on the same address would interleave
        requests (or mix TCP and RTU framing) on one line."""
        seen: dict[str, str] = {}
        for i, e in enumerate(self.endpoints):
            if e.name in seen.values():
                raise FieldError(f"endpoint name {e.name!r} is used twice", "endpoints", i, "name")
            where = e.serial_port if e.protocol == "rtu" else f"{e.host}:{e.port}"
            assert where is not None
            if where in seen:
                raise FieldError(
                    f"endpoints {seen[where]!r} and {e.name!r} both use {where}: one endpoint per line or "
                    "gateway port, with one protocol; put every unit id on it under one endpoint",
                    "endpoints",
                    i,
                    "serial_port" if e.protocol == "rtu" else "host",
                )
            seen[where] = e.name
        return self


class ProgramLimits(_Model):
    max_events_per_day: int | None = Field(default=None, ge=0, description="Most events a day.")
    max_hours_per_day: float | None = Field(default=None, ge=0, description="Most event hours a day.")
    max_event_duration_s: float | None = Field(default=None, gt=0, description="Longest single event, s.")
    max_days_per_year: int | None = Field(default=None, ge=0, description="Most event days a year.")
    min_notice_s: float | None = Field(default=None, ge=0, description="Least notice before the start, s.")
    max_events_per_year: int | None = Field(default=None, ge=0, description="Most events a year.")


_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class MustRunWindow(_Model):
    """A production run that must not be disturbed: events overlapping it are declined."""

    name: str = Field(min_length=1, description="What runs, named in the opt-out reason.")
    hours: tuple[str, str] = Field(description="Local time window, [HH:MM, HH:MM].")
    weekdays: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = Field(
        default=None, description="Days of the week it applies (default every day)."
    )
    dates: list[date] | None = Field(default=None, description="Only on these dates (default every date).")

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: tuple[str, str]) -> tuple[str, str]:
        for t in v:
            if not _HHMM.match(t):
                raise ValueError(f"{t!r} is not a time of day; write HH:MM")
        if v[0] >= v[1]:
            raise ValueError(f"must_run start {v[0]} must be before end {v[1]}")
        return v

    def applies(self, day: date) -> bool:
        if self.dates is not None and day not in self.dates:
            return False
        return self.weekdays is None or _WEEKDAYS[day.weekday()] in self.weekdays


class ContractPeriod(_Model):
    """The signed contract's period and its participation minimum (Foshan: 10 responses in 3 years)."""

    start: date = Field(description="First day of the contract period.")
    end: date = Field(description="Last day of the contract period.")
    min_events: int | None = Field(default=None, ge=0, description="Responses required within the period.")

    @model_validator(mode="after")
    def _order(self) -> ContractPeriod:
        if self.end < self.start:
            raise FieldError(f"contract period end {self.end} is before its start {self.start}", "end")
        return self


class PriceThreshold(_Model):
    """At or above this price, shed this much (exactly one of reduce_pct_of_peak, reduce_kw)."""

    at_least: float = Field(
        ge=-10000, le=100000, description="Price at or above which this applies, per kWh."
    )
    reduce_pct_of_peak: float | None = Field(
        default=None, gt=0, le=100, description="Reduce by this % of peak."
    )
    reduce_kw: float | None = Field(default=None, gt=0, le=1_000_000, description="Reduce by this many kW.")

    @model_validator(mode="after")
    def _one(self) -> PriceThreshold:
        if (self.reduce_pct_of_peak is None) == (self.reduce_kw is None):
            raise ValueError("a price threshold needs exactly one of reduce_pct_of_peak, reduce_kw")
        return self


class PriceResponse(_Model):
    """Price-based DR: price intervals at or above a threshold become an event on the `price` program."""

    thresholds: list[PriceThreshold] = Field(
        min_length=1, description="Thresholds, any order; the highest one a price reaches applies."
    )
    min_event_s: float = Field(
        default=900.0, ge=60, le=86400, description="Shorter high-price runs are not worth a curtailment, s."
    )


_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class CalendarConfig(_Model):
    """The site's working-day calendar, which the look-back baselines choose their days by (timezone: site.timezone)."""

    holidays: list[_dt.date] = Field(
        default_factory=list, description="Public holidays and plant shutdown days (not working days)."
    )
    extra_working_days: list[_dt.date] = Field(
        default_factory=list, description="Make-up working days on a weekend (China's 调休)."
    )
    weekend: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        default_factory=lambda: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]](
            ["sat", "sun"]
        ),
        description="Days of the week that are not working days.",
    )
    shutdown_days: list[_dt.date] = Field(
        default_factory=list,
        description="Days the plant did not run normally (shutdown, maintenance, half-day): no look-back "
        "baseline uses them; `dr-agent baseline mark-shutdown` adds one.",
    )

    @model_validator(mode="after")
    def _disjoint(self) -> CalendarConfig:
        both = sorted(set(self.holidays) & set(self.extra_working_days))
        if both:
            raise FieldError(
                f"dates listed both as holiday and as extra working day: {', '.join(map(str, both))}",
                "extra_working_days",
            )
        return self

    def calendar(self, tz: str) -> Any:
        """The `agent.config.calendar.Calendar` the baseline methods take."""
        from agent.config.calendar import Calendar

        return Calendar(
            tz=tz,
            holidays=frozenset(self.holidays),
            extra_working_days=frozenset(self.extra_working_days),
            weekend=frozenset(_DAY_NAMES.index(d) for d in self.weekend),
            shutdowns=frozenset(self.shutdown_days),
        )


class OutdoorTemperature(_Model):
    """Where the outdoor temperature comes from (the regression baseline uses it): a polled device's role."""

    device: str = Field(
        description="A configured device whose profile maps the role, e.g. an HVAC unit or a sensor."
    )
    role: str = Field(default="outdoor_temp_c", description="The profile role holding the temperature, °C.")


class BaselineSettings(_Model):
    """How the baselines screen days and how much history the real-time baseline needs (docs/baselines.md)."""

    normal_day_min_share: float | None = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="Jiangsu and Beijing take normal (typical) days only: a look-back day whose event-window "
        "load is under this share of the typical day's is abnormal and replaced; null turns the screen off.",
    )
    realtime_min_history_s: float = Field(
        default=450.0,
        gt=0,
        le=900,
        description="Seconds of the 15 minutes before control start that must have meter readings for the "
        "real-time baseline; with less, control starts on the current load and the settlement says so.",
    )


class IncentiveTier(_Model):
    """A rate that applies when the notice was at most `notice_up_to_s` (Beijing: 120 CNY/kW up to 30 min)."""

    notice_up_to_s: float = Field(gt=0, le=7 * 86400, description="Longest notice this rate applies to, s.")
    cny_per_kw: float = Field(ge=0, description="Incentive per verified kW at this notice.")
    program: Program | None = Field(default=None, description="Only for this program (default: all).")


class ContractConfig(_Model):
    peak_kw: float = Field(gt=0, description="Site peak load the contract is based on, kW.")
    band_pct: tuple[float, float] = Field(
        default=(5.0, 20.0), description="Committed curtailment band, % of peak [min, max]."
    )
    allowed_hours: tuple[str, str] | None = Field(
        default=None, description="Local hours events may run in, [HH:MM, HH:MM] (Jiangsu: 10:00-15:00)."
    )
    programs: dict[Program, ProgramLimits] = Field(
        default_factory=dict, description="Per-program limits (contracted, realtime, price)."
    )
    incentive_cny_per_kw: float = Field(
        default=0.0, ge=0, description="Incentive per verified kW (the rate when no tier below applies)."
    )
    incentive_by_notice: list[IncentiveTier] = Field(
        default_factory=list,
        description="Rates by notice time, e.g. Beijing [{notice_up_to_s: 1800, cny_per_kw: 120}, "
        "{notice_up_to_s: 14400, cny_per_kw: 100}] with incentive_cny_per_kw 80; the shortest tier "
        "covering the notice applies.",
    )
    min_events_per_year: int | None = Field(default=None, ge=0, description="Participation minimum a year.")
    default_below_events_per_year: int | None = Field(
        default=None, ge=0, description="Fewer responses than this in a year is a default (Jiangsu: 5)."
    )
    period: ContractPeriod | None = Field(default=None, description="Contract period and its minimum.")
    blackout_dates: list[date] = Field(
        default_factory=list, description="Local dates the site takes no events."
    )
    must_run: list[MustRunWindow] = Field(
        default_factory=list, description="Production runs that must not be disturbed (site overrides)."
    )
    price: PriceResponse | None = Field(
        default=None, description="Price-based DR thresholds; omit to ignore prices."
    )
    official_baseline: str = Field(
        default="realtime_15min",
        description="Baseline method the programme settles on (jiangsu_5day, realtime_15min, beijing_5of10, "
        "caiso_10in10, pjm_high4of5, linear_trend, regression); the others are reported beside it.",
    )

    baseline: BaselineSettings = Field(
        default_factory=BaselineSettings, description="Day screens and real-time history of the baselines."
    )

    @field_validator("official_baseline")
    @classmethod
    def _official(cls, v: str) -> str:
        if v not in BASELINE_METHODS:
            hint = did_you_mean(v, BASELINE_METHODS)
            raise ValueError(
                f"unknown baseline method {v!r}; {hint + ' ' if hint else ''}"
                f"known: {', '.join(sorted(BASELINE_METHODS))}"
            )
        return v

    @field_validator("band_pct")
    @classmethod
    def _band(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if 0 < hi <= 1:
            # 0.05 meant as 5 %: a band this narrow is a fraction, and would aim at a few kW.
            raise ValueError(
                f"band_pct [{lo:g}, {hi:g}] is under 1 % of peak; band_pct is in percent, not a fraction: "
                f"did you mean [{lo * 100:g}, {hi * 100:g}]?"
            )
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"band_pct must be [min, max] with 0 <= min < max <= 100, got [{lo}, {hi}]")
        return v

    @field_validator("allowed_hours")
    @classmethod
    def _hours(cls, v: tuple[str, str] | None) -> tuple[str, str] | None:
        if v is not None:
            for t in v:
                if not _HHMM.match(t):
                    raise ValueError(f"{t!r} is not a time of day; write HH:MM")
            if v[0] >= v[1]:
                raise ValueError(f"allowed_hours start {v[0]} must be before end {v[1]}")
        return v

    def band_kw(self) -> tuple[float, float]:
        return self.peak_kw * self.band_pct[0] / 100, self.peak_kw * self.band_pct[1] / 100


class ControlConfig(_Model):
    period_s: float = Field(default=1.0, gt=0, le=60, description="Control cycle, s.")
    report_interval_s: float = Field(default=10.0, gt=0, le=3600, description="Live report interval, s.")
    deadband_pct: float = Field(
        default=1.0,
        ge=0,
        le=10,
        description="No action while curtailment is this close to the aim, % of peak.",
    )
    settle_s: float = Field(
        default=15.0, ge=0, le=600, description="Wait this long after a change before judging its effect, s."
    )
    filter_s: float = Field(
        default=10.0, ge=0, le=300, description="Time constant of the load filter the controller acts on, s."
    )
    meter_stale_s: float = Field(
        default=10.0, gt=0, le=600, description="A meter reading older than this is unknown: hold, don't act."
    )
    restore_on_stop: bool = Field(default=True, description="Restore devices when the agent stops.")


class StorageConfig(_Model):
    path: str = Field(
        default="dr-agent.sqlite",
        description="SQLite database; relative paths are under $DR_AGENT_STATE_DIR (or the working dir).",
    )
    max_mb: float = Field(
        default=512,
        ge=16,
        description="Disk budget of the database, MB: the retention below is shortened to fit it, and when "
        "it is reached anyway the oldest history goes first (never a settlement, an undelivered message "
        "or an open revert-journal row). 512 MB suits a gateway with 4 GB or more of eMMC.",
    )
    device_deadband_pct: float = Field(
        default=1.0,
        ge=0,
        le=50,
        description="A device's power (not the site meter's) is stored at poll rate only when it moved by "
        "more than this share of its rated_kw (0.1 kW without a rating) since the last row kept, or "
        "every 15 minutes; its 1- and 15-minute means always take every reading. 0 keeps every reading.",
    )
    raw_retention_s: float = Field(
        default=2 * 86400, gt=0, description="Keep poll-rate readings this long, s."
    )
    meter_minute_retention_days: float = Field(
        default=400,
        ge=1,
        description="Keep the site meter's 1-minute means this long (baselines need 13 months), days.",
    )
    device_minute_retention_days: float = Field(
        default=35, ge=1, description="Keep other devices' 1-minute means this long, days."
    )
    quarter_hour_retention_days: float = Field(
        default=800, ge=1, description="Keep every device's 15-minute means this long, days."
    )

    def resolved(self) -> Path:
        p = Path(self.path)
        if p.is_absolute():
            return p
        return Path(os.environ.get("DR_AGENT_STATE_DIR", ".")) / p


class MetricsConfig(_Model):
    enabled: bool = Field(default=True, description="Serve Prometheus metrics.")
    host: str = Field(default="127.0.0.1", description="Address of the /metrics endpoint.")
    port: int = Field(default=9464, ge=0, le=65535, description="Port of the /metrics endpoint (0 = any).")


def _union(types: tuple[type, ...]) -> Any:
    u: Any = types[0]
    for t in types[1:]:
        u = u | t
    return u


if TYPE_CHECKING:
    # The real type is a union built from the kind registry at import time; for the
    # type checker every device config is "the common fields plus a kind".
    class DeviceConfig(DeviceConfigBase):
        kind: str

else:

    class DeviceConfig:
        """The device union, built from the kind registry whenever the models are built (a kind
        registered later, a plugin or a test's, rebuilds SiteConfig: see `_rebuild`)."""

        @classmethod
        def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
            configs = tuple(k.config for k in kinds().values())
            return handler.generate_schema(Annotated[_union(configs), Field(discriminator="kind")])


class SiteConfig(_Model):
    # Strategies come inline or from strategy_files (the loader merges them); the schema says
    # "one of the two", so editors accept a config that only lists strategy files.
    model_config = ConfigDict(
        json_schema_extra={"anyOf": [{"required": ["strategies"]}, {"required": ["strategy_files"]}]}
    )

    version: Literal[1] = Field(description="Config format version; this agent reads version 1.")
    site: SiteInfo = Field(description="Who and where the site is.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="The DR provider's MQTT broker.")
    event_sources: list[EventSource] = Field(
        default_factory=lambda: [_MQTT],
        min_length=1,
        description="Where events come from: mqtt, openadr (a VEN of the VTN under openadr:), or both. "
        "Live reports and settlements go to MQTT and Prometheus whatever the source.",
    )
    openadr: OpenAdrConfig | None = Field(
        default=None, description="The OpenADR 2.0b VTN, with event_sources: [openadr] (needs the openadr extra)."
    )
    modbus: ModbusConfig = Field(description="Modbus endpoints.")
    devices: list[DeviceConfig] = Field(min_length=1, description="The site meter and controllable devices.")
    contract: ContractConfig = Field(description="The DR contract the site signed.")
    control: ControlConfig = Field(default_factory=ControlConfig, description="Control loop tuning.")
    strategies: list[Strategy] = Field(
        default_factory=list,
        min_length=1,
        description="Load-shedding strategies, inline (the loader appends those of strategy_files); "
        "a site needs at least one, here or in strategy_files.",
    )
    strategy_files: list[str] = Field(
        default_factory=list,
        description="Strategy YAML files (one strategy each, paths relative to this file), added to strategies.",
    )
    strategy_select: StrategySelection | None = Field(
        default=None,
        description="Which strategy runs per program (contracted, realtime, price) and by default; "
        "omitted: each strategy's programs and default flags decide.",
    )
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Local database.")
    calendar: CalendarConfig = Field(
        default_factory=CalendarConfig, description="Working days, weekends and holidays, for the baselines."
    )
    outdoor_temperature: OutdoorTemperature | None = Field(
        default=None, description="Outdoor temperature source, stored with the meter history; omit for none."
    )

    @model_validator(mode="after")
    def _some_strategy(self) -> SiteConfig:
        if not self.strategies:
            raise FieldError(
                "no strategy: write one under strategies: or list strategy files under strategy_files:",
                "strategies",
            )
        return self

    @model_validator(mode="after")
    def _temperature_device(self) -> SiteConfig:
        ot = self.outdoor_temperature
        names = [d.name for d in self.devices]
        if ot is not None and ot.device not in names:
            hint = did_you_mean(ot.device, names)
            raise FieldError(
                f"{ot.device!r} is not a device; {hint + ' ' if hint else ''}devices: {', '.join(names)}",
                "outdoor_temperature",
                "device",
            )
        return self

    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus endpoint.")

    @model_validator(mode="after")
    def _openadr_source(self) -> SiteConfig:
        if len(set(self.event_sources)) != len(self.event_sources):
            raise FieldError("a source is listed twice", "event_sources")
        if "openadr" in self.event_sources and self.openadr is None:
            raise FieldError("openadr is an event source but there is no openadr: section", "event_sources")
        if self.openadr is not None and "openadr" not in self.event_sources:
            raise FieldError(
                "an openadr: section without openadr in event_sources; add it there (or remove the section)",
                "openadr",
            )
        return self

    @model_validator(mode="after")
    def _references(self) -> SiteConfig:
        # Each error points at the value to fix (FieldError), not at the top of the file.
        endpoints = [e.name for e in self.modbus.endpoints]
        names: set[str] = set()
        for i, d in enumerate(self.devices):
            if d.name in names:
                raise FieldError(f"device name {d.name!r} is used twice", "devices", i, "name")
            names.add(d.name)
            if d.endpoint not in endpoints:
                hint = did_you_mean(d.endpoint, endpoints)
                raise FieldError(
                    f"unknown endpoint {d.endpoint!r}; {hint + ' ' if hint else ''}"
                    f"endpoints under modbus.endpoints: {', '.join(endpoints)}",
                    "devices",
                    i,
                    "endpoint",
                )
        meters = [d.name for d in self.devices if d.kind == "meter"]
        listed = f"meter devices: {', '.join(meters)}" if meters else "add a device of kind meter"
        if self.site.meter not in names:
            hint = did_you_mean(self.site.meter, names)
            raise FieldError(
                f"{self.site.meter!r} is not a device; {hint + ' ' if hint else ''}{listed}", "site", "meter"
            )
        meter = next(d for d in self.devices if d.name == self.site.meter)
        if meter.kind != "meter":
            raise FieldError(
                f"{self.site.meter!r} is a {meter.kind} device, not a meter; the site meter measures the "
                f"whole site's load; {listed}",
                "site",
                "meter",
            )
        return self

    @property
    def topic_root(self) -> str:
        return self.mqtt.topic_root or f"dr/{self.site.id}"

    def device(self, name: str) -> Any:
        return next(d for d in self.devices if d.name == name)

    def strategy_for(self, program: str) -> Strategy:
        if self.strategy_select is not None:
            by_name = {s.name: s for s in self.strategies}
            named = self.strategy_select.named()
            chosen = named.get(program) or named.get("default")
            if chosen in by_name:
                return by_name[chosen]
        for s in self.strategies:
            if program in s.programs:
                return s
        for s in self.strategies:
            if s.default:
                return s
        return self.strategies[0]


def _rebuild() -> None:
    # A device kind was registered or removed: the device and action unions changed.
    SiteConfig.model_rebuild(force=True)


on_change(_rebuild)
