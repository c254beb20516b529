"""Which exporter `careplan serve` uses (service.tracing): the standard OTEL_* variables, nothing
configured meaning nothing exported, an unknown exporter refused at start."""

from __future__ import annotations

import pytest

from service.tracing import TracingRefused, configure_tracing, exporter_name


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "none"),
        ({"OTEL_TRACES_EXPORTER": "none"}, "none"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "OTLP"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "none"),
    ],
)
def test_the_exporter_follows_the_standard_variables(environ: dict[str, str], expected: str) -> None:
    assert exporter_name(environ) == expected


def test_an_unknown_exporter_is_refused() -> None:
    with pytest.raises(TracingRefused, match="zipkin"):
        exporter_name({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_nothing_configured_installs_nothing() -> None:
    assert configure_tracing({}) is None
