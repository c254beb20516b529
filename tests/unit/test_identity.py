"""JWT verification against a JWKS file: what identity-service's tokens must look like."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from domain.errors import Unavailable
from handlers.ports import AuthenticationFailed
from integrations.identity import JwksSource, JwtVerifier
from service.dev_identity import DevKeys, write_new_keys


@pytest.fixture
def keys(tmp_path: Path) -> DevKeys:
    return write_new_keys(tmp_path / "keys")


def verifier(keys: DevKeys, issuer: str | None = None) -> JwtVerifier:
    return JwtVerifier(JwksSource(keys.jwks_url), issuer=issuer, audience="care-plan-service")


async def test_valid_token_becomes_a_principal(keys: DevKeys) -> None:
    token = keys.mint(tenant_id="t1", roles=["clinician"], subject="dr-1", issuer="https://id.example")
    found = await verifier(keys, issuer="https://id.example").verify(token)
    assert found.tenant_id == "t1"
    assert found.subject == "dr-1"
    assert found.roles == frozenset({"clinician"})
    assert found.entitlements == frozenset({"ehr.care_plans"})
    assert found.issuer == "https://id.example"
    assert found.token_id


async def test_wrong_issuer_is_refused(keys: DevKeys) -> None:
    token = keys.mint(tenant_id="t1", roles=[], issuer="https://evil.example")
    with pytest.raises(AuthenticationFailed, match="issuer"):
        await verifier(keys, issuer="https://id.example").verify(token)


async def test_missing_issuer_is_refused_when_one_is_configured(keys: DevKeys) -> None:
    with pytest.raises(AuthenticationFailed):
        await verifier(keys, issuer="https://id.example").verify(keys.mint(tenant_id="t1", roles=[]))


async def test_rotated_key_is_picked_up_on_an_unknown_kid(keys: DevKeys, tmp_path: Path) -> None:
    source = JwksSource(keys.jwks_url, min_refresh_s=0)
    checker = JwtVerifier(source, issuer=None, audience="care-plan-service")
    await checker.verify(keys.mint(tenant_id="t1", roles=[]))
    # identity-service rotates: the JWKS now also holds a new key
    rotated = write_new_keys(tmp_path / "rotated")
    both = {
        "keys": json.loads(keys.jwks_path.read_text())["keys"]
        + json.loads(rotated.jwks_path.read_text())["keys"]
    }
    keys.jwks_path.write_text(json.dumps(both))
    found = await checker.verify(rotated.mint(tenant_id="t2", roles=[]))
    assert found.tenant_id == "t2"


async def test_unreadable_jwks_is_unavailable_not_a_rejection(keys: DevKeys, tmp_path: Path) -> None:
    """identity-service being away must be retried, not answered with UNAUTHENTICATED for good."""
    token = keys.mint(tenant_id="t1", roles=[])
    missing = JwtVerifier(
        JwksSource((tmp_path / "gone.json").as_uri()), issuer=None, audience="care-plan-service"
    )
    with pytest.raises(Unavailable) as raised:
        await missing.verify(token)
    assert raised.value.what == "identity"


async def test_roles_claim_of_the_wrong_type_is_refused(keys: DevKeys) -> None:
    token = keys.mint(tenant_id="t1", roles=[], extra={"roles": {"admin": True}})
    with pytest.raises(AuthenticationFailed, match="roles"):
        await verifier(keys).verify(token)


async def test_rs256_keys_served_over_http_are_used_and_cached(unused_tcp_port: int) -> None:
    """identity-service's JWKS over HTTP, RSA keys: fetched once, then served from the cache."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key())) | {
        "kid": "rsa-1",
        "alg": "RS256",
        "use": "sig",
    }
    fetches = 0

    async def jwks(_: web.Request) -> web.Response:
        nonlocal fetches
        fetches += 1
        return web.json_response({"keys": [jwk]})

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        source = JwksSource(f"http://127.0.0.1:{unused_tcp_port}/.well-known/jwks.json")
        checker = JwtVerifier(source, issuer=None, audience="care-plan-service")
        claims = {"sub": "u", "tenant_id": "t1", "aud": "care-plan-service", "exp": int(time.time()) + 60}
        token = jwt.encode(claims, private, algorithm="RS256", headers={"kid": "rsa-1"})
        first = await checker.verify(token)
        second = await checker.verify(token)
    finally:
        await runner.cleanup()
    assert first.tenant_id == second.tenant_id == "t1"
    assert fetches == 1


def _rsa_jwk(kid: str) -> tuple[rsa.RSAPrivateKey, dict[str, object]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(RSAAlgorithm.to_jwk(private.public_key())) | {
        "kid": kid,
        "alg": "RS256",
        "use": "sig",
    }
    return private, public


async def test_a_key_rotation_at_identity_service_needs_no_restart(unused_tcp_port: int) -> None:
    """The JWKS server rotates mid-test: the new key is fetched on its first unknown kid, the withdrawn key
    stops verifying, and a burst of tokens with unknown kids costs one fetch, not one each."""
    old_private, old_jwk = _rsa_jwk("2026-old")
    new_private, new_jwk = _rsa_jwk("2026-new")
    served: list[dict[str, object]] = [old_jwk]
    fetches = 0

    async def jwks(_: web.Request) -> web.Response:
        nonlocal fetches
        fetches += 1
        return web.json_response({"keys": served})

    def token(private: rsa.RSAPrivateKey, kid: str, tenant: str) -> str:
        claims = {"sub": "u", "tenant_id": tenant, "aud": "care-plan-service", "exp": int(time.time()) + 60}
        return jwt.encode(claims, private, algorithm="RS256", headers={"kid": kid})

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        source = JwksSource(f"http://127.0.0.1:{unused_tcp_port}/jwks.json", min_refresh_s=0.2)
        checker = JwtVerifier(source, issuer=None, audience="care-plan-service")
        assert (await checker.verify(token(old_private, "2026-old", "t1"))).tenant_id == "t1"
        assert fetches == 1

        # identity-service rotates: only the new key is published now
        served[:] = [new_jwk]
        await asyncio.sleep(0.25)  # past the refetch interval
        assert (await checker.verify(token(new_private, "2026-new", "t2"))).tenant_id == "t2"
        assert fetches == 2
        with pytest.raises(AuthenticationFailed, match="unknown key"):
            await checker.verify(token(old_private, "2026-old", "t1"))

        await asyncio.sleep(0.25)
        forged = [token(old_private, f"forged-{n}", "t3") for n in range(50)]
        before = fetches
        outcomes = await asyncio.gather(*(checker.verify(t) for t in forged), return_exceptions=True)
    finally:
        await runner.cleanup()
    assert all(isinstance(o, AuthenticationFailed) for o in outcomes)
    assert fetches - before == 1


class CountingSource(JwksSource):
    """The real key source, counting how often a token's key is looked up (once per signature check)."""

    lookups = 0

    async def key_for(self, kid: str | None) -> jwt.PyJWK:
        self.lookups += 1
        return await super().key_for(kid)


async def test_a_token_seen_before_is_not_checked_again_until_it_expires(keys: DevKeys) -> None:
    source = CountingSource(keys.jwks_url)
    checker = JwtVerifier(source, issuer=None, audience="care-plan-service", leeway_s=0)
    token = keys.mint(tenant_id="t1", roles=["clinician"], ttl_s=2)
    for _ in range(5):
        assert (await checker.verify(token)).tenant_id == "t1"
    assert source.lookups == 1
    # Past its exp the remembered verification does not count: the token is checked, and refused.
    await asyncio.sleep(2.2)
    with pytest.raises(AuthenticationFailed, match="expired"):
        await checker.verify(token)
    assert source.lookups == 2


async def test_a_remembered_token_stops_counting_once_its_key_is_withdrawn(
    keys: DevKeys, tmp_path: Path
) -> None:
    source = JwksSource(keys.jwks_url, min_refresh_s=0)
    checker = JwtVerifier(source, issuer=None, audience="care-plan-service")
    token = keys.mint(tenant_id="t1", roles=[])
    await checker.verify(token)
    # identity-service replaces its key; a token of the new key makes us fetch the new set
    rotated = write_new_keys(tmp_path / "rotated")
    keys.jwks_path.write_text(rotated.jwks_path.read_text())
    await checker.verify(rotated.mint(tenant_id="t2", roles=[]))
    with pytest.raises(AuthenticationFailed, match="unknown key"):
        await checker.verify(token)
