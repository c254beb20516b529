"""What the service advertises to SMART apps (fhir_read.smart): identity-service's endpoints when they are
configured, never invented when they are not."""

from __future__ import annotations

from fhir_read.capability import capability_statement
from fhir_read.smart import OAUTH_URIS, SmartEndpoints, smart_configuration

IDENTITY = SmartEndpoints(
    issuer="https://identity.example.org",
    authorization_endpoint="https://identity.example.org/authorize",
    token_endpoint="https://identity.example.org/token",
)


def test_configured_endpoints_are_advertised_in_both_places() -> None:
    configuration = smart_configuration(IDENTITY)
    assert configuration["authorization_endpoint"] == "https://identity.example.org/authorize"
    assert configuration["token_endpoint"] == "https://identity.example.org/token"
    assert configuration["issuer"] == "https://identity.example.org"
    (uris,) = capability_statement(IDENTITY)["rest"][0]["security"]["extension"]
    assert uris["url"] == OAUTH_URIS
    assert {e["url"]: e["valueUri"] for e in uris["extension"]} == {
        "authorize": "https://identity.example.org/authorize",
        "token": "https://identity.example.org/token",
    }


def test_unset_endpoints_are_left_out() -> None:
    configuration = smart_configuration(SmartEndpoints())
    assert set(configuration) == {"capabilities", "scopes_supported"}
    assert "extension" not in capability_statement()["rest"][0]["security"]
