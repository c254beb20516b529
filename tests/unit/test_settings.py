"""Configuration: one object, from flags or CAREPLAN_* variables."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from domain.access import DEFAULT_ROLE_PERMISSIONS
from service.cli import build_parser, main, settings_from
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


def test_log_level_is_checked_and_case_free(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAREPLAN_LOG_LEVEL", "warning")
    assert Settings().log_level == "WARNING"
    monkeypatch.setenv("CAREPLAN_LOG_LEVEL", "LOUD")
    with pytest.raises(ValidationError, match="log_level"):
        Settings()


def test_shutdown_settings_are_positive_and_default_to_a_supervisors_grace() -> None:
    settings = Settings()
    assert (settings.shutdown_grace_s, settings.drain_delay_s) == (25, 0)
    with pytest.raises(ValidationError, match="shutdown_grace_s"):
        Settings(shutdown_grace_s=0)
    with pytest.raises(ValidationError, match="drain_delay_s"):
        Settings(drain_delay_s=-1)


def test_a_bad_setting_is_one_line_naming_it_and_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CAREPLAN_LOG_LEVEL", "LOUD")
    assert main(["serve"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        "careplan: invalid configuration: CAREPLAN_LOG_LEVEL (--log-level): Input should be 'DEBUG'"
    )


def test_nats_passwords_never_reach_the_ready_line() -> None:
    settings = Settings(
        nats_url="nats://careplan:s3cret@nats-1:4222, nats://nats-2:4222,nats://u:p@[::1]:4222"
    )
    shown = settings.nats_servers_shown()
    assert shown == "nats://careplan:***@nats-1:4222,nats://nats-2:4222,nats://u:***@[::1]:4222"
    assert "s3cret" not in shown
