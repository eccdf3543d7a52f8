"""Throwaway local HTTP servers for adapter tests: an aiohttp app, or a raw scripted TCP server."""
import asyncio
import contextlib

from aiohttp import web


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, ssl_context=None):
    """Serve an aiohttp app on 127.0.0.1:<free port>; yields the base URL."""
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def peer_port(request: web.Request) -> int:
    """The client's source port: one value per TCP connection the client used."""
    return request.transport.get_extra_info("peername")[1]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 request (head, body) from a raw stream, or None on EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


class RawServer:
    """TCP server running `script(reader, writer, index)` per connection; records connection ends.

    `closed[i]` is set when connection i ended (the script returned after the client's EOF, or
    the script closed it), so tests wait on events instead of sleeping.
    """

    def __init__(self, script):
        self.script = script
        self.connections = 0
        self.closed: list[asyncio.Event] = []
        self.release = asyncio.Event()  # scripts that must hang wait on this
        self.connected = asyncio.Event()  # set at the first connection

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._on_conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc):
        self.release.set()
        self.server.close()
        # 3.11's wait_closed does not wait for handlers; scripts end on release or client EOF.

    async def _on_conn(self, reader, writer):
        index = self.connections
        self.connections += 1
        self.connected.set()
        ended = asyncio.Event()
        self.closed.append(ended)
        try:
            await self.script(reader, writer, index)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            ended.set()


async def until_eof(reader: asyncio.StreamReader) -> None:
    """Wait until the client closes its side (what a 'connection closed' assertion waits for)."""
    while await reader.read(65536):
        pass
