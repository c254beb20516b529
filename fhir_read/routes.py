"""Every FHIR R4 route (CONTRACT §6), registered here and nowhere else, in the order aiohttp must try them."""

from __future__ import annotations

from aiohttp import web

from domain.search_parameters import SEARCHABLE_TYPES
from fhir_read.app_context import install_app_context
from fhir_read.capability import Software, install_capability_statement, metadata_route
from fhir_read.history import (
    instance_history_route,
    provenance_read_route,
    provenance_search_route,
    type_history_route,
    vread_route,
)
from fhir_read.resource_read import read_route
from fhir_read.search import search_route
from fhir_read.smart import SMART, SmartEndpoints, smart_configuration_route
from handlers.ports import TokenVerifier
from storage.read_routing import ReadRouter
from storage.tables import READABLE_TABLES


def add_fhir_routes(
    app: web.Application,
    reads: ReadRouter,
    verifier: TokenVerifier,
    *,
    cursor_secret: bytes | None,
    public_base_url: str | None,
    smart: SmartEndpoints | None = None,
    software: Software | None = None,
) -> None:
    """Every FHIR route, on the app context `install_app_context` sets up from the same arguments."""
    install_app_context(app, reads, verifier, cursor_secret=cursor_secret, public_base_url=public_base_url)
    app[SMART] = smart or SmartEndpoints()
    install_capability_statement(app, app[SMART], software or Software())
    app.router.add_get("/fhir/.well-known/smart-configuration", smart_configuration_route)
    # History first, so `/_history` is never taken for an id by the read routes.
    for resource_type in READABLE_TABLES:
        app.router.add_get(f"/fhir/{resource_type}/_history", type_history_route)
        app.router.add_get(f"/fhir/{resource_type}/{{id}}/_history", instance_history_route)
        app.router.add_get(f"/fhir/{resource_type}/{{id}}/_history/{{vid}}", vread_route)
    app.router.add_get("/fhir/Provenance", provenance_search_route)
    app.router.add_get("/fhir/Provenance/{id}", provenance_read_route)
    for resource_type in READABLE_TABLES:
        app.router.add_get(f"/fhir/{resource_type}/{{id}}", read_route)
    app.router.add_get("/fhir/metadata", metadata_route)
    for resource_type in SEARCHABLE_TYPES:
        app.router.add_get(f"/fhir/{resource_type}", search_route)
        app.router.add_post(f"/fhir/{resource_type}/_search", search_route)
