"""Shared fixtures: every codec test runs once per built backend (pure, and native when built)."""
import os

import pytest

from codec import backend

BACKENDS = sorted(backend.AVAILABLE)
if os.environ.get("ATP_REQUIRE_NATIVE") == "1" and "native" not in BACKENDS:
    raise RuntimeError("ATP_REQUIRE_NATIVE=1 but codec._native is not built")


@pytest.fixture(params=BACKENDS)
def codec_backend(request):
    """Select a codec twin for the test; objects holding keys must be built inside the test."""
    previous = backend.impl
    yield backend.use(request.param)
    backend.impl = previous
