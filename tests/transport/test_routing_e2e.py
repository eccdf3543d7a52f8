"""Routing over real transports: aliases over HTTP and gRPC, reasons on the Route RPC and in
x-atp-* headers, objectives in gRPC metadata, feedback teaching the router, posteriors kept
across an App restart."""
import asyncio

import aiohttp
import pytest

from atp_client import AsyncGrpcClient
from atp_server import config as atp_config
from atp_server.app import App
from atp_server.routing.bandit import FILE as POSTERIORS

KEY = atp_config.DEV_API_KEY
AUTH = {"Authorization": f"Bearer {KEY}"}
ALIASES = """
[routing]
bandit = "greedy"

[[aliases]]
name = "smart"
models = ["sim-high", "sim-balanced"]
max_attempts = 2

[[aliases]]
name = "good-enough"
mode = "routed"
models = ["sim-fast", "sim-balanced", "sim-high"]
min_quality = 0.7
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from .conftest import ServerHarness, server_config
    d = tmp_path_factory.mktemp("routing")
    h = ServerHarness(server_config(d, ALIASES), str(d / "audit.sqlite")).start(quic=False)
    yield h
    h.close()


def post(h, body):
    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{h.ports.http}/v1/chat/completions", json=body,
                              headers=AUTH) as r:
                return r.status, r.headers, await r.json()
    return asyncio.run(go())


@pytest.mark.parametrize("stream", [False, True])
def test_alias_over_http_with_reasons_in_headers(server, stream):
    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{server.ports.http}/v1/chat/completions",
                              json={"model": "smart", "stream": stream,
                                    "messages": [{"role": "user", "content": "hi"}]},
                              headers=AUTH) as r:
                await r.read()
                return r.status, r.headers
    status, headers = asyncio.run(go())
    assert status == 200 and headers["x-atp-model"] == "sim-high"
    assert headers["x-atp-route-reasons"].startswith("alias smart (ordered: sim-high, sim-balanced)")
    assert headers["x-atp-confidence"] == "0.920"          # sim-high's prior, nothing learnt yet


def test_routed_alias_over_http_takes_the_cheapest_good_enough(server):
    status, _, body = post(server, {"model": "good-enough",
                                    "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and body["model"] == "sim-balanced"
    assert any("cheapest with quality >= 0.7" in r for r in body["atp"]["route_reasons"])


def test_unknown_alias_lists_aliases_too(server):
    status, _, body = post(server, {"model": "smartest", "messages": [{"role": "user", "content": "x"}]})
    assert status == 404 and "good-enough" in body["error"]["message"]


def test_aliases_and_objectives_over_grpc(server):
    async def go():
        async with AsyncGrpcClient(server.grpc_target, KEY) as c:
            return (await c.route("hi", model="smart"),
                    await c.complete("hi", model="good-enough"),
                    await c.route("hi", metadata={"min_quality": "0.9"}),
                    await c.route("hi", metadata={"cost_weight": "0"}, tier="high"),
                    await c.route("hi", metadata={"cost_weight": "0"}, tier="fast"))
    smart, good, strict, any_price, quick = asyncio.run(go())
    assert smart["model"] == "sim-high" and smart["fallbacks"] == ["sim-balanced"]
    assert smart["reasons"][0].startswith("alias smart")
    assert good.model == "sim-balanced"
    assert strict["model"] == "sim-high" and any("quality >= 0.9" in r for r in strict["reasons"])
    assert any_price["model"] == "sim-high"          # price no object, latency ignored (high)
    assert any("cost_weight 0" in r for r in any_price["reasons"])
    assert quick["model"] == "sim-fast"              # the fast tier's latency weight still counts


def test_route_rpc_reasons_explain_the_choice(server):
    async def go():
        async with AsyncGrpcClient(server.grpc_target, KEY) as c:
            return await c.route("hello", tier="high", capabilities=["vision"])
    d = asyncio.run(go())
    assert d["model"] == "sim-high" and 0 < d["confidence"] < 1
    assert d["reasons"][0].startswith("sim-high: predicted quality 0.920")
    assert "objective tier high" in d["reasons"][1]
    assert "sim-fast (lacks vision)" in d["reasons"][-1]


def test_feedback_over_grpc_teaches_the_router(server):
    router = server.app.router
    before = router.feedback_applied

    async def go():
        async with AsyncGrpcClient(server.grpc_target, KEY) as c:
            r = await c.complete("rate me", model="smart", request_id="fb-e2e-1")
            # the tenant field is the client's claim: ignored, the key's tenant counts
            return r, await c.feedback("fb-e2e-1", 0.0, tenant="someone-else")
    result, accepted = asyncio.run(go())
    assert accepted and result.model == "sim-high"
    assert router.feedback_applied == before + 1
    t = router.table
    assert t.stats.fail[t.index["sim-high"]] >= 1.0


def test_posteriors_survive_an_app_restart(tmp_path):
    text = atp_config.DEFAULT_TOML.replace('host = "127.0.0.1"', f'host = "127.0.0.1"\nstate_dir = "{tmp_path}"')
    cfg = atp_config.loads(text)

    async def life(learn: bool):
        app = App(cfg, audit_path=str(tmp_path / "audit.sqlite"))
        await app.start(http=False, grpc=False, quic=False)
        t = app.router.table
        if learn:
            t.stats.succ[t.index["sim-fast"]] = 7.0
            t.stats.fail[t.index["sim-fast"]] = 3.0
        seen = float(t.stats.succ[t.index["sim-fast"]]), float(t.stats.fail[t.index["sim-fast"]])
        await app.stop(0)
        return seen
    assert asyncio.run(life(True)) == (7.0, 3.0)
    assert (tmp_path / POSTERIORS).exists()
    assert asyncio.run(life(False)) == (7.0, 3.0)
