"""Tenant isolation over real HTTP and gRPC: one tenant cannot see, rate or spend as another.

Two tenants (acme, globex), each with an API key and an HMAC key; acme is restricted by policy to
sim-fast. Every request below names the *other* tenant wherever the wire lets a client name one.
"""
import asyncio
import dataclasses
import hashlib
import os
import time

import aiohttp
import grpc
import orjson
import pytest

from atp_client.grpc_client import request_message, sign_metadata
from atp_server import config as atp_config
from atp_server.auth import SIG_KEY_ID, SIG_NONCE, SIG_SIGNATURE, SIG_TIMESTAMP, sign_request
from codec.errors import ErrorCode
from proto.atp.v1 import atp_pb2 as pb, atp_pb2_grpc
from tests.transport.conftest import ServerHarness

ACME_KEY, GLOBEX_KEY = "sk-acme-isolation-test", "sk-globex-isolation-test"
ACME_HMAC, GLOBEX_HMAC = (11, b"acme-hmac-secret-0123456789"), (12, b"globex-hmac-secret-012345")
SCRAPE = "scrape-token-for-tests-0123"
CHAT = "/v1/chat/completions"

POLICY = """
[[rules]]
id = "acme-fast-only"
effect = "restrict_models"
models = ["sim-fast"]
when.tenant = ["acme"]
"""


def tenant_toml(policy_file, scrape: str | None) -> str:
    text = ""
    for name, key, (kid, secret) in (("acme", ACME_KEY, ACME_HMAC), ("globex", GLOBEX_KEY, GLOBEX_HMAC)):
        text += f"""
[[tenants]]
name = "{name}"
attributes = {{ region = "eu" }}

[[auth.api_keys]]
name = "{name}-key"
sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"
tenant = "{name}"

[[auth.hmac_keys]]
id = {kid}
secret = "{secret.decode()}"
tenant = "{name}"
"""
    text += f'\n[policy]\nfiles = ["{policy_file}"]\n'
    if scrape:
        text += f'\n[metrics]\nscrape_token = "{scrape}"\n'
    return text


def start(tmp_path, scrape: str | None = SCRAPE) -> ServerHarness:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    cfg = atp_config.loads(atp_config.DEFAULT_TOML + tenant_toml(policy, scrape))
    cfg = dataclasses.replace(cfg, server=dataclasses.replace(
        cfg.server, http_port=0, grpc_port=0, quic_port=0, state_dir=str(tmp_path)))
    return ServerHarness(cfg, str(tmp_path / "audit.sqlite")).start(quic=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    h = start(tmp_path_factory.mktemp("isolation"))
    yield h
    h.stop()
    h.close()


def http(h, method: str, path: str, *, headers=None, body: bytes = b""):
    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.request(method, f"http://127.0.0.1:{h.ports.http}{path}", data=body or None,
                                 headers=headers or {}) as r:
                return r.status, await r.read()
    return asyncio.run(asyncio.wait_for(go(), 30))


def chat_body(request_id: str, **extra) -> bytes:
    return orjson.dumps({"messages": [{"role": "user", "content": "hi"}], "model": "auto",
                         "atp": {"tenant": "globex"}, **extra})


def signed(key: str, hmac_key, body: bytes) -> dict:
    kid, secret = hmac_key
    ts, nonce = int(time.time() * 1000), os.urandom(8).hex()
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json",
            SIG_KEY_ID: str(kid), SIG_TIMESTAMP: str(ts), SIG_NONCE: nonce,
            SIG_SIGNATURE: sign_request(secret, "POST", CHAT, ts, nonce, body)}


def stub(h):
    channel = grpc.insecure_channel(h.grpc_target)
    return channel, atp_pb2_grpc.AtpStub(channel)


def auth(key: str) -> tuple:
    return (("authorization", f"Bearer {key}"),)


def rpc_code(exc: grpc.RpcError) -> int:
    return int(dict(exc.trailing_metadata())["atp-error-code"])


# ---- signatures are bound to the API key's tenant -------------------------------------------------

def test_http_signature_with_another_tenants_hmac_key_is_forbidden(server):
    body = chat_body("sig-1")
    status, raw = http(server, "POST", CHAT, headers=signed(ACME_KEY, GLOBEX_HMAC, body), body=body)
    assert status == 403 and orjson.loads(raw)["error"]["code"] == "FORBIDDEN"
    status, _ = http(server, "POST", CHAT, headers=signed(ACME_KEY, ACME_HMAC, body), body=body)
    assert status == 200


def test_grpc_signature_with_another_tenants_hmac_key_is_forbidden(server):
    channel, s = stub(server)
    with channel:
        m = request_message("hi", tenant="globex")
        path = "/atp.v1.Atp/Complete"
        bad = auth(ACME_KEY) + sign_metadata(*GLOBEX_HMAC, path, m.SerializeToString())
        with pytest.raises(grpc.RpcError) as info:
            s.Complete(m, metadata=bad)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert rpc_code(info.value) == ErrorCode.FORBIDDEN
        good = auth(ACME_KEY) + sign_metadata(*ACME_HMAC, path, m.SerializeToString())
        assert s.Complete(m, metadata=good).text


# ---- spend, feedback and listings follow the credentials ------------------------------------------

def test_spend_is_the_credentials_tenants_over_http_and_grpc(server):
    acct = server.app.accountant
    before_acme = acct.by_tenant["acme"].requests
    status, raw = http(server, "POST", CHAT, headers={"Authorization": f"Bearer {ACME_KEY}"},
                       body=chat_body("spend-1"))
    assert status == 200
    channel, s = stub(server)
    with channel:
        s.Complete(request_message("hi", tenant="globex", request_id="spend-2"), metadata=auth(ACME_KEY))
    assert acct.by_tenant["acme"].requests == before_acme + 2
    assert acct.by_tenant.get("globex") is None or acct.by_tenant["globex"].requests == 0


def test_feedback_is_stored_under_the_callers_tenant(server):
    channel, s = stub(server)
    with channel:
        ack = s.Feedback(pb.FeedbackRequest(request_id="fb-1", score=0.9, tenant="globex"),
                         metadata=auth(ACME_KEY))
        assert ack.accepted
        # globex rating its own fb-1 is a different entry: acme's rating did not take its slot
        assert s.Feedback(pb.FeedbackRequest(request_id="fb-1", score=0.1),
                          metadata=auth(GLOBEX_KEY)).accepted
    entries = {(e["tenant"], e["request_id"]): e for e in server.app.feedback}
    assert entries[("acme", "fb-1")]["score"] == 0.9
    assert entries[("globex", "fb-1")]["score"] == 0.1


def test_model_listings_are_the_callers_tenants(server):
    channel, s = stub(server)
    with channel:
        acme = s.ListModels(pb.ListModelsRequest(tenant="globex"), metadata=auth(ACME_KEY))
        globex = s.ListModels(pb.ListModelsRequest(tenant="acme"), metadata=auth(GLOBEX_KEY))
    assert [m.id for m in acme.models] == ["sim-fast"]
    assert "sim-high" in {m.id for m in globex.models}
    status, raw = http(server, "GET", "/v1/models", headers={"Authorization": f"Bearer {ACME_KEY}"})
    assert status == 200 and [m["id"] for m in orjson.loads(raw)["data"]] == ["sim-fast"]


def test_a_restricted_tenant_cannot_spend_on_another_model(server):
    body = chat_body("pin-1", model="sim-high")
    status, raw = http(server, "POST", CHAT, headers={"Authorization": f"Bearer {ACME_KEY}"}, body=body)
    assert status == 403 and orjson.loads(raw)["error"]["code"] == "POLICY_DENIED"
    channel, s = stub(server)
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            s.Complete(request_message("hi", model="sim-high"), metadata=auth(ACME_KEY))
        assert rpc_code(info.value) == ErrorCode.POLICY_DENIED
        routed = s.Complete(request_message("hi", tier="high"), metadata=auth(ACME_KEY))
        assert routed.route.model == "sim-fast"        # routing kept within the restriction


# ---- /metrics ---------------------------------------------------------------------------------------

def test_metrics_need_the_scrape_token_and_then_show_spend_per_tenant(server):
    status, raw = http(server, "GET", "/metrics")
    assert status == 401 and orjson.loads(raw)["error"]["code"] == "UNAUTHENTICATED"
    assert http(server, "GET", "/metrics", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert http(server, "GET", "/metrics", headers={"Authorization": f"Bearer {ACME_KEY}"})[0] == 401
    http(server, "POST", CHAT, headers={"Authorization": f"Bearer {ACME_KEY}"}, body=chat_body("m-1"))
    status, text = http(server, "GET", "/metrics", headers={"Authorization": f"Bearer {SCRAPE}"})
    assert status == 200 and b'atp_cost_usd_micros_total{tenant="acme"}' in text


def test_an_open_metrics_endpoint_shows_no_spend_per_tenant(tmp_path):
    h = start(tmp_path, scrape=None)
    try:
        status, _ = http(h, "POST", CHAT, headers={"Authorization": f"Bearer {ACME_KEY}"},
                         body=chat_body("open-1"))
        assert status == 200
        status, text = http(h, "GET", "/metrics")
        assert status == 200
        assert b"atp_cost_usd_micros_total " in text and b'tenant="' not in text
    finally:
        h.stop()
        h.close()


def test_frame_sessions_act_as_the_hmac_keys_tenant_and_get_policy_denied(server):
    from atp_client import AtpClientError, SessionClient
    before = server.app.accountant.by_tenant["acme"].requests
    with SessionClient(server.grpc_target, *ACME_HMAC) as s:
        with pytest.raises(AtpClientError) as info:
            s.complete("hi", model="sim-high")                 # outside acme's restriction
        assert info.value.code == ErrorCode.POLICY_DENIED
        assert s.complete("hi", tenant="globex", max_tokens=2).output_tokens == 2
    assert server.app.accountant.by_tenant["acme"].requests == before + 1
