"""Engines and URLs: one place that turns the operator's Postgres URLs into SQLAlchemy engines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# Every tenant-bound transaction starts with this (RLS policies read the setting). is_local=true: the
# setting dies with the transaction, so a pooled connection never leaks it.
SET_TENANT = text("SELECT set_config('app.tenant_id', :tenant, true)")
_DEFAULT_PORT = "5432"


def to_sqlalchemy_url(url: str) -> URL:
    """Accept plain libpq URLs (`postgresql://…`, `postgres://…`), several hosts too, and pin the asyncpg
    driver. libpq writes several hosts in the authority (`u:p@h1:5432,h2:5433/db`, what an operator copies
    from a managed service); SQLAlchemy cannot parse that, and its asyncpg dialect takes them as
    `?host=h1:5432&host=h2:5433` instead, each with its port. asyncpg then tries them in order and, with
    `target_session_attrs=read-write`, keeps the first that takes writes: after a failover, the new
    primary."""
    plain = url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url
    parsed = make_url(_hosts_in_query(plain))
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {parsed.render_as_string(hide_password=True)}")
    return parsed.set(drivername="postgresql+asyncpg")


def _hosts_in_query(url: str) -> str:
    """`scheme://u:p@h1:p1,h2:p2/db?q` → `scheme://u:p@/db?q&host=h1:p1&host=h2:p2`; one host: unchanged."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return url
    pairs = []
    for host in hosts.split(","):
        name, _, port = host.partition(":")
        if not name or "[" in host or not (port or _DEFAULT_PORT).isdigit():
            raise ValueError(f"cannot read host {host!r} of a multi-host URL (name[:port], no IPv6)")
        pairs.append(("host", f"{name}:{port or _DEFAULT_PORT}"))
    query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), *pairs], safe="/:,")
    return urlunsplit(parts._replace(netloc=userinfo + at, query=query))


@dataclass(frozen=True, slots=True)
class RoleLogin:
    """The role name and password a URL logs in with."""

    name: str
    password: str | None


def role_of(url: str) -> RoleLogin:
    parsed = to_sqlalchemy_url(url)
    if not parsed.username:
        raise ValueError(f"URL names no role: {parsed.render_as_string(hide_password=True)}")
    return RoleLogin(parsed.username, parsed.password)


def json_text(value: Any) -> str:
    """JSON as text, for jsonb parameters (orjson: the encoding every JSON column of ours gets)."""
    return orjson.dumps(value).decode()


def create_engine(
    url: str, *, pool_size: int = 10, application_name: str = "care-plan-service"
) -> AsyncEngine:
    return create_async_engine(
        to_sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        # No ping before each checkout: it was one round trip in five of a FHIR read. After a database
        # restart the first statement on a stale connection fails as a disconnect, SQLAlchemy drops every
        # pooled connection, and that one command is retried (or that one read answered 503) as any
        # transient failure is; tests/faults shows everything applied once after an outage.
        pool_pre_ping=False,
        hide_parameters=True,  # errors and logs never carry the values (patient data) of a statement
        json_serializer=json_text,
        json_deserializer=orjson.loads,
        connect_args={"server_settings": {"application_name": application_name}},
    )


async def ensure_database(server_admin_url: str, name: str) -> bool:
    """Create database `name` when missing (CREATE DATABASE cannot run in a transaction). True if created."""
    engine = create_async_engine(to_sqlalchemy_url(server_admin_url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            exists = await conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            if exists:
                return False
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
            return True
    finally:
        await engine.dispose()


async def drop_database(server_admin_url: str, name: str) -> None:
    engine = create_async_engine(to_sqlalchemy_url(server_admin_url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await engine.dispose()


def with_database(url: str, database: str, *, user: str | None = None, password: str | None = None) -> str:
    """The same server, another database (and optionally another role)."""
    parsed = make_url(url).set(database=database)
    if user is not None:
        parsed = parsed.set(username=user, password=password)
    return parsed.render_as_string(hide_password=False)
