"""identity-service: JWKS (file or HTTP, cached) and JWT verification into a Principal."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import aiohttp
import jwt
from cachetools import TTLCache
from jwt import PyJWK

from domain.access import Principal
from domain.errors import Unavailable
from handlers.ports import AuthenticationFailed
from integrations.claims import principal_from_claims

ALGORITHMS = ("RS256", "ES256")


class JwksSource:
    """The signing keys, refreshed after `ttl_s` and at most every `min_refresh_s` on an unknown `kid`
    (identity-service rotates keys; a forged kid must not make us hammer it)."""

    def __init__(self, url: str, *, ttl_s: float = 300.0, min_refresh_s: float = 10.0) -> None:
        self._url = url
        self._ttl_s = ttl_s
        self._min_refresh_s = min_refresh_s
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str | None) -> PyJWK:
        seen = self._fetched_at
        if time.monotonic() - seen > self._ttl_s:
            await self._refresh(unless_since=seen)
        key = self._pick(kid)
        seen = self._fetched_at
        if key is None and time.monotonic() - seen > self._min_refresh_s:
            await self._refresh(unless_since=seen)
            key = self._pick(kid)
        if key is None:
            raise AuthenticationFailed("token signed with an unknown key")
        return key

    def still_has(self, key: PyJWK) -> bool:
        """Is this key in the key set as last fetched (a withdrawn one is not)?"""
        return any(known is key for known in self._keys.values())

    def _pick(self, kid: str | None) -> PyJWK | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh(self, *, unless_since: float) -> None:
        """Fetch, unless another caller did while this one waited for the lock: a burst of tokens with an
        unknown kid (a rotation, or forgeries) costs one fetch, not one each."""
        async with self._lock:
            if self._fetched_at != unless_since:
                return
            document = await self._load()
            keys: dict[str, PyJWK] = {}
            for index, entry in enumerate(document.get("keys", [])):
                try:
                    key = PyJWK.from_dict(entry)
                except jwt.PyJWTError:
                    continue  # a key type we do not use; the others still count
                keys[str(entry.get("kid", index))] = key
            self._keys = keys
            self._fetched_at = time.monotonic()

    async def _load(self) -> Mapping[str, Any]:
        parsed = urlparse(self._url)
        if parsed.scheme == "file":
            text = await asyncio.to_thread(Path(unquote(parsed.path)).read_text)
            loaded: Mapping[str, Any] = json.loads(text)
            return loaded
        if parsed.scheme in ("http", "https"):
            timeout = aiohttp.ClientTimeout(total=5)
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(self._url) as response:
                response.raise_for_status()
                fetched: Mapping[str, Any] = await response.json(content_type=None)
                return fetched
        raise ValueError(f"unsupported JWKS URL scheme: {parsed.scheme!r}")


class JwtVerifier:
    """Checks signature (RS256/ES256 only), `exp`, and `iss`/`aud` when configured; the claims become a
    Principal in `integrations.claims`.

    A token that verified is remembered for `cache_ttl_s` (never past its `exp`): callers and
    fhir-gateway send the same token many times, and a signature check costs more than the rest of a
    read. A key withdrawn from the JWKS stops counting within that time (the key set itself is cached
    for `JwksSource`'s TTL anyway), and at once when a refetched key set no longer has it."""

    def __init__(
        self,
        keys: JwksSource,
        *,
        issuer: str | None,
        audience: str | None,
        leeway_s: int = 30,
        cache_ttl_s: float = 60.0,
        cache_size: int = 10_000,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway_s = leeway_s
        self._verified: TTLCache[str, tuple[Principal, float, PyJWK]] | None = (
            TTLCache(maxsize=cache_size, ttl=cache_ttl_s) if cache_ttl_s > 0 else None
        )

    async def verify(self, token: str) -> Principal:
        if self._verified is not None:
            hit = self._verified.get(token)
            if hit is not None and time.time() <= hit[1] + self._leeway_s and self._keys.still_has(hit[2]):
                return hit[0]
        principal, expires_at, key = await self._verify(token)
        if self._verified is not None:
            self._verified[token] = (principal, expires_at, key)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float, PyJWK]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed(f"malformed token: {exc}") from exc
        if header.get("alg") not in ALGORITHMS:
            raise AuthenticationFailed(f"token algorithm must be one of {', '.join(ALGORITHMS)}")
        try:
            key = await self._keys.key_for(header.get("kid"))
        except AuthenticationFailed:
            raise
        except Exception as exc:
            # identity-service's keys could not be read: a retry may succeed, a rejection would be wrong.
            raise Unavailable("identity", f"signing keys could not be read: {exc}") from exc
        required = ["exp", "sub"] + (["iss"] if self._issuer else []) + (["aud"] if self._audience else [])
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=list(ALGORITHMS),
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway_s,
                options={"require": required, "verify_aud": self._audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed(f"invalid token: {exc}") from exc
        return principal_from_claims(claims), float(claims["exp"]), key
