"""JWT bearer verification (OIDC style) against a JWKS file, issuer and audience (PyJWT)."""
import json
from dataclasses import dataclass

import jwt

from codec.errors import ErrorCode

from .tenants import JwtConfig, KeyStoreError
from .types import AtpError


@dataclass(frozen=True, slots=True)
class JwtVerifier:
    config: JwtConfig
    keys: dict          # kid -> PyJWK

    @classmethod
    def load(cls, cfg: JwtConfig) -> "JwtVerifier":
        """Read the JWKS file; KeyStoreError naming it when it cannot serve (reload keeps the old)."""
        try:
            with open(cfg.jwks_file, "rb") as f:
                jwks = jwt.PyJWKSet.from_dict(json.load(f))
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise KeyStoreError(f"auth.jwt.jwks_file: {cfg.jwks_file}: {exc}") from None
        keys = {k.key_id: k for k in jwks.keys if k.key_id}
        if not keys:
            raise KeyStoreError(f"auth.jwt.jwks_file: {cfg.jwks_file}: no key with a kid")
        return cls(cfg, keys)


def _refuse(why: str) -> AtpError:
    return AtpError(ErrorCode.UNAUTHENTICATED, f"invalid bearer token: {why}")


def verify_jwt(v: JwtVerifier, token: str, tenants: frozenset | None) -> dict:
    """Signature, exp/nbf/iat, iss, aud; the tenant claim must name a configured tenant (labels
    and accounting never take a name an identity provider invents). Returns the mapped claims."""
    cfg = v.config
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise _refuse(str(exc)) from None
    key = v.keys.get(header.get("kid"))
    if key is None:
        raise _refuse("unknown kid")
    try:
        claims = jwt.decode(token, key.key, algorithms=list(cfg.algorithms), audience=cfg.audience,
                            issuer=cfg.issuer, leeway=cfg.leeway_s,
                            options={"require": ["exp", "iss", "aud"]})
    except jwt.PyJWTError as exc:
        raise _refuse(str(exc)) from None
    tenant, user = claims.get(cfg.tenant_claim), claims.get(cfg.user_claim)
    if not isinstance(tenant, str) or tenants is None or tenant not in tenants:
        raise _refuse(f"claim {cfg.tenant_claim!r} names no configured tenant")
    if not isinstance(user, str) or not user:
        raise _refuse(f"claim {cfg.user_claim!r} is missing")
    groups = claims.get(cfg.groups_claim, [])
    if isinstance(groups, str):
        groups = groups.split()
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise _refuse(f"claim {cfg.groups_claim!r} must be a list of strings")
    attributes = {c: str(claims[c]) for c in cfg.attribute_claims if c in claims}
    return {"tenant": tenant, "user": user, "groups": tuple(groups), "attributes": attributes,
            "kid": header["kid"], "exp": float(claims["exp"])}
