"""µs the REST/admin routes add to resolving the chat route, and µs per counted refusal: `python -m bench.api_routes`."""
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from aiohttp.test_utils import make_mocked_request

from atp_server import config
from atp_server.app import App
from atp_server.transport import http, http_admin, http_api
from codec.errors import ErrorCode

ROUNDS, CALLS = 7, 20000     # medians of 7 rounds of 20k calls: steady on a loaded 2-core VM


def _app() -> App:
    cfg = config.loads(config.DEFAULT_TOML)
    server = cfg.server.__class__(**{**{f: getattr(cfg.server, f) for f in cfg.server.__dataclass_fields__},
                                     "state_dir": tempfile.mkdtemp()})
    return App(cfg.__class__(**{**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__}, "server": server}))


def _transport(app: App, with_api: bool) -> http.HttpTransport:
    saved = http_api.add_routes, http_admin.add_routes
    if not with_api:
        http_api.add_routes = http_admin.add_routes = lambda t: None
    try:
        t = http.HttpTransport(app.service)
    finally:
        http_api.add_routes, http_admin.add_routes = saved
    t.web.freeze()
    return t


async def _resolve_us(t) -> float:
    req = make_mocked_request("POST", "/v1/chat/completions", app=t.web)
    t0 = time.perf_counter_ns()
    for _ in range(CALLS):
        await t.web.router.resolve(req)
    return (time.perf_counter_ns() - t0) / CALLS / 1000


def _refusal_us(app: App) -> float:
    refused = app.service.refused
    t0 = time.perf_counter_ns()
    for _ in range(CALLS):
        refused("http", ErrorCode.UNAUTHENTICATED)
    return (time.perf_counter_ns() - t0) / CALLS / 1000


async def main() -> None:
    app = _app()
    for label, with_api in (("without", False), ("with", True)) * 2:
        t = _transport(app, with_api)
        runs = [await _resolve_us(t) for _ in range(ROUNDS)]
        print(f"resolve POST /v1/chat/completions, {label} /api/v1 + /admin/v1: "
              f"median {statistics.median(runs):.2f} µs")
    print(f"service.refused() per refusal: median "
          f"{statistics.median(_refusal_us(app) for _ in range(ROUNDS)):.3f} µs")


if __name__ == "__main__":
    asyncio.run(main())
