"""The committed OpenAPI document is the one the app serves (other teams read it from the repository)."""

from __future__ import annotations

import orjson

from handlers.registry import standard_commands
from service.api_documents import OPENAPI_PATH, REGENERATE_COMMAND, render_openapi
from service.openapi import openapi_document


def test_committed_openapi_document_is_the_generated_one() -> None:
    committed = OPENAPI_PATH.read_text(encoding="utf-8")
    assert committed == render_openapi(), (
        f"docs/openapi.json is stale: regenerate it with `{REGENERATE_COMMAND}`"
    )


def test_the_document_has_one_operation_per_route_and_each_names_its_command() -> None:
    document = orjson.loads(OPENAPI_PATH.read_bytes())
    assert document == openapi_document(standard_commands())
    operations = [(m.upper(), p) for p, item in document["paths"].items() for m in item]
    specs = standard_commands().values()
    assert sorted(operations) == sorted((s.route.method, s.route.path) for s in specs)
    for spec in specs:
        route = spec.route
        operation = document["paths"][route.path][route.method.lower()]
        assert f"`{spec.name}`" in operation["description"]
