"""identity-service away: the keys we hold keep verifying for a bounded time, one fetch at a time with a
back-off, and a clean Unavailable (never a misleading "unknown key") when we could not check. Against a
real JWKS endpoint on 127.0.0.1 that the test makes answer, fail (500) or hang."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from aiohttp import web
from pydantic import ValidationError

from domain.errors import Unavailable
from handlers.ports import AuthenticationFailed
from integrations.identity import JwksSource, JwtVerifier
from service.cli import build_parser, settings_from
from service.dev_identity import DevKeys, write_new_keys
from service.settings import Settings
from service.telemetry import JwksTelemetry, ServiceMetrics

Behaviour = Literal["answer", "fail", "hang"]


@dataclass
class JwksEndpoint:
    """identity-service's JWKS as this test wants it: answering `keys`, failing with a 500, or hanging."""

    url: str
    keys: list[dict[str, Any]]
    behaviour: Behaviour = "answer"
    fetches: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, _: web.Request) -> web.Response:
        self.fetches += 1
        if self.behaviour == "hang":
            await self.released.wait()
        if self.behaviour != "answer":
            return web.Response(status=500, text="identity-service is having a bad day")
        return web.json_response({"keys": self.keys})


def published_keys(*keys: DevKeys) -> list[dict[str, Any]]:
    return [jwk for k in keys for jwk in json.loads(k.jwks_path.read_text())["keys"]]


@pytest.fixture
def keys(tmp_path: Path) -> DevKeys:
    return write_new_keys(tmp_path / "keys")


@pytest.fixture
async def endpoint(unused_tcp_port: int, keys: DevKeys) -> AsyncIterator[JwksEndpoint]:
    served = JwksEndpoint(f"http://127.0.0.1:{unused_tcp_port}/jwks.json", published_keys(keys))
    app = web.Application()
    app.router.add_get("/jwks.json", served.handle)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    yield served
    served.released.set()
    await runner.cleanup()


def checking_every_token(source: JwksSource) -> JwtVerifier:
    """No verified-token cache: each token is checked against the key set, as a new one would be."""
    return JwtVerifier(source, issuer=None, audience="care-plan-service", cache_ttl_s=0)


async def eventually(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def refreshes(metrics: ServiceMetrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("careplan_jwks_refreshes_total", {"outcome": outcome}) or 0.0


async def test_cached_keys_keep_verifying_new_tokens_while_the_jwks_fails(
    endpoint: JwksEndpoint, keys: DevKeys, caplog: pytest.LogCaptureFixture
) -> None:
    # Given keys fetched once, then identity-service failing, and the cache time past
    metrics = ServiceMetrics()
    source = JwksSource(endpoint.url, ttl_s=0.2, backoff_initial_s=10, observer=JwksTelemetry(metrics))
    checker = checking_every_token(source)
    await checker.verify(keys.mint(tenant_id="t1", roles=[]))
    endpoint.behaviour = "fail"
    await asyncio.sleep(0.3)
    caplog.set_level(logging.INFO, logger="integrations.identity")
    fetches_before = endpoint.fetches

    # When 50 new tokens arrive at once, and then 50 more
    first = await asyncio.gather(*(checker.verify(keys.mint(tenant_id="t1", roles=[])) for _ in range(50)))
    await eventually(lambda: refreshes(metrics, "failed") == 1)
    second = await asyncio.gather(*(checker.verify(keys.mint(tenant_id="t1", roles=[])) for _ in range(50)))

    # Then all verify with the keys we hold, at the cost of one fetch (the next waits out the back-off)
    assert {p.tenant_id for p in first + second} == {"t1"}
    assert endpoint.fetches - fetches_before == 1
    assert refreshes(metrics, "ok") == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert re.search(r"serving with keys \d+ s old", warnings[0]), warnings[0]
    age_s = source.keys_age_s()
    assert age_s is not None and age_s > 0.3


async def test_holders_of_a_usable_key_do_not_wait_for_a_hanging_jwks(
    endpoint: JwksEndpoint, keys: DevKeys
) -> None:
    metrics = ServiceMetrics()
    source = JwksSource(endpoint.url, ttl_s=0.2, fetch_timeout_s=3, observer=JwksTelemetry(metrics))
    checker = checking_every_token(source)
    await checker.verify(keys.mint(tenant_id="t1", roles=[]))
    endpoint.behaviour = "hang"
    await asyncio.sleep(0.3)
    fetches_before = endpoint.fetches

    started = time.monotonic()
    found = await asyncio.gather(*(checker.verify(keys.mint(tenant_id="t1", roles=[])) for _ in range(50)))
    elapsed_s = time.monotonic() - started

    assert {p.tenant_id for p in found} == {"t1"}
    assert elapsed_s < 2.0  # well under the 3 s fetch timeout: nobody waited for the fetch
    await eventually(lambda: refreshes(metrics, "failed") == 1, timeout_s=5)
    assert endpoint.fetches - fetches_before == 1


async def test_without_keys_a_hanging_jwks_costs_a_burst_one_timeout_then_fails_fast(
    endpoint: JwksEndpoint, keys: DevKeys
) -> None:
    # Given a JWKS that hangs before we ever had its keys
    endpoint.behaviour = "hang"
    checker = checking_every_token(JwksSource(endpoint.url, fetch_timeout_s=0.5, backoff_initial_s=10))

    # When 20 tokens arrive at once
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(checker.verify(keys.mint(tenant_id="t1", roles=[])) for _ in range(20)), return_exceptions=True
    )
    elapsed_s = time.monotonic() - started

    # Then they all wait for the one fetch and are told the identity service is unavailable
    assert all(isinstance(o, Unavailable) and o.what == "identity" for o in outcomes), outcomes
    assert endpoint.fetches == 1
    assert elapsed_s < 2.5  # one 0.5 s timeout shared, not 20 in turn
    # and during the back-off a token is refused at once, without another fetch
    with pytest.raises(Unavailable, match=r"no signing keys yet.*no answer within 0\.5 s.*next try in"):
        await checker.verify(keys.mint(tenant_id="t1", roles=[]))
    assert endpoint.fetches == 1


async def test_keys_past_their_stale_allowance_are_unavailable_not_a_rejection(
    endpoint: JwksEndpoint, keys: DevKeys
) -> None:
    source = JwksSource(endpoint.url, ttl_s=0.2, max_stale_s=0.6, backoff_initial_s=0.05, backoff_max_s=0.05)
    checker = checking_every_token(source)
    await checker.verify(keys.mint(tenant_id="t1", roles=[]))
    endpoint.behaviour = "fail"

    await asyncio.sleep(0.35)  # stale, within the allowance
    assert (await checker.verify(keys.mint(tenant_id="t1", roles=[]))).tenant_id == "t1"

    await asyncio.sleep(0.7)  # past cache time and allowance: 0.8 s
    with pytest.raises(Unavailable, match=r"past the 0\.8 s allowed") as raised:
        await checker.verify(keys.mint(tenant_id="t1", roles=[]))
    assert raised.value.what == "identity"


async def test_an_unknown_kid_while_the_jwks_is_unreachable_is_unavailable_not_a_rejection(
    endpoint: JwksEndpoint, keys: DevKeys, tmp_path: Path
) -> None:
    """We could not check whether identity-service rotated to that key: "unknown key" would send a caller
    with a good token back to log in, so the answer is "retry later"."""
    checker = checking_every_token(JwksSource(endpoint.url, min_refresh_s=0, backoff_initial_s=10))
    await checker.verify(keys.mint(tenant_id="t1", roles=[]))
    endpoint.behaviour = "fail"
    rotated = write_new_keys(tmp_path / "rotated")

    with pytest.raises(Unavailable, match="not among the keys fetched"):
        await checker.verify(rotated.mint(tenant_id="t2", roles=[]))
    with pytest.raises(Unavailable, match="next try in"):
        await checker.verify(rotated.mint(tenant_id="t2", roles=[]))

    assert endpoint.fetches == 2  # the second unknown kid waited out the back-off
    assert (await checker.verify(keys.mint(tenant_id="t1", roles=[]))).tenant_id == "t1"


async def test_identity_service_back_brings_the_rotated_key_and_drops_the_withdrawn_one(
    endpoint: JwksEndpoint, keys: DevKeys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given keys served stale through a failure
    caplog.set_level(logging.INFO, logger="integrations.identity")
    metrics = ServiceMetrics()
    source = JwksSource(
        endpoint.url, ttl_s=0.2, backoff_initial_s=0.1, backoff_max_s=0.1, observer=JwksTelemetry(metrics)
    )
    checker = checking_every_token(source)
    await checker.verify(keys.mint(tenant_id="t1", roles=[]))
    endpoint.behaviour = "fail"
    await asyncio.sleep(0.3)
    assert (await checker.verify(keys.mint(tenant_id="t1", roles=[]))).tenant_id == "t1"
    await eventually(lambda: refreshes(metrics, "failed") == 1)

    # When identity-service answers again, having rotated to a new key only
    rotated = write_new_keys(tmp_path / "rotated")
    endpoint.keys = published_keys(rotated)
    endpoint.behaviour = "answer"
    await asyncio.sleep(0.15)  # past the back-off

    # Then the new key verifies and the withdrawn one no longer does
    assert (await checker.verify(rotated.mint(tenant_id="t2", roles=[]))).tenant_id == "t2"
    with pytest.raises(AuthenticationFailed, match="unknown key"):
        await checker.verify(keys.mint(tenant_id="t1", roles=[]))
    assert (refreshes(metrics, "ok"), refreshes(metrics, "failed")) == (2, 1)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "integrations.identity"]
    assert [level for level, _ in lines] == [logging.WARNING, logging.INFO]
    assert "readable again after 1 failed fetches" in lines[1][1]


async def test_failed_fetches_back_off_doubling_up_to_the_cap(endpoint: JwksEndpoint, keys: DevKeys) -> None:
    now = 0.0
    source = JwksSource(endpoint.url, backoff_initial_s=1, backoff_max_s=4, clock=lambda: now)
    checker = checking_every_token(source)
    endpoint.behaviour = "fail"
    token = keys.mint(tenant_id="t1", roles=[])

    fetched_at: list[float] = []
    for step in range(33):  # every half second for 16 s
        now = step / 2
        before = endpoint.fetches
        with pytest.raises(Unavailable):
            await checker.verify(token)
        if endpoint.fetches > before:
            fetched_at.append(now)

    assert fetched_at == [0, 1, 3, 7, 11, 15]


def test_jwks_settings_default_to_five_minutes_fresh_and_an_hour_stale() -> None:
    settings = Settings()
    assert (settings.jwks_cache_ttl_s, settings.jwks_max_stale_s) == (300, 3600)
    flags = ["serve", "--jwks-cache-ttl-s", "0.2", "--jwks-max-stale-s", "0"]
    from_flags = settings_from(build_parser().parse_args(flags))
    assert (from_flags.jwks_cache_ttl_s, from_flags.jwks_max_stale_s) == (0.2, 0)


def test_jwks_settings_from_the_environment_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAREPLAN_JWKS_MAX_STALE_S", "600")
    assert Settings().jwks_max_stale_s == 600
    with pytest.raises(ValidationError, match="jwks_cache_ttl_s"):
        Settings(jwks_cache_ttl_s=0)
    with pytest.raises(ValidationError, match="jwks_max_stale_s"):
        Settings(jwks_max_stale_s=-1)
