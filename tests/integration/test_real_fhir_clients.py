"""Real FHIR clients as they are (issue 20): fhirpy pages a search to its end by following `next` links,
reads, vreads and reads history; MedplumClient (`@medplum/core`, run by node) pages with
`searchResourcePages`, which adds `_count` to each `next` link."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from fhirpy import AsyncFHIRClient
from nats.aio.client import Client as NatsClient

from service.runner import RunningService
from tests.conftest import TokenFactory
from tests.integration.commands import Caller

PLANS = 7


async def plans(nc: NatsClient, service: RunningService, token: str) -> list[str]:
    caller = Caller(nc, service.http_url, token)
    created = []
    for n in range(PLANS):
        reply = await caller.ok(
            "careplan.create", {"patient_id": "p1", "title": f"Plan {n}", "status": "active"}
        )
        created.append(reply["id"])
    await caller.ok(
        "careplan.update", {"care_plan_id": created[0], "changes": {"title": "Plan 0, revised"}}, 1
    )
    return created


async def test_fhirpy_pages_reads_vreads_and_reads_history(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    token = token_for(tenant)
    created = await plans(nc, service, token)
    client = AsyncFHIRClient(f"{service.http_url}/fhir", authorization=f"Bearer {token}")
    found = await client.resources("CarePlan").search(status="active").limit(2).fetch_all()
    assert sorted(r["id"] for r in found) == sorted(created)
    plan = await client.reference("CarePlan", created[0]).to_resource()
    assert (plan["title"], plan["meta"]["versionId"]) == ("Plan 0, revised", "2")
    first = await client.execute(f"CarePlan/{created[0]}/_history/1", method="get")
    assert first["title"] == "Plan 0"
    history = await client.execute(f"CarePlan/{created[0]}/_history", method="get")
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]


MEDPLUM_SCRIPT = """
const { MedplumClient } = require("@medplum/core");
(async () => {
  const [baseUrl, token] = process.argv.slice(2);
  const medplum = new MedplumClient({ baseUrl, fhirUrlPath: "fhir", fetch: globalThis.fetch });
  medplum.setAccessToken(token);
  const ids = [];
  let pages = 0;
  for await (const page of medplum.searchResourcePages("CarePlan", { status: "active", _count: 3 })) {
    pages += 1;
    ids.push(...page.map((r) => r.id));
  }
  const read = await medplum.readResource("CarePlan", ids[0]);
  const history = await medplum.readHistory("CarePlan", ids[0]);
  console.log(JSON.stringify({ ids, pages, read: read.id, history: history.entry.length }));
})().catch((error) => { console.error(String(error)); process.exit(1); });
"""


@pytest.fixture(scope="session")
def medplum_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`@medplum/core` from the npm registry, installed once per session beside a small script."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail("node and npm are needed to run MedplumClient (README: the test prerequisites)")
    where = tmp_path_factory.mktemp("medplum")
    (where / "package.json").write_text(json.dumps({"name": "medplum-probe", "private": True}))
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--silent", "@medplum/core@4"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "npm_config_update_notifier": "false"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (where / "probe.js").write_text(MEDPLUM_SCRIPT)
    return where


async def test_medplum_client_pages_reads_and_reads_history(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, medplum_dir: Path
) -> None:
    token = token_for(tenant)
    created = await plans(nc, service, token)
    done = await asyncio.to_thread(
        subprocess.run,
        ["node", "probe.js", f"{service.http_url}/", token],
        cwd=medplum_dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(result["ids"]) == sorted(created)
    # 3, then the other 4 at once: Medplum follows the next link with a `_count` of its own added (1000,
    # capped at 200), which the service takes beside the cursor.
    assert result["pages"] == 2
    assert result["read"] in created and result["history"] >= 1
