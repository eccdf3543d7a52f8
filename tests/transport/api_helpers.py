"""Helpers of the REST/admin/OpenAPI tests: one JSON call over a real socket, a dedicated server."""
import asyncio
import contextlib

import aiohttp

from .conftest import ServerHarness, server_config


def call(h, method: str, path: str, headers=None, **kw) -> tuple[int, object]:
    """(status, decoded JSON body) of one request to `h`'s HTTP port."""
    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.request(method, f"http://127.0.0.1:{h.ports.http}{path}",
                                 headers=headers, **kw) as r:
                return r.status, await r.json(content_type=None)
    return asyncio.run(go())


@contextlib.contextmanager
def http_server(tmp_path_factory, name: str, extra_toml: str):
    """An HTTP-only server with `extra_toml`, for a module's tests (stopped when they end)."""
    d = tmp_path_factory.mktemp(name)
    h = ServerHarness(server_config(d, extra_toml), str(d / "audit.sqlite")).start(grpc=False, quic=False)
    try:
        yield h
    finally:
        h.stop()
        h.close()
