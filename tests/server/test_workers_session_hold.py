"""The frame session's shared nonce check, in process: while the shared store has not answered,
no request of the new session runs and nothing is sent; then it proceeds or closes."""
import asyncio

import pytest

from atp_client import AtpClientError, build_request
from atp_client.types import Result
from atp_server.app import App
from atp_server.types import AtpError
from codec.errors import ErrorCode

from .helpers import make_config
from .test_session import Wire


class SlowStore:
    """check_shared_nonce that answers when the test says, with a verdict the test picks."""

    def __init__(self):
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()
        self.refusal: AtpError | None = None
        self.seen = []

    async def check(self, nonce: bytes, timestamp_ms: int, now_ms: int) -> None:
        self.seen.append((nonce, timestamp_ms))
        self.asked.set()
        await self.answer.wait()
        if self.refusal is not None:
            raise self.refusal


@pytest.mark.parametrize("refusal", [None, AtpError(ErrorCode.REPLAYED_NONCE, "nonce already used"),
                                     AtpError(ErrorCode.UNAVAILABLE, "state store down", 500)])
def test_a_session_waits_for_the_shared_nonce_check(tmp_path, refusal):
    async def main():
        app = App(make_config(tmp_path))
        store = SlowStore()
        store.refusal = refusal
        app.service.check_shared_nonce = store.check
        sent = []
        wire = Wire(app)
        forward = wire.server._send
        wire.server._send = lambda frames: (sent.extend(frames), forward(frames))
        call = asyncio.ensure_future(wire.client.complete(build_request("hi", tier="fast")))
        await store.asked.wait()
        for _ in range(20):              # let the loop run: nothing may move while held
            await asyncio.sleep(0)
        held = (list(sent), app.accountant.by_tenant.get("default"))
        store.answer.set()
        try:
            result = await asyncio.wait_for(call, 10)
        except AtpClientError as exc:
            result = exc
        wire.client.close()
        await app.stop(0)
        return held, result, store
    (sent_while_held, accounted), result, store = asyncio.run(main())
    assert sent_while_held == [] and accounted is None      # no HELLO reply, no request run
    assert len(store.seen) == 1 and len(store.seen[0][0]) == 8 and store.seen[0][1] > 0
    if refusal is None:
        assert isinstance(result, Result)
    else:
        assert isinstance(result, AtpClientError) and result.code == refusal.code
