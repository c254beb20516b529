"""CAREPLAN_STREAM_REPLICAS (CONTRACT §11): the setting, and how many replicas a start gives a stream."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.cli import build_parser, settings_from
from service.settings import Settings
from service.topology import replicas_to_apply


def test_streams_have_one_replica_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().stream_replicas == 1
    monkeypatch.setenv("CAREPLAN_STREAM_REPLICAS", "3")
    assert Settings().stream_replicas == 3
    assert settings_from(build_parser().parse_args(["serve", "--stream-replicas", "5"])).stream_replicas == 5


@pytest.mark.parametrize("replicas", [0, 6])
def test_replicas_outside_what_jetstream_allows_are_refused(replicas: int) -> None:
    with pytest.raises(ValidationError, match="stream_replicas"):
        Settings(stream_replicas=replicas)


def test_a_new_stream_gets_the_configured_replicas() -> None:
    assert replicas_to_apply(3, existing=None) == 3
    assert replicas_to_apply(1, existing=None) == 1


def test_an_existing_stream_is_raised_to_the_configured_replicas() -> None:
    assert replicas_to_apply(3, existing=1) == 3


def test_an_existing_stream_is_never_lowered_by_a_start() -> None:
    # A replica started with the default, or an older one during a rolling deploy, keeps R3 at R3.
    assert replicas_to_apply(1, existing=3) == 3
    assert replicas_to_apply(3, existing=5) == 5
