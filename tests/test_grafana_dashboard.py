"""docs/grafana/atp-dashboard.json: a Grafana dashboard whose every query names a metric ATP exports."""
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana" / "atp-dashboard.json"
SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def exported_families() -> set[str]:
    """Family names as atp_server declares them (counters without _total, as prometheus_client)."""
    text = "\n".join(p.read_text() for p in (ROOT / "atp_server").rglob("*.py"))
    return set(re.findall(r'"(atp_[a-z0-9_]+)"', text))


def family(sample_name: str) -> str:
    for suffix in SUFFIXES:
        if sample_name.endswith(suffix):
            return sample_name[: -len(suffix)]
    return sample_name


def test_the_dashboard_is_grafana_json_with_a_prometheus_datasource_variable():
    d = json.loads(DASHBOARD.read_text())
    assert d["title"] and d["uid"] and isinstance(d["schemaVersion"], int)
    (var,) = d["templating"]["list"]
    assert var["type"] == "datasource" and var["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) >= 15
    for p in d["panels"]:
        assert p["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"])


def test_every_query_names_a_metric_atp_exports():
    d = json.loads(DASHBOARD.read_text())
    families = exported_families()
    used = {family(m) for p in d["panels"] for t in p["targets"]
            for m in re.findall(r"\b(atp_[a-z0-9_]+)", t["expr"])}
    assert used and used <= families, sorted(used - families)
    # the families issue 11 asks to see: requests, latency, TTFT, decision time, breakers, windows,
    # queues, policy, redactions, budgets, federation, spend
    for wanted in ("atp_requests", "atp_request_duration_seconds", "atp_time_to_first_token_seconds",
                   "atp_routing_decision_seconds", "atp_breaker_state", "atp_provider_window",
                   "atp_queued_requests", "atp_policy_decisions", "atp_redactions",
                   "atp_budget_remaining_usd", "atp_federation_peer_up", "atp_cost_usd_micros"):
        assert wanted in used, wanted
