"""All configuration, once: environment variables `CAREPLAN_*` (CONTRACT §1), each also a CLI flag."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.access import DEFAULT_ROLE_PERMISSIONS, KNOWN_PERMISSIONS
from domain.code_checks import ICD_10_CM, LOINC, SNOMED_CT
from handlers.reply_subjects import DEFAULT_REPLY_PREFIXES, ReplySubjects


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAREPLAN_", extra="ignore")

    nats_url: str | None = Field(default=None, description="NATS server URL(s), comma separated")
    stream_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="replicas of the service's JetStream streams (3 on a NATS cluster); raised on start, "
        "never lowered",
    )
    database_url: str | None = Field(default=None, description="Postgres URL of the RLS-bound runtime role")
    system_database_url: str | None = Field(
        default=None, description="Postgres URL of the relay/scheduler role (BYPASSRLS)"
    )
    admin_database_url: str | None = Field(default=None, description="owner/superuser URL, for migrate only")
    read_database_url: str | None = Field(
        default=None,
        description="Postgres URL of a streaming replica for FHIR reads, as the runtime role (unset: reads "
        "use CAREPLAN_DATABASE_URL)",
    )
    read_wait_ms: int = Field(
        default=500,
        ge=0,
        le=60_000,
        description="how long a read sent with Careplan-Position waits for the replica before it reads "
        "the primary",
    )
    http_host: str = Field(default="127.0.0.1", description="HTTP listen address")
    http_port: int = Field(default=8080, ge=0, le=65535, description="HTTP listen port (0: any free port)")
    jwks_url: str | None = Field(
        default=None, description="identity-service JWKS: https://, http:// or file://"
    )
    jwt_issuer: str | None = Field(default=None, description="expected `iss` (checked when set)")
    jwt_audience: str | None = Field(default="care-plan-service", description="expected `aud`")
    jwks_cache_ttl_s: float = Field(
        default=300, gt=0, description="seconds the JWKS signing keys are used before they are fetched again"
    )
    jwks_max_stale_s: float = Field(
        default=3600,
        ge=0,
        description="seconds past their cache time the keys still verify while the JWKS is unreadable",
    )
    upstream_mode: Literal["nats", "off"] | None = Field(
        default=None, description="ask upstream services (nats) or accept ids as given (off)"
    )
    smart_authorization_endpoint: str | None = Field(
        default=None,
        description="identity-service's OAuth authorize URL, for .well-known/smart-configuration",
    )
    smart_token_endpoint: str | None = Field(
        default=None, description="identity-service's OAuth token URL, for .well-known/smart-configuration"
    )
    public_base_url: str | None = Field(default=None, description="external FHIR base for fullUrl and links")
    scheduler_interval_s: float = Field(default=60, gt=0, description="seconds between overdue sweeps")
    metrics_interval_s: float = Field(default=3600, gt=0, description="seconds between achievement summaries")
    scheduler_timezone: str = Field(
        default="UTC", description="IANA time zone whose calendar day decides what is overdue"
    )
    upstream_timeout_ms: int = Field(default=2000, gt=0, description="timeout per upstream request")
    upstream_registration_subject: str = Field(
        default="registration.patient.get", description="registration's patient lookup subject"
    )
    upstream_scheduling_subject: str = Field(
        default="scheduling.encounter.get", description="scheduling's encounter lookup subject"
    )
    upstream_providers_subject: str = Field(
        default="providers.practitioner.get", description="provider directory's practitioner lookup subject"
    )
    upstream_terminology_subject: str = Field(
        default="terminology.code.validate", description="terminology's code validation subject"
    )
    upstream_cache_ttl_s: float = Field(
        default=60, ge=0, description="seconds a positive upstream answer is reused (0: never)"
    )
    upstream_breaker_failures: int = Field(
        default=5, ge=1, description="silences in a row that open a service's circuit"
    )
    upstream_breaker_reset_s: float = Field(
        default=10, gt=0, description="seconds an open circuit fails fast before it lets one probe through"
    )
    terminology_systems: str = Field(
        default=f"{SNOMED_CT},{LOINC},{ICD_10_CM}",
        description="comma-separated code systems whose codings terminology validates",
    )
    reply_subject_prefixes: str = Field(
        default=",".join(DEFAULT_REPLY_PREFIXES),
        description="comma-separated subject prefixes replies may go to (never careplan.*, $*, upstream)",
    )
    # Operational knobs beyond the contract's list.
    workers: int = Field(default=8, ge=1, le=256, description="commands processed concurrently")
    max_deliver: int = Field(
        default=5, ge=1, description="deliveries of a command before it is dead-lettered"
    )
    ack_wait_s: float = Field(default=30, gt=0, description="JetStream ack wait for commands")
    nak_backoff_max_s: float = Field(default=30, gt=0, description="longest back-off between command retries")
    relay_poll_interval_s: float = Field(
        default=1.0, gt=0, description="outbox polling when no NOTIFY arrives"
    )
    rollout_concurrency: int = Field(
        default=4, ge=1, le=64, description="plans a process migrates at once, over all the rollouts it works"
    )
    rollout_poll_interval_s: float = Field(
        default=1.0, gt=0, description="how often a process looks for running rollouts to work"
    )
    role_permissions: dict[str, list[str]] | None = Field(
        default=None,
        description='JSON {"role": ["careplan:write", …]} replacing the default role table',
    )
    cursor_secret: str | None = Field(
        default=None,
        description="secret that signs FHIR paging cursors; share it across replicas (default: per process)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="log level: DEBUG, INFO (one line per command and request), WARNING …"
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="json (one object per line, for the log pipeline) or text (for people)"
    )
    shutdown_grace_s: float = Field(
        default=25, gt=0, description="seconds SIGTERM gives in-flight commands and requests to finish"
    )
    drain_delay_s: float = Field(
        default=0,
        ge=0,
        description="seconds /readyz answers 503 after SIGTERM before intake stops (load balancers notice)",
    )
    dev_dir: str = Field(default=".careplan-dev", description="where `careplan dev` keeps its data")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("scheduler_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("role_permissions", mode="before")
    @classmethod
    def _role_permissions_json(cls, value: object) -> object:
        """From a flag the table arrives as JSON text; from the environment pydantic-settings decodes it."""
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("role_permissions")
    @classmethod
    def _known_permissions(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        unknown = {p for permissions in (value or {}).values() for p in permissions} - KNOWN_PERMISSIONS
        if unknown:
            raise ValueError(f"unknown permissions {sorted(unknown)}; known: {sorted(KNOWN_PERMISSIONS)}")
        return value

    def role_table(self) -> Mapping[str, frozenset[str]]:
        if self.role_permissions is None:
            return DEFAULT_ROLE_PERMISSIONS
        return {role: frozenset(permissions) for role, permissions in self.role_permissions.items()}

    def terminology_system_set(self) -> frozenset[str]:
        return frozenset(s.strip() for s in self.terminology_systems.split(",") if s.strip())

    def reply_subjects(self) -> ReplySubjects:
        """The reply rule; `UnsafeReplyPrefix` when a configured prefix reaches a platform subject."""
        upstream = (
            self.upstream_registration_subject,
            self.upstream_scheduling_subject,
            self.upstream_providers_subject,
            self.upstream_terminology_subject,
        )
        prefixes = [p for p in self.reply_subject_prefixes.split(",") if p.strip()]
        return ReplySubjects.allowing(prefixes, upstream)

    def nats_servers(self) -> list[str]:
        return [u.strip() for u in (self.nats_url or "").split(",") if u.strip()]

    def nats_servers_shown(self) -> str:
        """The NATS URLs as they may be printed and logged: a password in one is replaced by `***`."""
        return ",".join(_without_password(url) for url in self.nats_servers())

    def missing_for_serve(self) -> list[str]:
        required = {
            "CAREPLAN_NATS_URL": self.nats_url,
            "CAREPLAN_DATABASE_URL": self.database_url,
            "CAREPLAN_SYSTEM_DATABASE_URL": self.system_database_url,
            "CAREPLAN_JWKS_URL": self.jwks_url,
        }
        return [name for name, value in required.items() if not value]


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host_and_port = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host_and_port}"))
