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
