"""The deploy files, checked by reading (no Docker engine here): the image holds every package the
project installs, and the compose file only sets settings that exist, with a stop grace longer than the
service's own drain."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


def test_the_image_copies_every_package_the_project_installs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set(re.findall(r"^COPY (\w+) \1$", (ROOT / "Dockerfile").read_text(), re.MULTILINE))
    assert copied == packages


def test_the_image_runs_serve_as_a_non_root_user_and_stops_on_sigterm() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER careplan$", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["careplan"]' in dockerfile
    assert 'CMD ["serve"]' in dockerfile
    assert "STOPSIGNAL SIGTERM" in dockerfile


def test_compose_sets_only_settings_that_exist() -> None:
    known = {f"CAREPLAN_{name.upper()}" for name in Settings.model_fields}
    for name, service in compose()["services"].items():
        environment = service.get("environment", {})
        unknown = {key for key in environment if key.startswith("CAREPLAN_")} - known
        assert not unknown, (name, unknown)


def test_compose_gives_the_service_longer_than_its_own_drain_before_sigkill() -> None:
    service = compose()["services"]["careplan"]
    environment = service["environment"]
    defaults = Settings()
    grace = float(environment.get("CAREPLAN_SHUTDOWN_GRACE_S", defaults.shutdown_grace_s))
    delay = float(environment.get("CAREPLAN_DRAIN_DELAY_S", defaults.drain_delay_s))
    stop_grace = float(str(service["stop_grace_period"]).removesuffix("s"))
    # the drain, then FastStream's own margin and closing the connections
    assert stop_grace >= delay + grace + 10
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
