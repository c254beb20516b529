"""What every FHIR route finds on the aiohttp app: the app keys, set once when the routes are added, and
the request helpers the route modules share, so no route module imports another."""

from __future__ import annotations

import os

from aiohttp import web

from domain.access import Principal
from fhir_read.auth import authenticate
from handlers.ports import TokenVerifier
from storage.read_routing import ReadRouter

READS = web.AppKey("fhir_reads", ReadRouter)
VERIFIER = web.AppKey("fhir_verifier", TokenVerifier)
CURSOR_SECRET = web.AppKey("cursor_secret", bytes)
PUBLIC_BASE_URL = web.AppKey("public_base_url", str)


def install_app_context(
    app: web.Application,
    reads: ReadRouter,
    verifier: TokenVerifier,
    *,
    cursor_secret: bytes | None,
    public_base_url: str | None,
) -> None:
    """`reads` says where each read runs: the replica, or the primary (fhir_read.consistency). Cursors are
    signed with `cursor_secret`; replicas behind one gateway must share it."""
    app[READS] = reads
    app[VERIFIER] = verifier
    app[CURSOR_SECRET] = cursor_secret or os.urandom(32)
    app[PUBLIC_BASE_URL] = (public_base_url or "").rstrip("/")


async def authenticate_caller(request: web.Request) -> Principal:
    """The caller's principal, checked by the app's verifier; `Unauthenticated` when it is refused."""
    return await authenticate(request, request.app[VERIFIER])


def prefers_lenient(request: web.Request) -> bool:
    """`Prefer: handling=lenient` (RFC 7240: comma- or semicolon-separated preferences)."""
    preferences = (
        p.strip().replace(" ", "") for h in request.headers.getall("Prefer", []) for p in h.split(",")
    )
    return "handling=lenient" in {p.split(";")[0].lower() for p in preferences}


def base_url(request: web.Request) -> str:
    """Where links in a Bundle point: the configured public base, else what the request came to."""
    configured = request.app[PUBLIC_BASE_URL]
    return configured or f"{request.scheme}://{request.host}/fhir"
