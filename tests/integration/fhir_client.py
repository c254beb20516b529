"""FHIR HTTP helpers for the tests: search, follow `next` links, and read Bundles."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson


async def fhir_get(
    url: str, token: str | None, *, params: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    all_headers = ({"Authorization": f"Bearer {token}"} if token else {}) | (headers or {})
    async with aiohttp.ClientSession() as http, http.get(url, params=params, headers=all_headers) as response:
        body = await response.read()
        return response.status, (orjson.loads(body) if body else {})


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def typed_ids(bundle: dict[str, Any], mode: str) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == mode
    }


def next_link(bundle: dict[str, Any]) -> str | None:
    return next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)


async def all_pages(url: str, token: str, params: Any = None) -> list[dict[str, Any]]:
    pages = []
    status, bundle = await fhir_get(url, token, params=params)
    assert status == 200, bundle
    pages.append(bundle)
    while (link := next_link(bundle)) is not None:
        status, bundle = await fhir_get(link, token)
        assert status == 200, bundle
        pages.append(bundle)
    return pages
