"""GatewayService, the transports' facade: models and feedback by the caller's own tenant, bound calls."""
import dataclasses

import pytest

from atp_server.app import App
from atp_server.auth import Principal
from atp_server.policy import PolicyHolder
from atp_server.routing.health import Outcome, finished
from atp_server.types import AtpError
from codec.errors import ErrorCode

from .helpers import PRINCIPAL, make_config


@pytest.fixture
def app(tmp_path):
    return App(make_config(tmp_path))


def test_models_lists_every_model_with_health(app):
    rows = app.service.models(PRINCIPAL)
    assert [r.spec.id for r in rows] == ["cheap", "smart"] and all(r.healthy for r in rows)
    for _ in range(app.router.health.threshold):
        app.router.health.report("smart", finished(Outcome.FAULT, probe=False), app.pipeline.clock())
    assert {r.spec.id: r.healthy for r in app.service.models(PRINCIPAL)} == {
        "cheap": True, "smart": False}


def test_models_follow_the_principals_tenant_allowlist(app):
    app.policy.policy = PolicyHolder.of_rules("""
[[rules]]
id = "acme-smart-only"
effect = "restrict_models"
models = ["smart"]
when.tenant = ["acme"]
[[rules]]
id = "others-none"
effect = "deny"
when.tenant = ["other"]
""", app.router.models.values()).policy
    assert [r.spec.id for r in app.service.models(Principal("acme", "k", "api_key"))] == ["smart"]
    assert app.service.models(Principal("other", "k", "api_key")) == []


def test_feedback_is_stored_under_the_principals_tenant(app):
    acme = Principal("acme", "acme-key", "api_key")
    assert app.service.feedback(acme, "r-1", 0.7, "good") is True
    assert app.service.feedback(acme, "r-1", 0.1) is False          # the first rating stands
    (entry,) = list(app.feedback)
    assert entry["tenant"] == "acme" and entry["principal"] == "acme-key"
    assert app.service.feedback(PRINCIPAL, "r-1", 0.2) is True      # another tenant's r-1


@pytest.mark.parametrize("request_id,score", [("", 0.5), ("r", 1.5), ("r", -0.1), ("r", float("nan"))])
def test_feedback_validation(app, request_id, score):
    with pytest.raises(AtpError) as info:
        app.service.feedback(PRINCIPAL, request_id, score)
    assert info.value.code == ErrorCode.INVALID_REQUEST
    assert len(app.feedback) == 0


def test_calls_are_bound_once_to_the_parts(app):
    s = app.service
    assert s.complete == app.pipeline.complete and s.stream == app.pipeline.stream
    assert s.route == app.pipeline.route and s.authenticate == app.auth.api_key
    assert s.check_signature == app.auth.check_signature


def test_app_draining_is_the_services_flag(app):
    assert app.draining is False and app.service.draining is False
    app.draining = True
    assert app.service.draining is True


def test_session_bookkeeping_counts_sessions_and_protocol_errors(app):
    gauge = app.metrics.sessions.labels("mem")
    app.service.session_opened("mem")
    assert gauge._value.get() == 1
    app.service.session_closed("mem")
    assert gauge._value.get() == 0
    app.service.protocol_error("mem", ErrorCode.BAD_SIGNATURE)
    assert app.metrics.protocol_errors.labels("mem", "200")._value.get() == 1


def test_transports_get_the_service_not_the_app(app):
    import inspect

    from atp_server.transport import grpc, http, quic
    for cls in (grpc.GrpcTransport, http.HttpTransport, quic.QuicTransport):
        assert list(inspect.signature(cls).parameters)[0] == "service"
    assert dataclasses.is_dataclass(app.service.models(PRINCIPAL)[0])
