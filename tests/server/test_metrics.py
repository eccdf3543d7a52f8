"""Metric labels come from configuration and code, never from client input: series stay bounded."""
from atp_server.metrics import Metrics
from codec.errors import ErrorCode


def series(metrics: Metrics, name: str) -> list[str]:
    return [line for line in metrics.render().decode().splitlines() if line.startswith(name + "{")]


def test_request_labels_outside_the_configured_set_share_one_label():
    m = Metrics(models=("a", "b"))
    m.observe("http", "a", "ok", 0.01, 0.001)
    for i in range(1000):
        m.observe("http", f"client-{i}", "UNKNOWN_MODEL", 0.01, None)
        m.observe("http", "b", f"OUTCOME_{i}", 0.01, None)
    labels = {labels for labels in m.request_counts}
    assert labels == {("http", "a", "ok"), ("http", "unknown", "UNKNOWN_MODEL"),
                      ("http", "b", "other")}
    assert len(series(m, "atp_requests_total")) == 3


def test_protocol_error_codes_are_bounded_to_the_wire_codes():
    m = Metrics()
    m.protocol_errors.labels("grpc", str(int(ErrorCode.BAD_SIGNATURE))).inc()
    for i in range(1000):
        m.protocol_errors.labels("grpc", str(10_000 + i)).inc()
        m.protocol_errors.labels("grpc", f"junk-{i}").inc()
    lines = series(m, "atp_protocol_errors_total")
    assert len(lines) == 2
    assert any('code="200"' in line for line in lines) and any('code="other"' in line for line in lines)


def test_refusal_reasons_come_from_a_fixed_set():
    from atp_server.metrics import REFUSAL_REASONS, refusal_reason
    m = Metrics()
    for code in ErrorCode:
        if (reason := refusal_reason(code)) is not None:
            m.count_refusal("http", reason)
    for i in range(1000):
        m.count_refusal("http", f"made-up-{i}")
    assert {reason for _, reason in m.refusals} <= set(REFUSAL_REASONS) | {"other"}
    assert m.refusals[("http", "other")] == 1000
    assert refusal_reason(ErrorCode.UPSTREAM_ERROR) is None and refusal_reason(ErrorCode.UNAVAILABLE) is None
    assert refusal_reason(ErrorCode.POLICY_DENIED) == "policy" and refusal_reason(302) == "limits"
    assert len(series(m, "atp_refusals_total")) == len(m.refusals)


def test_resets_of_the_shared_state_store_are_exported():
    from atp_server.state.redis import redis_stores
    fail = {"limits": "open", "budgets": "closed", "nonces": "closed"}
    stores = redis_stores("redis://127.0.0.1:1/0", timeout_s=0.1, fail=fail)   # never connected
    m = Metrics()
    m.track_state(stores)
    assert "atp_state_store_resets_total 0.0" in m.render().decode()
    stores.epoch.observe(1000, False)         # first sight: no reset
    stores.epoch.observe(2000, True)          # found missing, re-created: one
    assert "atp_state_store_resets_total 1.0" in m.render().decode()
