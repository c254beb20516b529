"""Real servers for the tests: `CAREPLAN_TEST_DATABASE_URL` / `CAREPLAN_TEST_NATS_URL` when set, otherwise
an embedded Postgres and nats-server started once per session. A fresh database per run either way."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError

from service.dev_identity import DevKeys, write_new_keys
from service.embedded.nats_server import EmbeddedNats
from service.embedded.postgres_server import EmbeddedPostgres
from service.runner import RunningService, start_service
from service.settings import Settings
from service.topology import STREAMS
from storage.database import create_engine, drop_database, ensure_database, with_database
from storage.migrate import migrate
from tests.outbox_ledger import install_outbox_ledger

RUNTIME_ROLE = ("careplan_test_app", "test-app-secret")
SYSTEM_ROLE = ("careplan_test_system", "test-system-secret")


@dataclass(frozen=True)
class DatabaseUrls:
    admin: str
    runtime: str
    system: str
    server_admin: str
    name: str


def database_urls(server_admin: str, name: str) -> DatabaseUrls:
    """Database `name` on the server, as the owner and as the test runtime and system roles."""
    admin = with_database(server_admin, name)
    return DatabaseUrls(
        admin=admin,
        runtime=with_database(admin, name, user=RUNTIME_ROLE[0], password=RUNTIME_ROLE[1]),
        system=with_database(admin, name, user=SYSTEM_ROLE[0], password=SYSTEM_ROLE[1]),
        server_admin=server_admin,
        name=name,
    )


@pytest.fixture(scope="session")
def short_tmp() -> Iterator[Path]:
    """Under /tmp: Unix socket paths must stay short."""
    with tempfile.TemporaryDirectory(prefix="careplan-test-", dir="/tmp") as directory:
        os.chmod(directory, 0o755)
        yield Path(directory)


@pytest.fixture(scope="session")
def postgres_server_url(short_tmp: Path) -> Iterator[str]:
    configured = os.environ.get("CAREPLAN_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    with EmbeddedPostgres(short_tmp / "pg") as server:
        yield server.url()


@pytest.fixture(scope="session")
def nats_url(short_tmp: Path) -> Iterator[str]:
    configured = os.environ.get("CAREPLAN_TEST_NATS_URL")
    if configured:
        asyncio.run(_delete_our_streams(configured))
        yield configured
        return
    with EmbeddedNats(short_tmp / "nats") as server:
        yield server.url


async def _delete_our_streams(url: str) -> None:
    """A shared server may hold streams from an earlier run: start from nothing."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for config in STREAMS:
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(str(config.name))
    finally:
        await nc.close()


@contextlib.contextmanager
def migrated_database(postgres_server_url: str, prefix: str = "careplan_test") -> Iterator[DatabaseUrls]:
    """A database of its own on the server, migrated (with the tests' outbox ledger), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    asyncio.run(ensure_database(postgres_server_url, name))
    urls = database_urls(postgres_server_url, name)
    asyncio.run(migrate(urls.admin, urls.runtime, urls.system))
    asyncio.run(install_outbox_ledger(urls.admin))
    try:
        yield urls
    finally:
        asyncio.run(drop_database(postgres_server_url, name))


@pytest.fixture(scope="session")
def database(postgres_server_url: str) -> Iterator[DatabaseUrls]:
    with migrated_database(postgres_server_url) as urls:
        yield urls


@pytest.fixture(scope="session")
def keys(short_tmp: Path) -> DevKeys:
    return write_new_keys(short_tmp / "keys")


@pytest.fixture(scope="session")
def settings(database: DatabaseUrls, nats_url: str, keys: DevKeys) -> Settings:
    return Settings(
        nats_url=nats_url,
        database_url=database.runtime,
        system_database_url=database.system,
        admin_database_url=database.admin,
        jwks_url=keys.jwks_url,
        jwt_audience="care-plan-service",
        http_host="127.0.0.1",
        http_port=0,
        upstream_mode="off",
        workers=4,
        max_deliver=3,
        ack_wait_s=10,
        nak_backoff_max_s=1,
        relay_poll_interval_s=0.5,
        # The service's own scheduler runs on the real clock; the scheduler tests drive theirs with a clock
        # of their own. An hour between passes keeps the service's from signalling other tests' data.
        scheduler_interval_s=3600,
        metrics_interval_s=3600,
    )


@pytest.fixture(scope="session")
async def service(settings: Settings) -> AsyncIterator[RunningService]:
    running = await start_service(settings)
    yield running
    await running.stop()


@pytest.fixture(scope="session")
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


@pytest.fixture
def tenant() -> str:
    """A tenant of its own for each test, so tests never see each other's data or events."""
    return f"t{uuid.uuid4().hex[:12]}"


TokenFactory = Callable[..., str]


@pytest.fixture
def token_for(keys: DevKeys) -> TokenFactory:
    def mint(tenant_id: str, roles: list[str] | None = None, **kwargs: Any) -> str:
        return keys.mint(tenant_id=tenant_id, roles=["clinician"] if roles is None else roles, **kwargs)

    return mint


@pytest.fixture
async def admin_engine(database: DatabaseUrls) -> AsyncIterator[Any]:
    engine = create_engine(database.admin, pool_size=2)
    yield engine
    await engine.dispose()
