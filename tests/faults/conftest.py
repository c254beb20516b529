"""Fixtures for the fault scenarios: a lab of the test's own (see lab.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest

from service.dev_identity import DevKeys
from service.embedded.postgres_server import EmbeddedPostgres
from tests.faults.lab import Lab, fault_lab


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_FAILED] = True
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def lab_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Under /tmp: Unix socket paths must stay short. Kept when the test fails, for its servers' logs."""
    path = Path(tempfile.mkdtemp(prefix="cplab-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    if request.node.stash.get(_FAILED, False):
        print(f"\nfault lab kept for its logs: {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def lab(postgres_server_url: str, keys: DevKeys, lab_dir: Path) -> AsyncIterator[Lab]:
    async with fault_lab(postgres_server_url, keys, lab_dir) as running:
        yield running


@pytest.fixture
async def lab_with_own_postgres(
    postgres_server_url: str, keys: DevKeys, lab_dir: Path
) -> AsyncIterator[tuple[Lab, EmbeddedPostgres]]:
    """A lab whose Postgres the test may stop or reconfigure: an embedded server of its own."""
    with EmbeddedPostgres(lab_dir / "pg") as postgres:
        async with fault_lab(postgres_server_url, keys, lab_dir, own_postgres=postgres) as lab:
            yield lab, postgres


@pytest.fixture
async def cluster_lab(postgres_server_url: str, keys: DevKeys, lab_dir: Path) -> AsyncIterator[Lab]:
    """A lab whose NATS is a three-node cluster (`lab.cluster`), JetStream on every node."""
    async with fault_lab(postgres_server_url, keys, lab_dir, nats_nodes=3) as running:
        yield running
