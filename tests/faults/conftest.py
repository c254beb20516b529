"""Fixtures for the fault scenarios: a lab of the test's own (see lab.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from service.dev_identity import DevKeys
from tests.faults.lab import Lab, fault_lab


@pytest.fixture
def lab_dir() -> Iterator[Path]:
    """Under /tmp: Unix socket paths must stay short."""
    path = Path(tempfile.mkdtemp(prefix="cplab-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def lab(postgres_server_url: str, keys: DevKeys, lab_dir: Path) -> AsyncIterator[Lab]:
    async with fault_lab(postgres_server_url, keys, lab_dir) as running:
        yield running
