"""Read the service's /metrics as Prometheus would, with prometheus_client's own parser."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from service.runner import RunningService

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(service: RunningService) -> Samples:
    async with aiohttp.ClientSession() as http, http.get(f"{service.http_url}/metrics") as response:
        assert response.status == 200
        # Prometheus's own default; OpenMetrics only when asked for
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled series not yet created (Prometheus reads it the same way)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)
