"""The admin API over real sockets: admin keys and roles, live model changes the OpenAI routes see
at once, keys created and revoked, budgets set, precise 400s, 401/403/405, all audited."""
import hashlib

import pytest

from atp_server.admin import ROLES
from atp_server.config import DEV_API_KEY

from .api_helpers import call, http_server

ADMIN_TOML = "".join(f"""
[[admin.keys]]
name = "{role}-bot"
role = "{role}"
sha256 = "{hashlib.sha256(f'adm-{role}'.encode()).hexdigest()}"
""" for role in ROLES) + '\n[[limits]]\nname = "daily"\nusd_per_day = 50.0\n'
HELLO = [{"role": "user", "content": "hello"}]
NEW = {"id": "sim-new", "provider": "sim", "quality": 0.7, "latency_ms": 10,
       "price_in_per_mtok": 0.5, "price_out_per_mtok": 1.0}


def as_(role: str) -> dict:
    return {"Authorization": f"Bearer adm-{role}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with http_server(tmp_path_factory, "admin", ADMIN_TOML) as h:
        yield h




def test_whoami_names_the_role_and_what_it_may_do(server):
    status, doc = call(server, "GET", "/admin/v1/whoami", as_("cost-admin"))
    assert status == 200 and doc["role"] == "cost-admin" and "budgets.write" in doc["may"]
    assert "models.write" not in doc["may"]


@pytest.mark.parametrize("headers", [None, {"Authorization": f"Bearer {DEV_API_KEY}"},
                                     {"Authorization": "Bearer adm-nobody"}])
def test_no_admin_key_is_a_401_and_a_tenant_key_is_no_admin_key(server, headers):
    status, doc = call(server, "GET", "/admin/v1/models", headers)
    assert status == 401 and doc["error"]["code"] == "UNAUTHENTICATED"


def test_a_role_without_the_permission_is_a_403(server):
    status, doc = call(server, "POST", "/admin/v1/models", as_("read-only"), json=NEW)
    assert status == 403 and "models.write" in doc["error"]["message"]
    status, doc = call(server, "PUT", "/admin/v1/budgets/daily", as_("platform-admin"),
                       json={"usd_per_day": 1.0})
    assert status == 403


def test_an_added_model_serves_at_once_and_disable_takes_it_out(server):
    status, doc = call(server, "POST", "/admin/v1/models", as_("platform-admin"), json=NEW)
    assert status == 201 and doc["id"] == "sim-new" and doc["enabled"] is True
    user = {"Authorization": f"Bearer {DEV_API_KEY}"}
    status, doc = call(server, "POST", "/v1/chat/completions", user,
                       json={"model": "sim-new", "messages": HELLO})
    assert status == 200 and doc["model"] == "sim-new"
    status, doc = call(server, "PATCH", "/admin/v1/models/sim-new", as_("platform-admin"),
                       json={"price_out_per_mtok": 2.0})
    assert status == 200 and doc["price_out_per_mtok"] == 2.0
    status, _ = call(server, "POST", "/admin/v1/models/sim-new/disable", as_("platform-admin"))
    assert status == 200
    status, doc = call(server, "POST", "/v1/chat/completions", user,
                       json={"model": "sim-new", "messages": HELLO})
    assert status == 404 and doc["error"]["code"] == "UNKNOWN_MODEL"
    status, doc = call(server, "GET", "/admin/v1/models", as_("read-only"))
    assert {m["id"]: m["enabled"] for m in doc["models"]}["sim-new"] is False


@pytest.mark.parametrize("body, param", [({"id": "m", "provider": "sim", "quality": 7}, "quality"),
                                         ({"id": "m"}, "provider"),
                                         ({"id": "m", "provider": "sim", "context_window": 0}, "context_window")])
def test_a_bad_model_body_is_a_400_naming_the_field(server, body, param):
    status, doc = call(server, "POST", "/admin/v1/models", as_("super-admin"), json=body)
    assert status == 400 and doc["error"]["param"] == param, doc


def test_malformed_json_and_wrong_methods(server):
    status, doc = call(server, "POST", "/admin/v1/models", as_("super-admin"), data=b"{nope")
    assert status == 400 and "malformed JSON" in doc["error"]["message"]
    status, doc = call(server, "DELETE", "/admin/v1/models", as_("super-admin"))
    assert status == 405 and doc["error"]["message"].endswith("use GET, POST")
    status, _ = call(server, "GET", "/admin/v1/models/sim-fast", as_("super-admin"))
    assert status == 405
    status, _ = call(server, "PATCH", "/admin/v1/models/ghost", as_("super-admin"), json={})
    assert status == 404


def test_a_key_created_here_works_once_shown_and_revoke_stops_it(server):
    status, made = call(server, "POST", "/admin/v1/keys", as_("security-admin"),
                        json={"name": "ci", "models": ["sim-fast"]})
    assert status == 201 and made["key"].startswith("atp_")
    status, doc = call(server, "GET", "/v1/models", {"Authorization": f"Bearer {made['key']}"})
    assert status == 200 and [m["id"] for m in doc["data"]] == ["sim-fast"]
    status, doc = call(server, "GET", "/admin/v1/keys", as_("read-only"))
    assert made["id"] in [k["id"] for k in doc["keys"]] and made["key"] not in str(doc)
    status, _ = call(server, "DELETE", f"/admin/v1/keys/{made['id']}", as_("security-admin"))
    assert status == 200
    status, _ = call(server, "GET", "/v1/models", {"Authorization": f"Bearer {made['key']}"})
    assert status == 401
    status, doc = call(server, "DELETE", "/admin/v1/keys/ghost", as_("security-admin"))
    assert status == 404


def test_budgets_can_be_read_and_set_by_a_cost_admin(server):
    status, doc = call(server, "PUT", "/admin/v1/budgets/daily", as_("cost-admin"), json={"usd_per_day": 20})
    assert status == 200 and doc["usd_per_day"] == 20.0
    status, doc = call(server, "GET", "/admin/v1/budgets", as_("read-only"))
    assert status == 200 and doc["budgets"][0]["usd_per_day"] == 20.0
    status, doc = call(server, "GET", "/admin/v1/budgets/spend", as_("read-only"))
    assert status == 200 and "by_tenant" in doc
    status, doc = call(server, "PUT", "/admin/v1/budgets/daily", as_("cost-admin"), json={"usd_per_day": "x"})
    assert status == 400 and doc["error"]["param"] == "usd_per_day"


def test_policies_list_validate_simulate(server):
    status, doc = call(server, "GET", "/admin/v1/policies", as_("read-only"))
    assert status == 200 and doc["default"] in ("allow", "deny")
    status, doc = call(server, "POST", "/admin/v1/policies/validate", as_("read-only"),
                       json={"toml": "[[rules]]\nid = 1\n"})
    assert status == 400 and doc["error"]["param"] == "toml"
    status, doc = call(server, "POST", "/admin/v1/policies/simulate", as_("read-only"),
                       json={"principal": {"tenant": "default"}, "request": {"model": "sim-fast"}})
    assert status == 200 and doc["allowed"] is True


def test_connectivity_test_of_a_model(server):
    status, doc = call(server, "POST", "/admin/v1/models/sim-fast/test", as_("platform-admin"))
    assert status == 200 and doc["ok"] is True and doc["latency_ms"] >= 0


def test_every_admin_change_is_in_the_audit_log(server):
    import sqlite3
    server.app.audit.flush()
    with sqlite3.connect(server.app.audit.path) as db:
        rows = db.execute("SELECT principal, outcome FROM audit WHERE transport = 'admin'").fetchall()
    assert ("admin:platform-admin-bot", "model.add") in rows
    assert ("admin:security-admin-bot", "key.create") in rows
