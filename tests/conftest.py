"""Shared fixtures: every codec test runs once per built backend (pure, and native when built)."""
import os

import pytest
from hypothesis import HealthCheck, settings

from codec import backend

# Property tests assert on what is generated, never on how fast: hypothesis's too_slow health check
# and per-example deadline are wall-clock assertions, which fail on a loaded 2-core CI machine.
settings.register_profile("atp", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("atp")

BACKENDS = sorted(backend.AVAILABLE)
if os.environ.get("ATP_REQUIRE_NATIVE") == "1" and "native" not in BACKENDS:
    raise RuntimeError("ATP_REQUIRE_NATIVE=1 but codec._native is not built")


@pytest.fixture(params=BACKENDS)
def codec_backend(request):
    """Select a codec twin for the test; objects holding keys must be built inside the test."""
    previous = backend.impl
    yield backend.use(request.param)
    backend.impl = previous


@pytest.fixture(autouse=True)
def _server_logging_restored():
    """A test that runs `atp serve` in process (cli.main) installs the server's log handler on
    the root logger (logs.setup): take it off afterwards, or later tests' caplog never sees an
    access line (logs.ACCESS_SINK takes them). pytest's own capture handlers are its business."""
    import logging

    from atp_server import logs
    root = logging.getLogger()
    level, sink = root.level, logs.ACCESS_SINK
    yield
    if logs.ACCESS_SINK is not sink:
        for h in list(root.handlers):
            if isinstance(h, logs.BatchingHandler):
                root.removeHandler(h)
                h.close()
        logs.ACCESS_SINK = sink
        root.setLevel(level)
