"""The signing keys on /metrics: how often their fetch failed, and how old the keys verifying tokens are."""

from __future__ import annotations

import math

import aiohttp

from service.runner import RunningService
from tests.conftest import TokenFactory
from tests.integration.scrape import scrape, value


async def test_the_key_sets_fetches_and_age_are_on_metrics(
    service: RunningService, tenant: str, token_for: TokenFactory
) -> None:
    # Given a request whose token was verified (so the keys were fetched at least once)
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{service.http_url}/fhir/CarePlan/not-there",
            headers={"Authorization": f"Bearer {token_for(tenant)}"},
        ) as response,
    ):
        assert response.status == 404

    # When Prometheus scrapes
    samples = await scrape(service)

    # Then the fetches are counted by outcome, failures at 0 rather than missing, and the keys have an age
    assert value(samples, "careplan_jwks_refreshes_total", outcome="ok") >= 1
    assert ("careplan_jwks_refreshes_total", frozenset({("outcome", "failed")})) in samples
    age_s = value(samples, "careplan_jwks_age_seconds")
    assert not math.isnan(age_s)
    assert 0 <= age_s <= service.settings.jwks_cache_ttl_s + service.settings.jwks_max_stale_s
