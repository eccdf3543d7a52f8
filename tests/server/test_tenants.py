"""Tenants in config ([[tenants]]: attributes, users and groups) and JWT bearer verification."""
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from atp_server import config
from atp_server.auth import Authenticator
from atp_server.tenants import KeyStoreError, Tenant, parse_jwt
from atp_server.types import AtpError
from codec.errors import ErrorCode
from tests.test_config import MINIMAL



def test_tenants_parse_with_attributes_and_users():
    cfg = config.loads(MINIMAL + """
[[tenants]]
name = "acme"
attributes = { region = "eu", data_classification = "confidential" }
users = { alice = ["admins", "ml"], bob = [] }
""")
    (t,) = cfg.tenants
    assert t.name == "acme" and t.attributes["region"] == "eu"
    assert t.users == {"alice": frozenset({"admins", "ml"}), "bob": frozenset()}


@pytest.mark.parametrize("toml,key", [
    ('[[tenants]]\nattributes = {}\n', "tenants[0].name"),
    ('[[tenants]]\nname = "a"\n[[tenants]]\nname = "a"\n', "tenants[1].name"),
    ('[[tenants]]\nname = "a"\nattributes = { x = 1 }\n', "tenants[0].attributes"),
    ('[[tenants]]\nname = "a"\nusers = { u = "admins" }\n', "tenants[0].users.u"),
    ('[[tenants]]\nname = "a"\ncolour = "red"\n', "tenants[0].colour"),
    ('[auth.jwt]\nissuer = "i"\naudience = "a"\n', "auth.jwt.jwks_file"),
    ('[auth.jwt]\njwks_file = "f"\nissuer = "i"\naudience = "a"\nalgorithms = ["none"]\n',
     "auth.jwt.algorithms"),
    ('[metrics]\nscrape_token = "short"\n', "metrics.scrape_token"),
    ('[[tenants]]\nname = "a"\n[[auth.api_keys]]\nname = "k"\nsha256 = "' + "0" * 64
     + '"\ntenant = "b"\n', "auth.api_keys[0].tenant"),
    ('[policy]\nfiles = ["/nonexistent/policy.toml"]\n', "policy.files"),
])
def test_bad_tenant_jwt_metrics_and_policy_settings_name_the_key(toml, key):
    with pytest.raises(config.ConfigError) as info:
        from atp_server.app import App     # policy files are read when the App is built
        App(config.loads(toml + MINIMAL))
    assert str(info.value).startswith(key), str(info.value)


# ---- JWT ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def signing_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def jwt_auth(tmp_path, signing_key):
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing_key.public_key()))
    jwk.update(kid="k1", alg="RS256", use="sig")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    jc = parse_jwt("auth.jwt", {"jwks_file": str(jwks), "issuer": "https://idp.example",
                                "audience": "atp", "attribute_claims": ["dept"]})
    tenants = (Tenant("acme", {"region": "eu"}, {"alice": frozenset({"staff"})}),)
    return Authenticator(config.AuthConfig(jwt=jc), tenants=tenants), jwks


def token(key, **claims):
    body = {"iss": "https://idp.example", "aud": "atp", "sub": "alice", "tenant": "acme",
            "groups": ["ml"], "dept": "research", "exp": int(time.time()) + 300, **claims}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1"})


def test_a_valid_jwt_maps_claims_to_tenant_groups_and_attributes(jwt_auth, signing_key):
    auth, _ = jwt_auth
    p = auth.api_key(f"Bearer {token(signing_key)}")
    assert (p.tenant, p.user, p.method, p.name) == ("acme", "alice", "jwt", "jwt:alice")
    assert p.groups == {"ml", "staff"}
    assert p.attributes == {"region": "eu", "dept": "research"}


@pytest.mark.parametrize("claims,why", [
    ({"iss": "https://evil.example"}, "issuer"),
    ({"aud": "other"}, "audience"),
    ({"exp": int(time.time()) - 3600}, "expired"),
    ({"tenant": "globex"}, "no configured tenant"),
    ({"tenant": None}, "no configured tenant"),
])
def test_a_jwt_with_a_wrong_claim_is_unauthenticated(jwt_auth, signing_key, claims, why):
    auth, _ = jwt_auth
    with pytest.raises(AtpError) as info:
        auth.api_key(f"Bearer {token(signing_key, **claims)}")
    assert info.value.code == ErrorCode.UNAUTHENTICATED and why in info.value.message.lower()


def test_a_jwt_signed_by_another_key_is_refused(jwt_auth):
    auth, _ = jwt_auth
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(AtpError) as info:
        auth.api_key(f"Bearer {token(stranger)}")
    assert "signature" in info.value.message.lower()


def test_a_broken_jwks_file_is_refused_by_reload_and_the_old_keys_stay(jwt_auth, signing_key):
    auth, jwks = jwt_auth
    jwks.write_text("{}")
    with pytest.raises(KeyStoreError, match="auth.jwt.jwks_file"):
        auth.prepare_reload()
    assert auth.api_key(f"Bearer {token(signing_key)}").tenant == "acme"


def test_a_jwt_authenticates_over_http_end_to_end(tmp_path, signing_key, jwt_auth):
    import asyncio
    import dataclasses

    import aiohttp

    from tests.transport.conftest import ServerHarness
    _, jwks = jwt_auth
    cfg = config.loads(config.DEFAULT_TOML + f"""
[[tenants]]
name = "acme"
[auth.jwt]
jwks_file = "{jwks}"
issuer = "https://idp.example"
audience = "atp"
""")
    cfg = dataclasses.replace(cfg, server=dataclasses.replace(
        cfg.server, http_port=0, grpc_port=0, quic_port=0, state_dir=str(tmp_path)))
    h = ServerHarness(cfg, str(tmp_path / "audit.sqlite")).start(grpc=False, quic=False)

    async def chat(bearer: str) -> int:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{h.ports.http}/v1/chat/completions",
                              json={"messages": [{"role": "user", "content": "hi"}],
                                    "atp": {"tenant": "default"}},
                              headers={"Authorization": f"Bearer {bearer}"}) as r:
                await r.read()
                return r.status
    try:
        assert asyncio.run(chat(token(signing_key))) == 200
        assert asyncio.run(chat(token(signing_key, aud="other"))) == 401
        assert h.app.accountant.by_tenant["acme"].requests == 1
        assert "default" not in h.app.accountant.by_tenant
    finally:
        h.stop()
        h.close()
