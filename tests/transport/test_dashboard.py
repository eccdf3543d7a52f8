"""The dashboard's HTTP routes over real sockets: page, token, JSON snapshot, WebSocket feed, bounds."""
import asyncio

import aiohttp
import orjson
import pytest

from atp_server import config as atp_config
from atp_server.transport import http_dashboard

AUTH = {"Authorization": f"Bearer {atp_config.DEV_API_KEY}"}
TOKEN = "dashboard-token-0123456789"
ON = "\n[dashboard]\nenabled = true\n"


def base(server) -> str:
    return f"http://127.0.0.1:{server.ports.http}"


async def _chat(session, url, n=1):
    for _ in range(n):
        async with session.post(url + "/v1/chat/completions", headers=AUTH, json={
                "model": "sim-fast", "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 200


def test_off_by_default_no_route(start_server):
    server = start_server(grpc=False, quic=False)

    async def go():
        async with aiohttp.ClientSession() as s:
            for path in ("/dashboard", "/dashboard/snapshot", "/dashboard/ws"):
                async with s.get(base(server) + path) as r:
                    assert r.status == 404, path
    asyncio.run(go())
    assert server.app.live is None


def test_page_is_served_and_the_snapshot_counts_requests(start_server):
    server = start_server(grpc=False, quic=False, extra_toml=ON)

    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.get(base(server) + "/dashboard") as r:
                assert r.status == 200 and r.content_type == "text/html"
                page = await r.text()
            assert "/dashboard/ws" in page and "http://" not in page.replace("http://www.w3", "")  # no CDN
            await _chat(s, base(server), 3)
            async with s.get(base(server) + "/dashboard/snapshot") as r:
                snap = orjson.loads(await r.read())
        return snap
    snap = asyncio.run(go())
    assert snap["requests"]["total"] == 3 and snap["routing_mix"] == {"sim-fast": 3}


def test_the_token_guards_the_numbers_but_not_the_page(start_server):
    server = start_server(grpc=False, quic=False, extra_toml=ON + f'token = "{TOKEN}"\n')

    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.get(base(server) + "/dashboard") as r:
                assert r.status == 200
            async with s.get(base(server) + "/dashboard/snapshot") as r:
                assert r.status == 401
            async with s.get(base(server) + "/dashboard/snapshot?token=wrong-token-xxxxxxxx") as r:
                assert r.status == 401
            async with s.get(base(server) + "/dashboard/snapshot",
                             headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await s.ws_connect(base(server) + "/dashboard/ws")
            assert err.value.status == 401
            async with s.ws_connect(base(server) + f"/dashboard/ws?token={TOKEN}") as ws:
                first = orjson.loads((await ws.receive(timeout=10)).data)
                assert "requests" in first
    asyncio.run(go())


def test_the_websocket_pushes_snapshots_that_move(start_server):
    server = start_server(grpc=False, quic=False, extra_toml=ON)

    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(base(server) + "/dashboard/ws") as ws:
                first = orjson.loads((await ws.receive(timeout=10)).data)
                await _chat(s, base(server), 2)
                while True:         # the next pushes (about a second apart) show the new requests
                    snap = orjson.loads((await ws.receive(timeout=10)).data)
                    if snap["requests"]["total"] >= first["requests"]["total"] + 2:
                        return snap
    snap = asyncio.run(go())
    assert snap["cost"]["total_usd"] > 0


def test_a_slow_viewer_gets_only_the_newest_snapshot_never_a_queue():
    """While a viewer's send is stuck, 100 newer snapshots arrive: when it unblocks it is sent
    the newest one only (nothing was queued), then it waits for the next."""
    class StuckSocket:
        closed = False

        def __init__(self):
            self.sent, self.unblock = [], asyncio.Event()

        async def send_str(self, text):
            self.sent.append(text)
            if len(self.sent) == 1:
                await self.unblock.wait()

    class Live:
        n = 0

        def snapshot(self):
            return {"n": self.n}

    async def go():
        live, ws = Live(), StuckSocket()
        feed = http_dashboard.Feed(live)
        sender = asyncio.create_task(http_dashboard._send(ws, feed))

        async def publish(n):
            live.n = n
            feed.latest, feed.version = feed.render(), feed.version + 1
            async with feed.changed:
                feed.changed.notify_all()
            await asyncio.sleep(0)      # one loop pass: let the sender run (not a timing wait)
        await publish(1)
        for n in range(2, 102):
            await publish(n)
        assert ws.sent == ['{"n":1}']
        ws.unblock.set()
        for _ in range(3):
            await asyncio.sleep(0)
        sender.cancel()
        return ws.sent
    assert asyncio.run(go()) == ['{"n":1}', '{"n":101}']


def test_viewers_are_capped(start_server, monkeypatch):
    monkeypatch.setattr(http_dashboard, "MAX_VIEWERS", 1)
    server = start_server(grpc=False, quic=False, extra_toml=ON)

    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(base(server) + "/dashboard/ws") as ws:
                await ws.receive(timeout=10)
                with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                    await s.ws_connect(base(server) + "/dashboard/ws")
                assert err.value.status == 503
            # the first viewer left: its slot is free again
            async with s.ws_connect(base(server) + "/dashboard/ws") as ws:
                assert (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT
    asyncio.run(go())
