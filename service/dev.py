"""`careplan dev`: the whole service on embedded NATS and Postgres, data kept in ./.careplan-dev.

Servers we start are ours to stop, on exit, Ctrl-C or SIGTERM; a crash's leftovers (pid files, sockets,
orphaned servers) are cleaned up by the next start (service.embedded).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from service.dev_identity import ensure_dev_keys
from service.embedded.nats_server import EmbeddedNats
from service.embedded.postgres_server import EmbeddedPostgres
from service.runner import serve_until_signalled
from service.settings import Settings
from storage.database import ensure_database, with_database
from storage.migrate import migrate

DEV_DATABASE = "careplan"
DEV_RUNTIME_ROLE = ("careplan_app", "careplan_app")
DEV_SYSTEM_ROLE = ("careplan_system", "careplan_system")


def run_dev(settings: Settings) -> int:
    dev_dir = Path(settings.dev_dir).resolve()
    dev_dir.mkdir(parents=True, exist_ok=True)

    def terminate(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    # Until the event loop installs its own handlers, SIGTERM must still unwind through our cleanup.
    signal.signal(signal.SIGTERM, terminate)
    with ExitStack() as servers:
        if settings.nats_url is None:
            nats_server = servers.enter_context(EmbeddedNats(dev_dir / "nats"))
            settings = settings.model_copy(update={"nats_url": nats_server.url})
        if settings.database_url is None or settings.admin_database_url is None:
            first_start = not (dev_dir / "postgres").exists()
            if first_start:
                _progress(
                    f"first start: creating the database in {dev_dir / 'postgres'} (initdb, a few seconds)"
                )
            postgres = servers.enter_context(EmbeddedPostgres(dev_dir / "postgres"))
            asyncio.run(ensure_database(postgres.url(), DEV_DATABASE))
            admin = postgres.url(DEV_DATABASE)
            settings = settings.model_copy(
                update={
                    "admin_database_url": admin,
                    "database_url": with_database(
                        admin, DEV_DATABASE, user=DEV_RUNTIME_ROLE[0], password=DEV_RUNTIME_ROLE[1]
                    ),
                    "system_database_url": with_database(
                        admin, DEV_DATABASE, user=DEV_SYSTEM_ROLE[0], password=DEV_SYSTEM_ROLE[1]
                    ),
                }
            )
        assert settings.admin_database_url and settings.database_url and settings.system_database_url
        _progress("bringing the schema up to date (migrations)")
        asyncio.run(migrate(settings.admin_database_url, settings.database_url, settings.system_database_url))
        keys = ensure_dev_keys(dev_dir / "keys")
        settings = settings.model_copy(
            update={
                "jwks_url": settings.jwks_url or keys.jwks_url,
                "upstream_mode": settings.upstream_mode or "off",
            }
        )
        http_url = f"http://{settings.http_host}:{settings.http_port}"
        (dev_dir / "dev.json").write_text(
            json.dumps(
                {"nats_url": settings.nats_url, "http_url": http_url, "jwks_url": settings.jwks_url}, indent=2
            )
        )
        # The banner once the port is bound and the service ready, not before.
        code = asyncio.run(
            serve_until_signalled(settings, on_ready=lambda: _print_next_steps(settings, http_url))
        )
    return code


def _progress(line: str) -> None:
    print(f"careplan dev: {line}", file=sys.stderr, flush=True)


def _print_next_steps(settings: Settings, http_url: str) -> None:
    print(
        f"""
care-plan-service (dev) on embedded servers
  NATS      {settings.nats_url}
  Postgres  {settings.database_url}
  HTTP      {http_url}
  JWKS      {settings.jwks_url}

Next, in another terminal:
  TOKEN=$(careplan token --tenant t1 --role clinician)
  careplan send careplan.create '{{"patient_id": "p1", "title": "Diabetes care plan", "status": "active"}}'
  curl -H "Authorization: Bearer $TOKEN" {http_url}/fhir/CarePlan/<id from the reply>
Stop with Ctrl-C.
""",
        file=sys.stderr,
        flush=True,
    )
