"""A stand-in identity-service for `careplan dev` and the tests: an ES256 key pair, its JWKS, and tokens."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from domain.access import MODULE_ENTITLEMENT


@dataclass(frozen=True, slots=True)
class DevKeys:
    private_key_pem: bytes
    kid: str
    jwks_path: Path

    @property
    def jwks_url(self) -> str:
        return self.jwks_path.resolve().as_uri()

    def mint(
        self,
        *,
        tenant_id: str,
        roles: list[str],
        entitlements: list[str] | None = None,
        subject: str = "dev-user",
        patient_id: str | None = None,
        audience: str | None = "care-plan-service",
        issuer: str | None = None,
        ttl_s: int = 3600,
        extra: dict[str, Any] | None = None,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": subject,
            "tenant_id": tenant_id,
            "roles": roles,
            "entitlements": [MODULE_ENTITLEMENT] if entitlements is None else entitlements,
            "iat": now,
            "exp": now + ttl_s,
            "jti": str(uuid.uuid4()),
        }
        if audience:
            claims["aud"] = audience
        if issuer:
            claims["iss"] = issuer
        if patient_id:
            claims["patient_id"] = patient_id
        claims |= extra or {}
        return jwt.encode(claims, self.private_key_pem, algorithm="ES256", headers={"kid": self.kid})


def ensure_dev_keys(directory: Path) -> DevKeys:
    """Load the key pair kept in `directory`, creating it (and its JWKS) on first use."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path, jwks_path = directory / "signing-key.pem", directory / "jwks.json"
    if not key_path.exists() or not jwks_path.exists():
        write_new_keys(directory)
    kid = json.loads(jwks_path.read_text())["keys"][0]["kid"]
    return DevKeys(key_path.read_bytes(), kid, jwks_path)


def write_new_keys(directory: Path) -> DevKeys:
    directory.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    kid = uuid.uuid4().hex[:16]
    jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    jwk |= {"kid": kid, "use": "sig", "alg": "ES256"}
    key_path = directory / "signing-key.pem"
    key_path.write_bytes(pem)
    key_path.chmod(0o600)
    jwks_path = directory / "jwks.json"
    jwks_path.write_text(json.dumps({"keys": [jwk]}, indent=2))
    return DevKeys(pem, kid, jwks_path)
