"""Webhooks from a running ATP: a real aiohttp receiver on loopback gets signed events it can verify,
while an endpoint that accepts connections and never answers delays no request."""
import asyncio
import socket
import threading

import orjson
import requests
from aiohttp import web

from atp_server import config as atp_config
from atp_server.webhooks import verify

from tests.helpers.toml_models import BROKEN_MODEL

SECRET = "whsec-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {atp_config.DEV_API_KEY}"}


class Receiver:
    """An aiohttp server on its own thread and loop, recording each delivery."""

    def __init__(self):
        self.got: list = []
        self.cond = threading.Condition()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _main(self, ready):
        asyncio.set_event_loop(self.loop)

        async def receive(request):
            body = await request.read()
            with self.cond:
                self.got.append((dict(request.headers), body))
                self.cond.notify_all()
            return web.Response(status=204)

        async def start():
            app = web.Application()
            app.router.add_post("/hook", receive)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", 0).start()
            self.port = self.runner.addresses[0][1]
        self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()

    def wait_for(self, event: str, timeout=20):
        with self.cond:
            assert self.cond.wait_for(lambda: any(h.get("X-ATP-Event") == event for h, _ in self.got), timeout), \
                f"no {event} delivered; got {[h.get('X-ATP-Event') for h, _ in self.got]}"
            return next((h, b) for h, b in self.got if h["X-ATP-Event"] == event)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_signed_events_reach_a_receiver_and_a_dead_endpoint_slows_nothing(start_server):
    receiver = Receiver()
    dead = socket.socket()          # listens, never accepts: connections hang until the timeout
    dead.bind(("127.0.0.1", 0))
    dead.listen(64)
    extra = f"""
{BROKEN_MODEL}
[dashboard]
enabled = true

[[webhooks]]
url = "http://127.0.0.1:{dead.getsockname()[1]}/never"
events = ["*"]
secret = "{SECRET}"
timeout_s = 60

[[webhooks]]
url = "http://127.0.0.1:{receiver.port}/hook"
events = ["breaker.opened", "model.failed", "model.selected"]
secret = "{SECRET}"
"""
    try:
        server = start_server(grpc=False, quic=False, extra_toml=extra)
        url = f"http://127.0.0.1:{server.ports.http}"
        statuses = []
        with requests.Session() as s:
            for model in ["sim-fast"] + ["sim-broken"] * 8:
                r = s.post(url + "/v1/chat/completions", headers=AUTH, timeout=30,
                           json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
                statuses.append(r.status_code)
        assert statuses[0] == 200 and len(statuses) == 9 and all(st >= 400 for st in statuses[1:])

        headers, body = receiver.wait_for("breaker.opened")
        assert verify(SECRET, headers["X-ATP-Signature"], body)
        event = orjson.loads(body)
        assert event["event"] == "breaker.opened" and event["data"]["model"] == "sim-broken"
        assert event["id"] == headers["X-ATP-Delivery"]
        headers, body = receiver.wait_for("model.selected")
        assert verify(SECRET, headers["X-ATP-Signature"], body)
        assert orjson.loads(body)["data"]["model"] in ("sim-fast", "sim-broken")

        hooks = server.app.webhooks.hooks
        dead_hook, live_hook = hooks
        assert dead_hook.delivered == 0 and dead_hook.failed == 0   # still waiting on its first event
        assert len(dead_hook.queue) >= 1                             # the rest queue behind it, bounded
        assert live_hook.delivered >= 2

        snap = requests.get(url + "/dashboard/snapshot", timeout=10).json()
        assert any(e["event"] == "breaker.opened" for e in snap["events"])
        assert any(d["ok"] and d["event"] == "breaker.opened" for d in snap["webhooks"]["deliveries"])
        metrics = requests.get(url + "/metrics", timeout=10).text
        assert f'atp_webhook_deliveries_total{{result="delivered",url="http://127.0.0.1:{receiver.port}/hook"}}' in metrics
    finally:
        receiver.close()
        dead.close()
