"""identity-service: JWKS (file or HTTP, cached, kept through its outages) and JWT verification into a
Principal."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlparse

import aiohttp
import jwt
from cachetools import TTLCache
from jwt import PyJWK

from domain.access import Principal
from domain.errors import Unavailable
from handlers.ports import AuthenticationFailed
from integrations.claims import principal_from_claims

log = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "ES256")
RefreshOutcome = Literal["ok", "failed"]
# The back-off's cap applies long before this many doublings; doubling on through a long outage would
# overflow a float.
_MAX_DOUBLINGS = 30


class JwksObserver(Protocol):
    """Told of every fetch of the key set, for metrics (the source writes its own log lines)."""

    def jwks_refreshed(self, outcome: RefreshOutcome) -> None: ...


class JwksSource:
    """The signing keys, fetched again after `ttl_s`, and on an unknown `kid` at most every `min_refresh_s`
    (identity-service rotates keys; a forged kid must not make us hammer it).

    identity-service being away must not log everyone out: when a fetch fails, the keys we have keep
    verifying for `max_stale_s` past their TTL (its tokens from before stay good; it issues none meanwhile).
    One fetch runs at a time and every caller that needs it shares it; a caller that already holds a usable
    key does not wait for it at all. After a failure the next fetch waits a back-off doubling from
    `backoff_initial_s` up to `backoff_max_s`, so a dead or hanging identity-service costs one
    `fetch_timeout_s` per back-off, not one per token."""

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = 300.0,
        min_refresh_s: float = 10.0,
        max_stale_s: float = 3600.0,
        fetch_timeout_s: float = 5.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        observer: JwksObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._ttl_s = ttl_s
        self._min_refresh_s = min_refresh_s
        self._max_stale_s = max_stale_s
        self._fetch_timeout_s = fetch_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._observer = observer
        self._clock = clock
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None  # when identity-service last answered with a key set
        self._failures = 0  # fetches failed in a row since then
        self._last_failure = "no fetch has finished yet"
        self._next_fetch_at = float("-inf")  # the end of the back-off after a failure
        self._fetching: asyncio.Task[None] | None = None

    async def key_for(self, kid: str | None) -> PyJWK:
        """The key of a token's `kid`. AuthenticationFailed when identity-service's current key set has no
        such key; Unavailable when we could not ask it and the keys we hold do not answer (then a retry may
        succeed, where a rejection would wrongly send the caller back to log in)."""
        if self._expired() and self._may_fetch():
            fetch = self._fetch_once()
            if self._usable_key(kid) is None:
                await asyncio.shield(fetch)  # shared: one caller cancelled must not cancel it for all
        key = self._usable_key(kid)
        if key is None and self._may_look_for_new_keys():
            await asyncio.shield(self._fetch_once())
            key = self._usable_key(kid)
        if key is not None:
            return key
        if self._failures == 0 and self._fetched_at is not None:
            raise AuthenticationFailed("token signed with an unknown key")
        raise Unavailable("identity", self._why_no_key(kid))

    def still_has(self, key: PyJWK) -> bool:
        """Is this key in the key set as last fetched (a withdrawn one is not), and may that set still
        serve?"""
        return self._usable() and any(known is key for known in self._keys.values())

    def keys_age_s(self) -> float | None:
        """Seconds since identity-service last answered with the key set; None before it ever has."""
        return None if self._fetched_at is None else self._clock() - self._fetched_at

    def _expired(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at > self._ttl_s

    def _usable(self) -> bool:
        return (
            self._fetched_at is not None
            and self._clock() - self._fetched_at <= self._ttl_s + self._max_stale_s
        )

    def _may_fetch(self) -> bool:
        return self._clock() >= self._next_fetch_at

    def _may_look_for_new_keys(self) -> bool:
        """An unknown kid may mean a rotation: look again, unless we looked a moment ago or are backing
        off."""
        if not self._may_fetch():
            return False
        if self._fetched_at is None or self._failures:
            return True
        return self._clock() - self._fetched_at > self._min_refresh_s

    def _usable_key(self, kid: str | None) -> PyJWK | None:
        if not self._usable():
            return None
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _why_no_key(self, kid: str | None) -> str:
        retry_in_s = max(0.0, self._next_fetch_at - self._clock())
        cause = f"the JWKS could not be read ({self._last_failure}); next try in {retry_in_s:.1f} s"
        age_s = self.keys_age_s()
        if age_s is None:
            return f"no signing keys yet: {cause}"
        if not self._usable():
            allowed_s = self._ttl_s + self._max_stale_s
            return f"the signing keys are {age_s:.0f} s old, past the {allowed_s:g} s allowed, and {cause}"
        return f"key {kid!r} is not among the keys fetched {age_s:.0f} s ago, and {cause}"

    def _fetch_once(self) -> asyncio.Task[None]:
        """The fetch under way, or a new one: callers at the same moment share it (a burst costs one)."""
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.create_task(self._fetch(), name="jwks-fetch")
        return self._fetching

    async def _fetch(self) -> None:
        """Its outcome is recorded, never raised: every caller sharing the fetch reads the same state."""
        try:
            async with asyncio.timeout(self._fetch_timeout_s):
                document = await self._load()
            keys = signing_keys_of(document)
        except TimeoutError:
            self._fetch_failed(f"no answer within {self._fetch_timeout_s:g} s")
        except Exception as exc:  # whatever went wrong, there is no new key set; the one we have may serve
            self._fetch_failed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        else:
            self._fetched(keys)

    def _fetched(self, keys: dict[str, PyJWK]) -> None:
        failures = self._failures
        self._keys = keys
        self._fetched_at = self._clock()
        self._failures = 0
        self._next_fetch_at = float("-inf")
        if self._observer is not None:
            self._observer.jwks_refreshed("ok")
        if failures:
            log.info(
                "JWKS readable again after %d failed fetches; %d signing keys",
                failures,
                len(keys),
                extra={"jwks_failed_fetches": failures, "jwks_keys": len(keys)},
            )

    def _fetch_failed(self, why: str) -> None:
        self._failures += 1
        backoff_s = min(
            self._backoff_max_s, self._backoff_initial_s * 2.0 ** min(self._failures - 1, _MAX_DOUBLINGS)
        )
        self._next_fetch_at = self._clock() + backoff_s
        self._last_failure = why
        if self._observer is not None:
            self._observer.jwks_refreshed("failed")
        age_s = self.keys_age_s()
        extra = {"jwks_failed_fetches": self._failures, "jwks_keys_age_s": age_s}
        if age_s is not None and self._usable():
            log.warning(
                "JWKS refresh failed (%s); serving with keys %.0f s old, for up to %.0f s more; "
                "next try in %.1f s",
                why,
                age_s,
                self._ttl_s + self._max_stale_s - age_s,
                backoff_s,
                extra=extra,
            )
        else:
            log.warning(
                "JWKS refresh failed (%s); no usable signing keys, tokens are answered unavailable; "
                "next try in %.1f s",
                why,
                backoff_s,
                extra=extra,
            )

    async def _load(self) -> object:
        parsed = urlparse(self._url)
        if parsed.scheme == "file":
            text = await asyncio.to_thread(Path(unquote(parsed.path)).read_text)
            loaded: object = json.loads(text)
            return loaded
        if parsed.scheme in ("http", "https"):
            async with aiohttp.ClientSession() as session, session.get(self._url) as response:
                response.raise_for_status()
                fetched: object = await response.json(content_type=None)
                return fetched
        raise ValueError(f"unsupported JWKS URL scheme: {parsed.scheme!r}")


def signing_keys_of(document: object) -> dict[str, PyJWK]:
    """The keys of a JWKS document we can use, by kid. An answer that is no JWKS at all (a proxy's error
    page, say) is an error, so that it cannot wipe out the keys we hold."""
    entries = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(entries, list):
        raise ValueError("the answer is not a JWKS (no `keys` list)")
    keys: dict[str, PyJWK] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        try:
            key = PyJWK.from_dict(entry)
        except jwt.PyJWTError:
            continue  # a key type we do not use; the others still count
        keys[str(entry.get("kid", index))] = key
    return keys


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
        # identity-service's keys could not be read: `key_for` says Unavailable (a retry may succeed).
        key = await self._keys.key_for(header.get("kid"))
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
