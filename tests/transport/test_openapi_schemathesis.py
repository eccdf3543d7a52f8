"""schemathesis against the live server's /openapi.json: for every operation, generated requests
never get a 5xx, and every answer's status, content type and body conform to the document.

Admin operations are called with a super-admin key, the others with the dev API key; examples per
operation are bounded (MAX_EXAMPLES) so the whole run stays within ~2 minutes on a loaded machine."""
import hashlib
import json
import urllib.request

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from atp_server.config import DEV_API_KEY
from atp_server.openapi import document

from .api_helpers import http_server


# Enough generated requests per operation to reach its error paths (bad types, missing fields,
# unknown ids), few enough that ~33 operations finish in about a minute.
MAX_EXAMPLES = 12
ADMIN_KEY = "adm-schemathesis"
EXTRA = f"""
[[admin.keys]]
name = "fuzzer"
role = "super-admin"
sha256 = "{hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}"

[[limits]]
name = "daily"
usd_per_day = 100.0
"""
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with http_server(tmp_path_factory, "schemathesis", EXTRA) as h:
        yield h


# The document the server serves (test_served_document_is_this_one checks it is the same), loaded
# at import: schemathesis' fixture-based loader does not work with this pytest.
schema = schemathesis.openapi.from_dict(document())


def test_served_document_is_this_one(live):
    with urllib.request.urlopen(f"http://127.0.0.1:{live.ports.http}/openapi.json", timeout=10) as r:
        assert json.load(r) == document()


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_every_operation_conforms_and_never_5xx(case, live):
    key = ADMIN_KEY if case.path.startswith("/admin/") else DEV_API_KEY
    case.call_and_validate(base_url=f"http://127.0.0.1:{live.ports.http}",
                           headers={"Authorization": f"Bearer {key}"}, checks=CHECKS, timeout=30)
