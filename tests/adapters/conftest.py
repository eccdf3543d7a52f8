"""Adapter tests run their coroutines on both the stdlib loop and uvloop (production), time-boxed."""
import asyncio

import pytest
import uvloop

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request):
    """run(coro_fn, timeout=10): run coro_fn() to completion on a fresh loop; a hang fails, not blocks."""
    factory = LOOPS[request.param]

    def _run(coro_fn, timeout: float = 10.0):
        async def boxed():
            async with asyncio.timeout(timeout):
                return await coro_fn()

        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(boxed())

    return _run
