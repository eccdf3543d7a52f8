"""Every refusal at the door is counted in /metrics (atp_refusals_total{transport, reason}): 401,
bad JSON and bad fields, 404/405, 413, policy denials and limits, over HTTP, gRPC and QUIC."""
import asyncio
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from atp_client import AsyncGrpcClient, AsyncQuicClient, AtpClientError
from atp_server.config import DEV_API_KEY, DEV_HMAC_KEY_ID, DEV_HMAC_SECRET
from atp_server.metrics import REFUSAL_REASONS
from codec.errors import ErrorCode

AUTH = {"Authorization": f"Bearer {DEV_API_KEY}"}
HELLO = [{"role": "user", "content": "hi"}]
# sim-high is denied by policy; sim-balanced has a budget no request fits in.
POLICY = '[[rules]]\nid = "no-high"\neffect = "deny"\nwhen.model = ["sim-high"]\n'
EXTRA = """
[[limits]]
name = "broke"
scope = "model"
match = "sim-balanced"
usd_per_day = 0.000001
[policy]
files = ["{policy}"]
"""


@pytest.fixture
def server(start_server, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    return start_server(extra_toml=EXTRA.format(policy=policy))


def refusals(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "atp_refusals":
            for s in fam.samples:
                if s.name == "atp_refusals_total":
                    out[(s.labels["transport"], s.labels["reason"])] = s.value
    return out


async def http_refusals(port: int) -> dict:
    base = f"http://127.0.0.1:{port}"
    chat = base + "/v1/chat/completions"
    async with aiohttp.ClientSession() as s:
        async def status(method, url, **kw):
            async with s.request(method, url, **kw) as r:
                await r.read()
                return r.status
        assert await status("POST", chat, json={"model": "sim-fast", "messages": HELLO}) == 401
        assert await status("POST", chat, headers={"Authorization": "Bearer nope"}, json={}) == 401
        assert await status("GET", base + "/v1/models", headers={"Authorization": "Basic x"}) == 401
        assert await status("POST", chat, headers=AUTH, data=b"{not json") == 400
        assert await status("POST", chat, headers=AUTH, json={"messages": "no"}) == 400
        assert await status("GET", base + "/no/such/path") == 404
        assert await status("GET", chat) == 405
        assert await status("POST", chat, headers=AUTH, json={"model": "sim-high",
                                                              "messages": HELLO}) == 403
        assert await status("POST", chat, headers=AUTH, json={"model": "sim-balanced",
                                                              "messages": HELLO}) == 402
        assert await status("POST", base + "/v1/messages", headers={"x-api-key": "bad"},
                            json={}) == 401
        assert await status("POST", chat, headers=AUTH, data=b" " * (4 * 1024 * 1024 + 1)) == 413
        assert await status("POST", chat, headers=AUTH, json={"model": "sim-fast",
                                                              "messages": HELLO}) == 200
        async with s.get(base + "/metrics") as r:
            return refusals(await r.text())


def test_http_refusals_are_counted_by_reason(server):
    got = asyncio.run(http_refusals(server.ports.http))
    assert got[("http", "auth")] == 4
    assert got[("http", "parse")] == 2
    assert got[("http", "not_found")] == 1
    assert got[("http", "method_not_allowed")] == 1
    assert got[("http", "policy")] == 1
    assert got[("http", "limits")] == 1
    assert got[("http", "too_large")] == 1
    assert {reason for _, reason in got} <= set(REFUSAL_REASONS)


def test_client_made_paths_never_add_series(server):
    async def go():
        async with aiohttp.ClientSession() as s:
            for i in range(50):
                async with s.get(f"http://127.0.0.1:{server.ports.http}/made-up-{i}") as r:
                    assert r.status == 404
            async with s.get(f"http://127.0.0.1:{server.ports.http}/metrics") as r:
                return refusals(await r.text())
    got = asyncio.run(go())
    assert got == {("http", "not_found"): 50}


def test_grpc_refusals_are_counted_by_reason(server):
    async def go():
        codes = []
        for key, model in ((DEV_API_KEY, "sim-high"), (DEV_API_KEY, "sim-balanced"),
                           ("wrong-key", "sim-fast")):
            async with AsyncGrpcClient(server.grpc_target, api_key=key) as c:
                with pytest.raises(AtpClientError) as err:
                    await c.complete("hi", model=model)
                codes.append(err.value.code)
        return codes
    assert asyncio.run(asyncio.wait_for(go(), 30)) == [
        ErrorCode.POLICY_DENIED, ErrorCode.BUDGET_EXCEEDED, ErrorCode.UNAUTHENTICATED]
    got = refusals(server.app.service.render_metrics().decode())
    assert got[("grpc", "policy")] == 1 and got[("grpc", "limits")] == 1
    assert got[("grpc", "auth")] == 1


def test_quic_refusals_are_counted_by_reason(server):
    cert = Path(server.app.config.server.state_dir) / "quic-cert.pem"

    async def go():
        codes = []
        async with AsyncQuicClient("127.0.0.1", server.ports.quic, DEV_HMAC_KEY_ID,
                                   DEV_HMAC_SECRET, ca_file=str(cert)) as c:
            for model in ("sim-high", "sim-balanced"):
                with pytest.raises(AtpClientError) as err:
                    await c.complete("hi", model=model)
                codes.append(err.value.code)
        return codes
    assert asyncio.run(asyncio.wait_for(go(), 30)) == [ErrorCode.POLICY_DENIED,
                                                       ErrorCode.BUDGET_EXCEEDED]
    got = refusals(server.app.service.render_metrics().decode())
    assert got[("quic", "policy")] == 1 and got[("quic", "limits")] == 1
