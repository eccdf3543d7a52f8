"""The admin API's logic (admin.py) on a real App: roles, live model-table swaps, keys, budgets,
policy simulation, audit of every change, persistence to the state dir, precise 400s."""
import asyncio
import hashlib
import json
import signal
import sqlite3

import pytest

from atp_server import config
from atp_server.admin import PERMISSIONS, ROLES, STATE_FILE, Admin, Identity, spec_json
from atp_server.app import App
from atp_server.types import AtpError, ChatRequest

from .helpers import PRINCIPAL, make_config

ADMIN_KEYS = "".join(f"""
[[admin.keys]]
name = "{role}"
role = "{role}"
sha256 = "{hashlib.sha256(role.encode()).hexdigest()}"
""" for role in ROLES)
BUDGET = '\n[[limits]]\nname = "daily"\nusd_per_day = 5.0\n'
SUPER = Identity("root", "super-admin")
NEW_MODEL = {"id": "fresh", "provider": "sim", "price_in_per_mtok": 0.01, "price_out_per_mtok": 0.02,
             "quality": 0.99, "latency_ms": 1}


def build(tmp_path, extra: str = "") -> App:
    return App(make_config(tmp_path, extra=ADMIN_KEYS + BUDGET + extra),
               audit_path=str(tmp_path / "audit.sqlite"))


@pytest.fixture
def app(tmp_path):
    return build(tmp_path)


def audit_rows(app) -> list[tuple]:
    app.audit.flush()
    with sqlite3.connect(app.audit.path) as db:
        return db.execute("SELECT principal, transport, model, outcome, record FROM audit "
                          "WHERE transport = 'admin' ORDER BY seq").fetchall()


def fault(fn, *args) -> AtpError:
    with pytest.raises(AtpError) as err:
        fn(*args)
    return err.value


def test_admin_keys_map_to_their_roles_and_others_are_refused(app):
    admin: Admin = app.service.admin
    assert admin.authenticate("Bearer cost-admin") == Identity("cost-admin", "cost-admin")
    for bad in (None, "Bearer nope", "Basic cost-admin", f"Bearer {config.DEV_API_KEY}"):
        assert fault(admin.authenticate, bad).name == "UNAUTHENTICATED"


@pytest.mark.parametrize("role", ROLES)
def test_the_permission_matrix_is_enforced_for_every_role(app, role):
    for action, roles in PERMISSIONS.items():
        who = Identity(role, role)
        if role == "super-admin" or role in roles:
            app.service.admin.authorize(who, action)
        else:
            exc = fault(app.service.admin.authorize, who, action)
            assert exc.status == 403 and action in exc.message
    assert ("read-only" in PERMISSIONS["models.write"]) is False


def test_an_unknown_admin_role_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(config.ConfigError, match=r"admin.keys\[0\].role"):
        make_config(tmp_path, extra='[[admin.keys]]\nname = "x"\nrole = "boss"\nsha256 = "' + "a" * 64 + '"\n')
    with pytest.raises(config.ConfigError, match=r"admin.keys\[0\].sha256"):
        make_config(tmp_path, extra='[[admin.keys]]\nname = "x"\nrole = "read-only"\nsha256 = "zz"\n')


def test_adding_a_model_swaps_the_live_table_and_is_audited(app):
    table = app.router.table
    app.service.admin.add_model(SUPER, NEW_MODEL)
    assert app.router.table is not table and "fresh" in app.router.table.index
    d = app.pipeline.route(ChatRequest([("user", "hi")], model="fresh"), PRINCIPAL)
    assert d.model == "fresh"
    principal, transport, target, action, detail = audit_rows(app)[-1]
    detail = json.loads(detail)
    assert (principal, transport, target, action) == ("admin:root", "admin", "fresh", "model.add")
    assert detail["before"] is None and detail["after"]["quality"] == 0.99 and detail["role"] == "super-admin"


def test_a_new_model_answers_requests_through_the_pipeline(app):
    app.service.admin.add_model(SUPER, NEW_MODEL)

    async def go():
        return await app.pipeline.complete(ChatRequest([("user", "hi")], model="fresh"), PRINCIPAL, "test")
    assert asyncio.run(go()).decision.model == "fresh"
    assert "fresh" in app.metrics._model_labels       # counted under its own id, not "unknown"


@pytest.mark.parametrize("body, param", [
    ({"id": "x"}, "provider"), ({"id": "x", "provider": "nope"}, "provider"),
    ({"id": "x", "provider": "sim", "quality": 3}, "quality"),
    ({"id": "x", "provider": "sim", "price_in_per_mtok": "cheap"}, "price_in_per_mtok"),
    ({"id": "x", "provider": "sim", "colour": "red"}, "colour"), ([1, 2], None)])
def test_a_bad_model_is_a_400_naming_the_field(app, body, param):
    exc = fault(app.service.admin.add_model, SUPER, body)
    assert exc.status == 400 and exc.param == param, exc.message
    assert "x" not in app.router.table.index


def test_update_disable_enable_change_the_router_live(app):
    admin = app.service.admin
    admin.update_model(SUPER, "cheap", {"price_in_per_mtok": 9.0})
    assert app.router.models["cheap"].price_in_per_mtok == 9.0
    admin.set_enabled(SUPER, "cheap", False)
    assert "cheap" not in app.router.table.index
    assert [m["enabled"] for m in admin.models() if m["id"] == "cheap"] == [False]
    with pytest.raises(AtpError):
        app.pipeline.route(ChatRequest([("user", "hi")], model="cheap"), PRINCIPAL)
    exc = fault(admin.set_enabled, SUPER, "smart", False)       # the last enabled model
    assert exc.status == 400 and "at least one model" in exc.message and "smart" in app.router.table.index
    admin.set_enabled(SUPER, "cheap", True)
    assert "cheap" in app.router.table.index
    assert [r[3] for r in audit_rows(app)] == ["model.update", "model.disable", "model.enable"]
    assert fault(admin.update_model, SUPER, "ghost", {}).status == 404
    assert fault(admin.update_model, SUPER, "cheap", {"id": "other"}).param == "id"


def test_changes_persist_to_the_state_dir_and_survive_a_restart(tmp_path):
    app = build(tmp_path)
    app.service.admin.add_model(SUPER, NEW_MODEL)
    app.service.admin.set_enabled(SUPER, "cheap", False)
    app.service.admin.set_budget(SUPER, "daily", {"usd_per_day": 7.5})
    assert (tmp_path / STATE_FILE).exists()
    again = build(tmp_path)
    assert "fresh" in again.router.table.index and "cheap" not in again.router.table.index
    assert again.limit_stage.rules[0].usd_per_day == 7.5
    saved = json.loads((tmp_path / STATE_FILE).read_text())
    assert set(saved["models"]) == {"fresh", "cheap"}       # only what differs from the config


def test_a_bad_state_file_is_skipped_not_fatal(tmp_path):
    (tmp_path / STATE_FILE).write_text('{"models": {"x": {"id": "x", "provider": "gone"}}}')
    app = build(tmp_path)
    assert set(app.router.table.index) == {"cheap", "smart"}
    (tmp_path / STATE_FILE).write_text("not json")
    assert set(build(tmp_path).router.table.index) == {"cheap", "smart"}


def test_key_create_shows_the_key_once_and_revoke_stops_it(app):
    admin = app.service.admin
    made = admin.create_key(SUPER, {"name": "ci", "tenant": "default", "models": ["cheap"]})
    principal = app.auth.api_key(f"Bearer {made['key']}")
    assert principal.models == frozenset({"cheap"})
    listed = admin.keys()
    assert [k["name"] for k in listed] == ["ci"] and "key" not in listed[0]
    assert "digest" not in json.dumps(listed)
    admin.revoke_key(SUPER, made["id"])
    assert fault(app.auth.api_key, f"Bearer {made['key']}").name == "UNAUTHENTICATED"
    assert [r[3] for r in audit_rows(app)] == ["key.create", "key.revoke"]
    assert made["key"] not in json.dumps(audit_rows(app))     # the key itself is never audited


@pytest.mark.parametrize("body, param", [({"name": 3}, "name"), ({"name": "a", "models": ["ghost"]}, "models"),
                                         ({"name": "a", "tenant": ""}, "tenant"),
                                         ({"name": "a", "groups": [""]}, "groups"),
                                         ({"name": "a", "expires_days": -1}, "expires_days"),
                                         ({"name": "a", "colour": 1}, "colour")])
def test_a_bad_key_request_is_a_400_naming_the_field(app, body, param):
    exc = fault(app.service.admin.create_key, SUPER, body)
    assert exc.status == 400 and exc.param == param, exc.message


def test_set_budget_is_enforced_at_once_and_shows_spend(app):
    admin = app.service.admin
    admin.set_budget(SUPER, "daily", {"usd_per_day": 0.000001})

    async def go():
        with pytest.raises(AtpError) as err:
            await app.pipeline.complete(ChatRequest([("user", "hi")], model="smart"), PRINCIPAL, "test")
        return err.value, await admin.budget_list()
    exc, budgets = asyncio.run(go())
    assert exc.name == "BUDGET_EXCEEDED"
    assert budgets[0]["usd_per_day"] == 0.000001 and budgets[0]["spend"][0]["subject"] == "default"
    for body, param in (({"usd_per_day": -1}, "usd_per_day"), ({"colour": 1}, "colour"),
                        ({"requests_per_min": 1.5}, "requests_per_min")):
        assert fault(admin.set_budget, SUPER, "daily", body).param == param
    assert fault(admin.set_budget, SUPER, "ghost", {}).status == 404
    assert [r[3] for r in audit_rows(app)] == ["budget.set"]


def test_policy_validate_and_simulate(app):
    admin = app.service.admin
    ok = admin.validate_policy({"toml": '[[rules]]\nid = "r"\neffect = "deny"\nwhen.tenant = ["x"]\n'})
    assert ok == {"valid": True, "rules": ["r"]}
    assert fault(admin.validate_policy, {"toml": "[[rules]]\nid = 3\n"}).param == "toml"
    assert fault(admin.validate_policy, {"toml": "not = [toml"}).param == "toml"
    wall = app.policy.wall
    result = admin.simulate_policy({"principal": {"tenant": "default"}, "request": {"model": "cheap"},
                                    "time": "2026-12-05T23:00:00Z"})
    assert result["allowed"] is True and app.policy.wall is wall     # the live clock untouched
    assert fault(admin.simulate_policy, {"principal": {"tenant": 5}}).param == "principal.tenant"


def test_connectivity_tests_report_the_provider(app):
    admin = app.service.admin
    assert asyncio.run(admin.test_model("cheap"))["ok"] is True
    assert asyncio.run(admin.test_provider("sim"))["ok"] is True
    with pytest.raises(AtpError):
        asyncio.run(admin.test_provider("ghost"))


def test_another_worker_follows_a_change_on_reload(tmp_path):
    """Two Apps on one state dir stand for two workers: B reloads (SIGHUP) and serves A's change."""
    a, b = build(tmp_path), build(tmp_path)
    a.service.admin.add_model(SUPER, NEW_MODEL)
    a.service.admin.set_budget(SUPER, "daily", {"usd_per_day": 3.0})
    made = a.service.admin.create_key(SUPER, {"name": "w"})
    assert "fresh" not in b.router.table.index
    assert b.reloader.reload()
    assert "fresh" in b.router.table.index and b.limit_stage.rules[0].usd_per_day == 3.0
    assert b.auth.api_key(f"Bearer {made['key']}").name == "w"


def test_a_change_signals_the_worker_parent(tmp_path, monkeypatch):
    app = build(tmp_path)
    app.pid_owner = 4242
    sent = []
    monkeypatch.setattr("atp_server.admin.os.kill", lambda pid, sig: sent.append((pid, sig)))
    app.service.admin.set_enabled(SUPER, "cheap", False)
    assert sent == [(4242, signal.SIGHUP)]


def test_a_reload_that_would_disable_every_model_is_refused(tmp_path):
    app = build(tmp_path)
    (tmp_path / STATE_FILE).write_text(json.dumps({"models": {
        i: {**spec_json(s), "enabled": False} for i, s in app.router.models.items()}}))
    assert not app.reloader.reload()
    assert set(app.router.table.index) == {"cheap", "smart"}
