"""What build is running, from the package's own metadata rather than literals: `careplan --version`, the
CapabilityStatement's `software` and `date`, and the `careplan_build_info` metric all read it here."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import UTC, date, datetime
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "care-plan-service"
_CHECKOUT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class BuildInfo:
    version: str
    commit: str | None  # `CAREPLAN_BUILD_COMMIT` (the image's build argument), else the checkout's HEAD
    released: date  # when this version was installed (its metadata's date)
    python: str

    @property
    def line(self) -> str:
        """`careplan --version`'s line."""
        commit = f", commit {self.commit[:12]}" if self.commit else ""
        return f"care-plan-service {self.version}{commit} (Python {self.python})"


@functools.cache
def build_info() -> BuildInfo:
    distribution = metadata.distribution(DISTRIBUTION)
    return BuildInfo(
        version=distribution.version,
        commit=os.environ.get("CAREPLAN_BUILD_COMMIT") or _checkout_commit(),
        released=_installed_on(distribution),
        python=platform.python_version(),
    )


def _installed_on(distribution: metadata.Distribution) -> date:
    """The day the distribution's metadata was written (its install, or an editable install's)."""
    where = getattr(distribution, "_path", None)  # PathDistribution's dist-info folder
    if isinstance(where, Path) and where.exists():
        return datetime.fromtimestamp(where.stat().st_mtime, UTC).date()
    return datetime.now(UTC).date()


def _checkout_commit() -> str | None:
    """HEAD of the git checkout the code runs from, when it runs from one (dev, CI); None in an image."""
    if not (_CHECKOUT / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(_CHECKOUT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) == 40 else None
