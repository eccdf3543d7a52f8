"""Blocking SDK clients: each wraps an async client on a private event loop in a daemon thread.

GrpcClient (typed RPCs), SessionClient (frame session over gRPC) and QuicClient (frame sessions
over QUIC) expose the async clients' methods synchronously; `stream` is a plain iterator of
Chunk then one Result (leaving the loop early cancels the request on the server).
"""
import asyncio
import threading

from .grpc_client import DEFAULT_TARGET

try:
    import uvloop
    _new_loop = uvloop.new_event_loop
except ImportError:    # uvloop is optional for clients
    _new_loop = asyncio.new_event_loop


class _LoopThread:
    def __init__(self, name: str):
        self.loop = _new_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro, timeout: float | None = None):
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a sync ATP client cannot be called from its own loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def iterate(self, agen):
        """Drive an async generator from this (caller's) thread, one item per round trip."""
        try:
            while True:
                try:
                    item = self.run(agen.__anext__())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            if not self.loop.is_closed():
                self.run(agen.aclose())

    def close(self) -> None:
        if self.loop.is_closed():
            return

        async def cancel_rest():
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
        self.run(cancel_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class _SyncClient:
    def __init__(self, make_async, name: str):
        self._lt = _LoopThread(name)

        async def build():      # built on its loop: grpc.aio binds to the loop of first use
            client = make_async()
            connect = getattr(client, "connect", None)
            if connect is not None:
                res = connect()
                if asyncio.iscoroutine(res):
                    await res
            return client
        try:
            self._client = self._lt.run(build())
        except BaseException:
            self._lt.close()
            raise

    def _run(self, coro):
        return self._lt.run(coro)

    def complete(self, prompt=None, **kwargs):
        return self._run(self._client.complete(prompt, **kwargs))

    def stream(self, prompt=None, **kwargs):
        return self._lt.iterate(self._client.stream(prompt, **kwargs))

    def close(self) -> None:
        if self._lt.loop.is_closed():
            return
        try:
            self._run(self._client.close())
        finally:
            self._lt.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class GrpcClient(_SyncClient):
    """Blocking AsyncGrpcClient: complete, stream, route, feedback, list_models, health."""

    def __init__(self, target: str = DEFAULT_TARGET, api_key: str | None = None, **options):
        from .grpc_client import AsyncGrpcClient
        super().__init__(lambda: AsyncGrpcClient(target, api_key, **options), "atp-grpc-client")

    def route(self, prompt=None, **kwargs) -> dict:
        return self._run(self._client.route(prompt, **kwargs))

    def feedback(self, request_id: str, score: float, comment: str | None = None, **kwargs) -> bool:
        return self._run(self._client.feedback(request_id, score, comment, **kwargs))

    def list_models(self, tenant: str = "") -> list[dict]:
        return self._run(self._client.list_models(tenant))

    def health(self, service: str = "atp.v1.Atp") -> str:
        return self._run(self._client.health(service))


class SessionClient(_SyncClient):
    """Blocking AsyncSessionClient: one ATP frame session over the gRPC Session call."""

    def __init__(self, target: str = DEFAULT_TARGET, key_id: int | None = None,
                 secret: bytes | str | None = None, **options):
        from .grpc_client import AsyncSessionClient
        super().__init__(lambda: AsyncSessionClient(target, key_id, secret, **options),
                         "atp-session-client")


class QuicClient(_SyncClient):
    """Blocking AsyncQuicClient (clients/atp_client/quic_client.py); options pass through."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8472, key_id: int | None = None,
                 secret: bytes | str | None = None, **options):
        from .quic_client import AsyncQuicClient   # lazy: aioquic is only needed for QUIC
        super().__init__(lambda: AsyncQuicClient(host, port, key_id, secret, **options),
                         "atp-quic-client")


__all__ = ["GrpcClient", "SessionClient", "QuicClient"]
