"""The PRD's REST API (/api/v1) over real sockets: routing decisions without a provider call, routed
requests, per-model status scoped to the caller's key, host resources, health."""
import pytest

from atp_server.config import DEV_API_KEY
from atp_server.tenants import KeyFile, keys_path
from atp_server.transport import http_api

from .api_helpers import call

AUTH = {"Authorization": f"Bearer {DEV_API_KEY}"}
HELLO = [{"role": "user", "content": "hello"}]



def test_select_model_decides_without_calling_a_provider(atp_server):
    before = atp_server.app.router.table.stats.answers.sum()
    status, doc = call(atp_server, "POST", "/api/v1/ai/select-model", AUTH,
                       json={"messages": HELLO, "atp": {"tier": "fast"}})
    assert status == 200, doc
    d = doc["decision"]
    assert d["model"] in atp_server.app.router.models and d["chain"][0] == d["model"]
    assert d["reasons"] and 0 <= d["confidence"] <= 1
    assert d["estimated_cost_usd"] >= 0 and d["estimated_latency_ms"] >= 0
    assert atp_server.app.router.table.stats.answers.sum() == before    # nothing was dispatched


def test_select_model_honours_a_pinned_model(atp_server):
    status, doc = call(atp_server, "POST", "/api/v1/ai/select-model", AUTH,
                       json={"model": "sim-high", "messages": HELLO})
    assert status == 200 and doc["decision"]["model"] == "sim-high"


@pytest.mark.parametrize("body, field", [({"messages": "hi"}, "messages"),
                                         ({"messages": HELLO, "stream": True}, "stream"),
                                         ({"messages": HELLO, "temperature": "hot"}, "temperature")])
def test_bad_bodies_are_a_400_naming_the_field(atp_server, body, field):
    status, doc = call(atp_server, "POST", "/api/v1/ai/select-model", AUTH, json=body)
    assert status == 400 and doc["error"]["param"] == field, doc


def test_route_request_returns_the_completion_and_its_decision(atp_server):
    status, doc = call(atp_server, "POST", "/api/v1/ai/route-request", AUTH,
                       json={"model": "sim-fast", "messages": HELLO},)
    assert status == 200, doc
    assert doc["decision"]["model"] == "sim-fast" == doc["completion"]["model"]
    assert doc["completion"]["choices"][0]["message"]["content"]
    assert doc["completion"]["usage"]["completion_tokens"] > 0 and doc["overhead_us"] >= 0


@pytest.mark.parametrize("method, path", [("POST", "/api/v1/ai/select-model"),
                                          ("POST", "/api/v1/ai/route-request"),
                                          ("GET", "/api/v1/ai/models/status"),
                                          ("GET", "/api/v1/ai/resources/metrics")])
def test_the_ai_routes_need_an_api_key(atp_server, method, path):
    status, doc = call(atp_server, method, path, {"Authorization": "Bearer wrong"}, json={})
    assert status == 401 and doc["error"]["code"] == "UNAUTHENTICATED"


def test_models_status_reports_live_statistics(atp_server):
    call(atp_server, "POST", "/v1/chat/completions", AUTH, json={"model": "sim-fast", "messages": HELLO})
    status, doc = call(atp_server, "GET", "/api/v1/ai/models/status", AUTH)
    assert status == 200
    rows = {r["id"]: r for r in doc["models"]}
    assert set(rows) == set(atp_server.app.router.models)
    fast = rows["sim-fast"]
    assert fast["breaker"] == "closed" and fast["healthy"] is True and fast["answers"] >= 1
    assert fast["latency_p95_ms"] >= fast["latency_p50_ms"] >= 0 and 0 <= fast["error_rate"] <= 1
    assert fast["in_flight"] == 0


def test_a_scoped_key_sees_only_its_own_models(start_server):
    h = start_server(grpc=False, quic=False)
    token, _ = KeyFile(keys_path(h.app.config)).create("ci", "default", models=["sim-fast"])
    assert h.app.reloader.reload()
    status, doc = call(h, "GET", "/api/v1/ai/models/status", {"Authorization": f"Bearer {token}"})
    assert status == 200 and [r["id"] for r in doc["models"]] == ["sim-fast"]
    status, doc = call(h, "POST", "/api/v1/ai/select-model", {"Authorization": f"Bearer {token}"},
                       json={"model": "sim-high", "messages": HELLO})
    assert status in (403, 404) and doc["error"]["code"] in ("FORBIDDEN", "POLICY_DENIED",
                                                             "UNKNOWN_MODEL"), doc


def test_resources_metrics_serves_the_resource_monitor_by_default(atp_server):
    status, doc = call(atp_server, "GET", "/api/v1/ai/resources/metrics", AUTH)   # [resources] on
    assert status == 200 and {"pressure", "memory", "models", "blocked"} <= set(doc)


def test_resources_metrics_reads_proc_without_a_monitor(atp_server):
    service = atp_server.app.service
    monitor, service.resources = service.resources, None      # as with [resources] enabled = false
    try:
        status, doc = call(atp_server, "GET", "/api/v1/ai/resources/metrics", AUTH)
    finally:
        service.resources = monitor
    assert status == 200 and doc["source"] == "proc"
    assert doc["memory"]["total_bytes"] > doc["memory"]["available_bytes"] > 0
    assert doc["cpu"]["cores"] >= 1 and doc["cpu"]["load_1m"] >= 0


def test_resources_metrics_prefers_the_services_monitor():
    class Monitor:
        def snapshot(self):
            return {"source": "monitor", "memory": {"pressure": 0.5}}

    class Service:
        resources = Monitor()
    assert http_api.resources_snapshot(Service())["source"] == "monitor"


def test_health_needs_no_credentials_and_counts_models(atp_server):
    status, doc = call(atp_server, "GET", "/api/v1/health")
    assert status == 200 and doc["status"] == "ok"
    assert doc["models_total"] == len(atp_server.app.router.models) >= doc["models_healthy"] >= 1


def test_a_wrong_method_is_a_405_naming_the_allowed_one(atp_server):
    status, doc = call(atp_server, "GET", "/api/v1/ai/select-model")
    assert status == 405 and "POST" in doc["error"]["message"]
