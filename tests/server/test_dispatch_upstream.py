"""Dispatch against real sockets: the upstream connection closes promptly when the client leaves
(before and after the first byte), and upstream HTTP statuses through the whole pipeline are
retried and counted against the provider's health only when the provider is at fault."""
import asyncio

import pytest

from atp_server.app import App
from atp_server.types import AtpError, ChatRequest, Routed
from codec.errors import ErrorCode

from .helpers import PRINCIPAL, make_config
from .test_dispatch import Sleep, complete


# ---- the client going away cancels the upstream call ----------------------------------------------

def _upstream_config(tmp_path, url: str):
    return make_config(tmp_path, models=f"""
[[providers]]
name = "up"
type = "openai_compat"
base_url = "{url}"

[[models]]
id = "remote"
provider = "up"
""")


@pytest.mark.parametrize("when", ["before-first-byte", "mid-stream"])
def test_the_upstream_connection_closes_promptly_when_the_client_leaves(tmp_path, when):
    from tests.adapters._servers import RawServer, read_request, until_eof

    async def script(reader, writer, index):
        await read_request(reader)
        if when == "mid-stream":
            event = b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
        await until_eof(reader)                      # hold the answer open until ATP hangs up

    async def main():
        async with RawServer(script) as server:
            app = App(_upstream_config(tmp_path, server.url))
            gen = app.pipeline.stream(ChatRequest([("user", "x")], model="remote"), PRINCIPAL, "t")
            assert type(await gen.__anext__()) is Routed
            if when == "mid-stream":
                assert (await gen.__anext__()).text == "hi"
                await gen.aclose()                   # what a transport does when its client left
            else:
                task = asyncio.create_task(gen.__anext__())
                await server.connected.wait()        # the request is out, no answer yet
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            async with asyncio.timeout(2):           # promptly: not at the 60 s read timeout
                await server.closed[0].wait()
            state = (app.admission.inflight, app.router.health.all_closed())
            await app.stop(0)
            return state
    assert asyncio.run(main()) == (0, True)


# ---- upstream statuses end to end: retried and counted, or neither ---------------------------------

@pytest.mark.parametrize("status,code,calls_per_request,counted", [
    (400, ErrorCode.INVALID_REQUEST, 1, False),
    (401, ErrorCode.FORBIDDEN, 1, False),
    (500, ErrorCode.UPSTREAM_ERROR, 3, True),
    (429, ErrorCode.RATE_LIMITED, 3, True),
])
def test_an_upstream_status_through_the_pipeline(tmp_path, status, code, calls_per_request, counted):
    from aiohttp import web

    from tests.adapters._servers import serve_app

    async def main():
        seen = []

        async def handler(request):
            seen.append(await request.read())
            return web.json_response({"error": {"message": f"upstream says {status}"}}, status=status,
                                     headers={"Retry-After": "0"} if status == 429 else None)

        upstream = web.Application()
        upstream.router.add_post("/v1/chat/completions", handler)
        async with serve_app(upstream) as url:
            app = App(_upstream_config(tmp_path, url + "/v1"))
            app.pipeline.sleep = Sleep()
            with pytest.raises(AtpError) as info:
                await complete(app, model="remote")
            failures = app.router.health.circuits["remote"].failures
            await app.stop(0)
        return info.value, len(seen), failures
    err, calls, failures = asyncio.run(main())
    assert err.code == code and f"upstream says {status}" in err.message
    assert calls == calls_per_request                  # retried (budget 3) only when retryable
    assert failures == (calls_per_request if counted else 0)
