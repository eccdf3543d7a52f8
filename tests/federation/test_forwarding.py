"""Forwarding end to end (docs/FEDERATION.md §8): three routers A–B–C on loopback, a model only C
serves; a client of A gets the answer, whole and streamed, with the path in the route reasons;
the budget is charged at A; loops and the hop limit are refused with NO_ROUTE."""
import asyncio

import aiohttp
import pytest

from atp_client import AsyncGrpcClient, AsyncSessionClient, AtpClientError
from atp_server import config as atp_config
from atp_server.federation.forward import HOPS_KEY, PATH_KEY
from codec.errors import ErrorCode

from .topology import PEER_KEY_ID, PEER_SECRET, Topology

KEY = atp_config.DEV_API_KEY
LINE = {"A": [], "B": [], "C": ["only-c"]}
PATH_REASON = "federation path A>B>C"


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def line(tmp_path, **kw) -> Topology:
    topo = Topology(tmp_path, LINE, links=[("A", "B"), ("B", "C")], **kw)
    await topo.start()
    await topo.wait_best("A", "only-c", path=("B", "C"))
    await topo.until(lambda: "only-c" in topo.apps["A"].router.models)
    return topo


def test_a_client_of_a_gets_an_answer_from_c_whole_and_streamed(tmp_path):
    async def main():
        topo = await line(tmp_path)
        try:
            async with AsyncGrpcClient(topo.grpc("A"), KEY) as client:
                whole = await client.complete("hello federation", model="only-c")
                items = [i async for i in client.stream("hello again", model="only-c")]
                route = await client.route("hello", model="only-c")
            a = topo.apps["A"]
            scrape = a.metrics.render().decode(), len(a.forwarding.remote)
            return whole, items, route, scrape
        finally:
            await topo.stop()
    whole, items, route, (scrape, remote) = run(main())
    # A's /metrics: its one trusted peer up, B's and C's models remote rows reached through it
    assert 'atp_federation_peer_up{peer="B"} 1.0' in scrape
    assert remote >= 1 and f"atp_federation_remote_models {float(remote)}" in scrape
    assert whole.text and whole.model == "only-c" and whole.provider == "federation"
    assert PATH_REASON in whole.extra["route"]["reasons"]
    chunks, result = items[:-1], items[-1]
    assert len(chunks) > 1                       # streamed: chunks, not one block at the end
    assert result.text == "".join(c.text for c in chunks) and result.output_tokens == 8
    assert PATH_REASON in result.extra["final_route"]["reasons"]
    assert PATH_REASON in route["reasons"]       # the Route RPC shows it too


def test_chunks_stream_back_as_they_arrive(tmp_path):
    """C's provider emits a token every 50 ms: A's client sees the first chunk long before the end."""
    slow = {"C": '[[providers]]\nname = "sim"\ntype = "simulated"\noutput_tokens = 10\n'
                 'tokens_per_s = 20\n'}

    async def main():
        topo = await line(tmp_path, provider=slow)
        loop = asyncio.get_running_loop()
        try:
            async with AsyncGrpcClient(topo.grpc("A"), KEY) as client:
                t0, times = loop.time(), []
                async for _ in client.stream("tick", model="only-c"):
                    times.append(loop.time() - t0)
            return times
        finally:
            await topo.stop()
    times = run(main())
    assert len(times) == 11                      # 10 chunks + the result
    assert times[-1] - times[0] > 0.3            # spread over the ~0.5 s the provider takes


def test_http_answer_carries_the_path_and_the_budget_is_charged_at_the_edge(tmp_path):
    async def main():
        topo = await line(tmp_path)
        try:
            url = f"http://127.0.0.1:{topo.apps['A'].ports.http}/v1/chat/completions"
            async with aiohttp.ClientSession() as s:
                async with s.post(url, headers={"Authorization": f"Bearer {KEY}"},
                                  json={"model": "only-c", "messages": [
                                      {"role": "user", "content": "hi"}]}) as r:
                    status, headers, body = r.status, r.headers, await r.json()
            spent = {n: topo.apps[n].accountant.by_tenant for n in "ABC"}
            return status, headers, body, {n: {t: v.cost_usd_micros for t, v in s.items()}
                                           for n, s in spent.items()}
        finally:
            await topo.stop()
    status, headers, body, spent = run(main())
    assert status == 200 and body["choices"][0]["message"]["content"]
    assert PATH_REASON in headers["x-atp-route-reasons"]
    # A bills its own client ("default") at the route's price; B and C bill the forwarding
    # router's credentials (tenant "peers"), not A's client.
    assert spent["A"]["default"] > 0 and "peers" not in spent["A"]
    assert spent["B"]["peers"] > 0 and "default" not in spent["B"]
    assert spent["C"]["peers"] > 0 and "default" not in spent["C"]


BUDGET = """
[[limits]]
name = "tiny"
usd_per_day = 0.0002
"""


def test_the_edge_routers_budget_refuses_forwarded_requests_once_spent(tmp_path):
    async def main():
        topo = await line(tmp_path, extra={"A": BUDGET})
        try:
            async with AsyncGrpcClient(topo.grpc("A"), KEY) as client:
                for _ in range(200):
                    try:
                        await client.complete("spend", model="only-c", max_tokens=8)
                    except AtpClientError as exc:
                        return exc.code, topo.apps["C"].accountant.by_tenant["peers"].requests
            return None, None
        finally:
            await topo.stop()
    code, served_at_c = run(main())
    assert code == ErrorCode.BUDGET_EXCEEDED
    assert 0 < served_at_c < 200                 # A stopped forwarding once its budget was spent


def test_a_forwarded_request_whose_path_holds_the_router_is_refused(tmp_path):
    """B's peer credentials, a request claiming to have crossed B already: B refuses to forward
    it again (a loop) with NO_ROUTE; a request at the hop limit likewise."""
    async def main():
        topo = await line(tmp_path)
        try:
            async with AsyncSessionClient(topo.grpc("B"), PEER_KEY_ID, PEER_SECRET) as client:
                out = []
                for meta in ({HOPS_KEY: "1", PATH_KEY: "B"}, {HOPS_KEY: "8", PATH_KEY: "x1,x2"},
                             {HOPS_KEY: "7", PATH_KEY: "A"}):
                    try:
                        r = await client.complete("loop?", model="only-c", metadata=meta)
                        out.append(("ok", r.text != ""))
                    except AtpClientError as exc:
                        out.append((exc.code, exc.message))
                return out
        finally:
            await topo.stop()
    loop, limit, last_hop = run(main())
    assert loop[0] == ErrorCode.NO_ROUTE and "loop" in loop[1] and "A>B" not in loop[1]
    assert limit[0] == ErrorCode.NO_ROUTE and "hop limit" in limit[1]
    assert last_hop == ("ok", True)              # 7 routers so far + B = 8: still allowed


def test_a_bad_hop_counter_is_an_invalid_request(tmp_path):
    async def main():
        topo = await line(tmp_path)
        try:
            async with AsyncGrpcClient(topo.grpc("A"), KEY) as client:
                with pytest.raises(AtpClientError) as info:
                    await client.complete("x", model="only-c", metadata={HOPS_KEY: "-1"})
                return info.value
        finally:
            await topo.stop()
    exc = run(main())
    assert exc.code == ErrorCode.INVALID_REQUEST and HOPS_KEY in exc.message


def test_without_federation_nothing_is_installed(tmp_path):
    from atp_server.app import App
    app = App(atp_config.loads(atp_config.DEFAULT_TOML))
    assert app.forwarding is None and "federation" not in app.adapters
    assert type(app.router).choose is getattr(app.router.choose, "__func__", None)


@pytest.mark.parametrize("entry,key", [
    ('address = "127.0.0.1:1"\nkey_id = 9\nsecret = "s" ', "federation.forward[0].router_id"),
    ('router_id = "b"\naddress = "nowhere"\nkey_id = 9\nsecret = "0123456789abcdef"',
     "federation.forward[0].address"),
    ('router_id = "b"\naddress = "127.0.0.1:1"\nsecret = "0123456789abcdef"',
     "federation.forward[0].key_id"),
    ('router_id = "b"\naddress = "127.0.0.1:1"\nkey_id = 9\nsecret = "short"',
     "federation.forward[0].secret"),
    ('router_id = "b"\naddress = "127.0.0.1:1"\nkey_id = 9', "federation.forward[0]"),
    ('router_id = "b"\naddress = "127.0.0.1:1"\nkey_id = 9\nsecret_env = "ATP_NOT_SET_ANYWHERE"',
     "federation.forward[0].secret_env"),
    ('router_id = "b"\naddress = "127.0.0.1:1"\nkey_id = 9\nsecret = "0123456789abcdef"\nx = 1',
     "federation.forward[0].x"),
])
def test_forward_config_errors_name_the_key(entry, key):
    text = (atp_config.DEFAULT_TOML + '\n[federation]\nrouter_id = "a"\n[[federation.forward]]\n'
            + entry + "\n")
    with pytest.raises(atp_config.ConfigError) as info:
        atp_config.loads(text)
    assert str(info.value).startswith(key)


def test_a_provider_named_federation_is_refused_with_federation_on():
    text = (atp_config.DEFAULT_TOML + '\n[[providers]]\nname = "federation"\ntype = "simulated"\n'
            '[federation]\nrouter_id = "a"\n')
    from atp_server.app import App
    with pytest.raises(atp_config.ConfigError) as info:
        App(atp_config.loads(text))
    assert str(info.value).startswith("providers")


def test_a_hop_that_refuses_the_forwarding_credentials_is_a_clear_unavailable(tmp_path):
    """A signs with a secret B does not know: B closes the session; A's client gets a retryable
    UNAVAILABLE that names the hop and B's reason, and A keeps serving its local model."""
    import dataclasses

    async def main():
        topo = Topology(tmp_path, LINE, links=[("A", "B"), ("B", "C")])
        a = topo.configs["A"]
        wrong = tuple(dataclasses.replace(f, secret=b"not-the-secret-B-knows!") for f in a.federation.forward)
        topo.configs["A"] = dataclasses.replace(a, federation=dataclasses.replace(a.federation, forward=wrong))
        await topo.start()
        await topo.wait_best("A", "only-c", path=("B", "C"))
        await topo.until(lambda: "only-c" in topo.apps["A"].router.models)
        try:
            async with AsyncGrpcClient(topo.grpc("A"), KEY) as client:
                with pytest.raises(AtpClientError) as info:
                    await client.complete("x", model="only-c")
                local = await client.complete("x", model="local-a")
                return info.value, local
        finally:
            await topo.stop()
    exc, local = run(main())
    assert exc.code == ErrorCode.UNAVAILABLE and exc.retryable
    assert "B: UNAVAILABLE" in exc.message and "session to B closed" in exc.message
    assert local.text
