"""Configuration: one object, from flags or CAREPLAN_* variables."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from domain.access import DEFAULT_ROLE_PERMISSIONS
from service.cli import build_parser, settings_from
from service.settings import Settings


def test_role_table_defaults_to_the_documented_one() -> None:
    assert Settings().role_table() == DEFAULT_ROLE_PERMISSIONS


def test_role_table_from_the_environment_replaces_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAREPLAN_ROLE_PERMISSIONS", '{"nurse": ["activity:write", "goal:write"]}')
    assert Settings().role_table() == {"nurse": frozenset({"activity:write", "goal:write"})}


def test_role_table_from_a_flag_after_the_command() -> None:
    args = build_parser().parse_args(["serve", "--role-permissions", '{"gp": ["careplan:write"]}'])
    assert settings_from(args).role_table() == {"gp": frozenset({"careplan:write"})}


def test_unknown_permission_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="unknown permissions"):
        Settings(role_permissions={"nurse": ["fly"]})


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAREPLAN_HTTP_PORT", "9000")
    assert settings_from(build_parser().parse_args(["--http-port", "9100", "dev"])).http_port == 9100
    assert settings_from(build_parser().parse_args(["dev"])).http_port == 9000
