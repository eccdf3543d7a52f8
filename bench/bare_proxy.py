"""The bare pass-through proxy: the Python ceiling any gateway in this repo is measured against.

    python -m bench.bare_proxy --port 9000 --upstream 127.0.0.1:8080

An aiohttp server on uvloop that takes `POST /v1/chat/completions`, checks the body is a JSON object,
forwards the bytes to the upstream's /v1/chat/completions over a pooled keep-alive connection (the
project's lean client, atp_server/adapters/http_client.py: asyncio.Protocol + httptools), parses
the answer with orjson and returns it. No auth, routing, accounting or audit: whatever a real
gateway spends beyond this is its own overhead.
"""
from __future__ import annotations

import argparse
import asyncio
import signal

import orjson
import uvloop
from aiohttp import web

from atp_server.adapters.http_client import HttpClient, HttpClientError

_JSON = "application/json"


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.Response(status=status, content_type=_JSON,
                        body=orjson.dumps({"error": {"message": message, "type": kind}}))


def make_app(upstream: str, *, max_connections: int = 256, api_key: str = "dummy") -> web.Application:
    """`upstream` is host:port (or a base URL ending before /chat/completions)."""
    base = upstream if upstream.startswith("http") else f"http://{upstream}/v1"
    url = base.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": _JSON, "Accept": _JSON, "Authorization": f"Bearer {api_key}"}
    client: HttpClient | None = None

    async def chat(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(400, "request body is not valid JSON", "invalid_request_error")
        if not isinstance(req, dict) or "model" not in req:
            return _error(400, "request must be a JSON object with a model", "invalid_request_error")
        try:
            resp = await client.request("POST", url, headers=headers, body=body)
        except HttpClientError as e:
            return _error(502, f"upstream: {e}", "upstream_error")
        try:
            answer = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            return _error(502, "upstream answered invalid JSON", "upstream_error")
        return web.Response(status=resp.status, content_type=_JSON, body=orjson.dumps(answer))

    async def on_startup(app):
        nonlocal client
        client = HttpClient(max_connections=max_connections, read_timeout_s=60.0)

    async def on_cleanup(app):
        if client is not None:
            await client.aclose()

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


async def serve(host: str, port: int, upstream: str, max_connections: int) -> None:
    runner = web.AppRunner(make_app(upstream, max_connections=max_connections), access_log=None,
                           handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    print(f"bare_proxy listening on http://{host}:{port} -> {upstream}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bare_proxy", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="host:port of the upstream (or http://host:port/v1)")
    p.add_argument("--max-connections", type=int, default=256, help="upstream keep-alive pool size")
    a = p.parse_args(argv)
    uvloop.run(serve(a.host, a.port, a.upstream, a.max_connections))


if __name__ == "__main__":
    main()
