"""The live dashboard on ATP's HTTP port: GET /dashboard (one static page), its WebSocket feed and a JSON snapshot.

Routes exist only with `[dashboard] enabled = true`. The page itself carries no data and is served
to anyone; the numbers (`/dashboard/ws`, `/dashboard/snapshot`) need the dashboard token —
`[dashboard] token`, else `[metrics] scrape_token`; with neither they are open, as /metrics is.
The browser passes it as `?token=` (the page reads it from its URL fragment, `/dashboard#token=…`,
which browsers never send to a server); `atp top` sends `Authorization: Bearer <token>`.

One feeder task per transport builds the snapshot once a second, only while someone watches, and
serialises it once for every viewer. Each viewer holds at most the newest snapshot: a viewer still
sending the previous one skips ahead (never a growing queue), and one that cannot take a message
within SEND_TIMEOUT_S is closed. So a slow browser costs neither memory nor request latency.
"""
import asyncio
import hmac
import logging
from contextlib import suppress
from pathlib import Path

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

log = logging.getLogger("atp.http")

PAGE = Path(__file__).parent.parent / "static" / "dashboard.html"
# One second: what a person watching sees as live; a snapshot costs ~0.1 ms to build, so this is noise.
PUSH_EVERY_S = 1.0
# A viewer that has not taken one message in 10 s is gone or hopeless: closed, its slot freed.
SEND_TIMEOUT_S = 10.0
# Viewers at once: a few operators' screens; a bound so nothing a client does grows memory.
MAX_VIEWERS = 32
# What a viewer may send us (nothing is expected): anything bigger closes it.
MAX_INBOUND = 1024

OPENAPI_PATHS = {
    "/dashboard": {"get": {
        "summary": "The live dashboard page (HTML; its data comes over /dashboard/ws)",
        "tags": ["dashboard"],
        "responses": {"200": {"description": "the page", "content": {"text/html": {}}}}}},
    "/dashboard/snapshot": {"get": {
        "summary": "One live-statistics snapshot (what the dashboard and `atp top` show)",
        "tags": ["dashboard"],
        "parameters": [{"name": "token", "in": "query", "required": False, "schema": {"type": "string"},
                        "description": "the dashboard token, if not sent as a Bearer authorization"}],
        "responses": {
            "200": {"description": "the snapshot", "content": {"application/json": {"schema": {
                "type": "object", "required": ["requests", "latency_ms", "errors", "cost", "models"],
                "properties": {"requests": {"type": "object"}, "latency_ms": {"type": "object"},
                               "errors": {"type": "object"}, "cost": {"type": "object"},
                               "savings": {"type": "object"}, "routing_mix": {"type": "object"},
                               "models": {"type": "array", "items": {"type": "object"}},
                               "queue": {"type": "object"},
                               "events": {"type": "array", "items": {"type": "object"}}}}}}},
            "401": {"description": "missing or wrong dashboard token"}}}},
    "/dashboard/ws": {"get": {
        "summary": "WebSocket: a snapshot (as /dashboard/snapshot) pushed about once a second",
        "tags": ["dashboard"],
        "parameters": [{"name": "token", "in": "query", "required": False, "schema": {"type": "string"}}],
        "responses": {"101": {"description": "switching to the WebSocket protocol"},
                      "400": {"description": "not a WebSocket upgrade request"},
                      "401": {"description": "missing or wrong dashboard token"},
                      "503": {"description": "MAX_VIEWERS viewers connected already"}}}},
}


class Feed:
    """The once-a-second snapshot shared by every viewer of one transport."""

    def __init__(self, live):
        self.live = live
        self.latest = b""
        self.version = 0
        self.changed = asyncio.Condition()
        self.viewers = 0
        self._task: asyncio.Task | None = None

    def join(self) -> None:
        self.viewers += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def leave(self) -> None:
        self.viewers -= 1
        if self.viewers == 0 and self._task is not None:
            self._task.cancel()
            self._task = None

    def render(self) -> bytes:
        return orjson.dumps(self.live.snapshot())

    async def _run(self) -> None:
        while True:
            try:
                self.latest = self.render()
            except Exception:      # a bug in a snapshot source must not end the feed
                log.exception("dashboard: snapshot failed")
            self.version += 1
            async with self.changed:
                self.changed.notify_all()
            await asyncio.sleep(PUSH_EVERY_S)


def add_routes(transport) -> None:
    """Register the dashboard's routes on an HttpTransport when its service has live statistics."""
    service = transport.service
    live = getattr(service, "live", None)
    if live is None:
        return
    expected = getattr(service, "dashboard_token", "") or ""
    page = PAGE.read_bytes()
    feed = Feed(live)

    def allowed(request: web.Request) -> bool:
        if not expected:
            return True
        given = request.query.get("token", "")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[7:]
        return hmac.compare_digest(given.encode(), expected.encode())

    def refused() -> web.Response:
        return web.json_response({"error": {"message": "the dashboard needs its token: "
                                            "?token=<[dashboard] token> or Authorization: Bearer",
                                            "code": "unauthenticated"}}, status=401)

    async def dashboard(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache",
                                     "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; "
                                                                "style-src 'unsafe-inline'; script-src 'unsafe-inline'"})

    async def snapshot(request: web.Request) -> web.Response:
        if not allowed(request):
            return refused()
        return web.Response(body=feed.render(), content_type="application/json")

    async def websocket(request: web.Request) -> web.StreamResponse:
        if not allowed(request):
            return refused()
        if feed.viewers >= MAX_VIEWERS:
            return web.json_response({"error": {"message": f"{MAX_VIEWERS} dashboard viewers already",
                                                "code": "unavailable"}}, status=503)
        ws = web.WebSocketResponse(max_msg_size=MAX_INBOUND, heartbeat=30)
        await ws.prepare(request)
        feed.join()
        sender = asyncio.get_running_loop().create_task(_send(ws, feed))
        try:
            async for msg in ws:      # nothing is expected from a viewer; this notices its close
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            sender.cancel()
            with suppress(asyncio.CancelledError):
                await sender
            feed.leave()
        return ws

    transport.web.add_routes([web.get("/dashboard", dashboard), web.get("/dashboard/snapshot", snapshot),
                              web.get("/dashboard/ws", websocket)])


async def _send(ws: web.WebSocketResponse, feed: Feed) -> None:
    """Send each new snapshot; if one arrives while the last is still being sent, only the newest goes."""
    seen = 0
    try:
        while not ws.closed:
            async with feed.changed:
                await feed.changed.wait_for(lambda: feed.version != seen)
            seen = feed.version
            if feed.latest:
                await asyncio.wait_for(ws.send_str(feed.latest.decode()), SEND_TIMEOUT_S)
    except (TimeoutError, ConnectionResetError, RuntimeError):
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too slow")
