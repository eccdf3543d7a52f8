"""Shared fixtures for the learned router's tests: every kernel test runs on both twins."""
import json

import numpy as np
import pytest

from atp_server.routing import kernels
from atp_server.routing.features import FeatureConfig
from atp_server.routing.predictor import parse_outcomes, train
from bench.routing import synth

IMPLS = [k for k in (kernels.NUMPY, kernels.NUMBA) if k is not None]
SMALL = FeatureConfig(bits=12)   # 4k buckets: plenty for synthetic topics, fast to train


@pytest.fixture(params=IMPLS, ids=lambda k: k.name)
def impl(request):
    return request.param


@pytest.fixture(scope="session")
def synthetic():
    """900 queries, 12 models, 6 topics with one expert each: (train, test, experts, test topics)."""
    rows, experts = synth.make_rows(np.random.default_rng(3), n=900, models=12, topics=6)
    data = parse_outcomes([json.dumps(r) for r in rows])
    topics = [r["category"] for r in rows[600:]]
    return data.take(np.arange(600)), data.take(np.arange(600, 900)), experts, topics


@pytest.fixture(scope="session")
def trained(synthetic):
    return train(synthetic[0], SMALL, seed=0)
