"""Which requests the FHIR surface answers in JSON, and which get 406 (fhir_read.formats)."""

from __future__ import annotations

import pytest

from fhir_read.formats import accepts_json


@pytest.mark.parametrize(
    ("accept", "format_", "expected"),
    [
        (None, None, True),
        ("application/fhir+json", None, True),
        ("application/json, text/plain", None, True),
        ("*/*", None, True),
        ("application/*;q=0.5", None, True),
        ("application/fhir+xml", None, False),
        ("application/xml, text/html", None, False),
        ("application/fhir+json;q=0, application/fhir+xml", None, False),
        ("application/fhir+json;q=oops", None, False),
        ("application/fhir+xml", "json", True),  # _format wins
        (None, "xml", False),
        (None, "application/fhir+json", True),
        ("application/fhir+json", "application/fhir+xml", False),
    ],
)
def test_json_or_406(accept: str | None, format_: str | None, expected: bool) -> None:
    assert accepts_json(accept, format_) is expected
