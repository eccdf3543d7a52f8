"""Attribute-based policy: conditions, priorities, effects, dry-run, files and atomic reload."""
import asyncio
import calendar
import dataclasses
import logging

import pytest

from atp_server.app import App
from atp_server.auth import Principal
from atp_server.policy import KEY_SCOPE, NO_REDACTION, PolicyHolder
from atp_server.policy.rules import PolicyError, load_policy_files
from atp_server.types import AtpError, ChatRequest
from codec.errors import ErrorCode

from .helpers import make_config



@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return list(make_config(tmp_path_factory.mktemp("p")).models)


def holder(models, text: str, **kw) -> PolicyHolder:
    return PolicyHolder.of_rules(text, models, **kw)


def who(tenant="acme", groups=(), user="", attributes=None, models=None) -> Principal:
    return Principal(tenant, "k", "api_key", user, frozenset(groups), attributes or {},
                     None if models is None else frozenset(models), "k-id")


def ask(model=None, text="hello", **kw) -> ChatRequest:
    return ChatRequest([("user", text)], model=model, **kw)


def test_no_rules_allows_everything(models):
    d = holder(models, "").decide(who(), ask(), "http")
    assert d.allowed and d.rule == "default" and d.models is None


def test_the_highest_priority_matching_rule_decides(models):
    h = holder(models, """
[[rules]]
id = "deny-acme"
priority = 10
effect = "deny"
when.tenant = ["acme"]
[[rules]]
id = "allow-admins"
priority = 20
effect = "allow"
when.group = ["admins"]
""")
    assert h.decide(who(groups=["admins"]), ask(), "http").rule == "allow-admins"
    d = h.decide(who(groups=["staff"]), ask(), "http")
    assert not d.allowed and d.rule == "deny-acme"
    assert h.decide(who("globex"), ask(), "http").rule == "default"


@pytest.mark.parametrize("when,principal,request_kw,pii,matches", [
    ('when.user = ["alice"]', who(user="alice"), {}, (), True),
    ('when.user = ["alice"]', who(user="bob"), {}, (), False),
    ('when.key = ["k-id"]', who(), {}, (), True),
    ('"when"."attribute.region" = ["eu"]', who(attributes={"region": "eu"}), {}, (), True),
    ('"when"."attribute.region" = ["eu"]', who(attributes={"region": "us"}), {}, (), False),
    ('when.classification = ["secret"]', who(), {"metadata": {"data_classification": "secret"}}, (), True),
    ('when.classification = ["secret"]', who(attributes={"data_classification": "secret"}), {}, (), True),
    ('when.tool = ["shell"]', who(), {"metadata": {"tools": "search,shell"}}, (), True),
    ('when.capability = ["vision"]', who(), {"capabilities": ("vision",)}, (), True),
    ('when.min_prompt_chars = 100', who(), {"text": "x" * 100}, (), True),
    ('when.min_prompt_chars = 100', who(), {"text": "x" * 99}, (), False),
    ('when.max_prompt_chars = 10', who(), {"text": "x" * 11}, (), False),
    ('when.min_max_tokens = 500', who(), {"max_tokens": 600}, (), True),
    ('when.pii = ["email"]', who(), {}, ("email", "phone"), True),
    ('when.pii = ["email"]', who(), {}, ("phone",), False),
    ('when.pii = ["*"]', who(), {}, ("iban",), True),
    ('when.pii = ["*"]', who(), {}, (), False),
    ('when.transport = ["quic"]', who(), {}, (), False),
    ('when.model = ["sm*"]', who(), {"model": "smart"}, (), True),
    ('when.model = ["sm*"]', who(), {"model": "cheap"}, (), False),
    ('when.provider = ["sim"]', who(), {"model": "cheap"}, (), True),
])
def test_each_condition(models, when, principal, request_kw, pii, matches):
    h = holder(models, f'[[rules]]\nid = "r"\neffect = "deny"\n{when}\n')
    text = request_kw.pop("text", "hello")
    d = h.decide(principal, ask(text=text, **request_kw), "http", pii)
    assert (d.rule == "r") is matches and d.allowed is not matches


def test_time_of_day_and_weekday_conditions(models):
    # 2026-12-05 is a Saturday
    saturday_23h = calendar.timegm((2026, 12, 5, 23, 0, 0))
    h = holder(models, """
[[rules]]
id = "night"
effect = "deny"
when.hours_utc = [22, 6]
[[rules]]
id = "weekend"
effect = "deny"
when.weekdays = ["sat", "sun"]
""", wall=lambda: saturday_23h)
    assert h.decide(who(), ask(), "http").rule == "night"
    h.wall = lambda: saturday_23h - 12 * 3600          # Saturday 11:00
    assert h.decide(who(), ask(), "http").rule == "weekend"
    h.wall = lambda: saturday_23h - 48 * 3600 - 12 * 3600   # Thursday 11:00
    assert h.decide(who(), ask(), "http").allowed


def test_a_model_rule_on_an_unpinned_request_takes_only_that_model_out(models):
    h = holder(models, '[[rules]]\nid = "no-smart"\neffect = "deny"\nwhen.model = ["smart"]\n')
    d = h.decide(who(), ask(), "http")
    assert d.allowed and d.models == {"cheap"}
    pinned = h.decide(who(), ask("smart"), "http")
    assert not pinned.allowed and pinned.rule == "no-smart"


def test_restrict_models_then_allow(models):
    h = holder(models, """
[[rules]]
id = "acme-cheap"
priority = 5
effect = "restrict_models"
models = ["cheap"]
when.tenant = ["acme"]
""")
    assert h.decide(who(), ask(), "http").models == {"cheap"}
    d = h.decide(who(), ask("smart"), "http")
    assert not d.allowed and d.rule == "acme-cheap"
    assert h.decide(who("globex"), ask("smart"), "http").allowed


def test_the_keys_model_scope_applies_on_top(models):
    h = holder(models, "")
    d = h.decide(who(models=["cheap"]), ask("smart"), "http")
    assert not d.allowed and d.rule == KEY_SCOPE
    assert h.decide(who(models=["cheap"]), ask(), "http").models == {"cheap"}


def test_require_redaction_fails_closed_without_a_redaction_stage(models):
    text = '[[rules]]\nid = "redact-pii"\neffect = "require_redaction"\nwhen.pii = ["*"]\n'
    h = holder(models, text)
    d = h.decide(who(), ask(), "http", ("email",))
    assert not d.allowed and d.rule == NO_REDACTION and d.redact
    h.redaction_available = True
    d = h.decide(who(), ask(), "http", ("email",))
    assert d.allowed and d.redact and d.matched == ("redact-pii",)
    assert not h.decide(who(), ask(), "http", ()).redact


@pytest.mark.parametrize("text,key", [
    ('[[rules]]\neffect = "deny"\n', "rules[0].id"),
    ('[[rules]]\nid = "a"\neffect = "maybe"\n', "rules[0].effect"),
    ('[[rules]]\nid = "a"\neffect = "deny"\nwhen.colour = ["red"]\n', "rules[0].when.colour"),
    ('[[rules]]\nid = "a"\neffect = "deny"\nwhen.tenant = []\n', "rules[0].when.tenant"),
    ('[[rules]]\nid = "a"\neffect = "deny"\nwhen.hours_utc = [1]\n', "rules[0].when.hours_utc"),
    ('[[rules]]\nid = "a"\neffect = "deny"\nwhen.weekdays = ["funday"]\n', "rules[0].when.weekdays"),
    ('[[rules]]\nid = "a"\neffect = "restrict_models"\nmodels = ["ghost"]\n', "rules[0].models"),
    ('[[rules]]\nid = "a"\neffect = "deny"\nmodels = ["cheap"]\n', "rules[0].models"),
    ('[[rules]]\nid = "a"\neffect = "deny"\n[[rules]]\nid = "a"\neffect = "allow"\n', "rules[1].id"),
    ('default = "perhaps"\n', "default"),
    ('[models.ghost]\nregion = "eu"\n', "models.ghost"),
    ('rule = []\n', "rule"),
])
def test_a_bad_policy_file_names_the_file_and_key(tmp_path, models, text, key):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy_files([path], frozenset(m.id for m in models), {"default": "allow",
                          "max_prompt_chars": 1, "max_tokens": 1})
    assert str(info.value).startswith(f"{path}: {key}"), str(info.value)


def test_region_comes_from_the_policy_files_model_attributes(tmp_path, models):
    path = tmp_path / "p.toml"
    path.write_text('[models.smart]\nregion = "us"\n[[rules]]\nid = "eu-only"\neffect = "deny"\n'
                    'when.region = ["us"]\n"when"."attribute.residency" = ["eu"]\n')
    policy = load_policy_files([path], frozenset(m.id for m in models),
                               {"default": "allow", "max_prompt_chars": 10**6, "max_tokens": 10**6})
    h = PolicyHolder(policy, [path], {m.id: m for m in models})
    eu = who(attributes={"residency": "eu"})
    assert h.decide(eu, ask(), "http").models == {"cheap"}
    assert not h.decide(eu, ask("smart"), "http").allowed
    assert h.decide(who(), ask("smart"), "http").allowed


# ---- in the pipeline ------------------------------------------------------------------------------

def app_with_policy(tmp_path, text: str, dry_run: bool = False) -> App:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    cfg = make_config(tmp_path)
    return App(dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, files=(str(path),),
                                                                   dry_run=dry_run)))


DENY_ACME = '[[rules]]\nid = "deny-acme"\neffect = "deny"\nreason = "acme is suspended"\nwhen.tenant = ["acme"]\n'


def run(app, principal, request):
    async def go():
        try:
            return await app.pipeline.complete(request, principal, "test")
        finally:
            await app.stop(0)
    return asyncio.run(go())


def test_a_denial_is_policy_denied_with_the_rule_and_reason(tmp_path):
    app = app_with_policy(tmp_path, DENY_ACME)
    with pytest.raises(AtpError) as info:
        run(app, who(), ask())
    assert info.value.code == ErrorCode.POLICY_DENIED
    assert "acme is suspended" in info.value.message and "deny-acme" in info.value.message


def test_dry_run_logs_and_lets_the_request_through(tmp_path, caplog):
    app = app_with_policy(tmp_path, DENY_ACME, dry_run=True)
    seen = []
    app.pipeline.observers.append(lambda rid, t, outcome, code: seen.append(outcome))
    with caplog.at_level(logging.WARNING, "atp.policy"):
        c = run(app, who(), ask())
    assert c.text and seen == ["ok"]
    assert "would deny" in caplog.text and "deny-acme" in caplog.text


def test_routing_stays_within_a_restriction_and_route_rpc_agrees(tmp_path):
    app = app_with_policy(tmp_path, '[[rules]]\nid = "r"\neffect = "restrict_models"\n'
                                    'models = ["cheap"]\nwhen.tenant = ["acme"]\n')
    d = app.pipeline.route(ask(tier="high"), who())
    assert d.model == "cheap" and d.fallbacks == ()
    assert app.pipeline.route(ask(tier="high"), who("globex")).model == "smart"


def test_reload_is_atomic_a_bad_file_keeps_the_old_rules(tmp_path):
    app = app_with_policy(tmp_path, DENY_ACME)
    path = tmp_path / "policy.toml"
    path.write_text('[[rules]]\nid = "x"\neffect = "sometimes"\n')
    assert app.reloader.reload() is False
    assert "policy" in app.reloader.last_error and "rules[0].effect" in app.reloader.last_error
    assert not app.policy.decide(who(), ask(), "t").allowed       # the old rule stands
    path.write_text("")
    assert app.reloader.reload() is True
    assert app.policy.decide(who(), ask(), "t").allowed


def test_a_single_tenant_string_is_one_name_not_a_substring(models):
    h = holder(models, '[[rules]]\nid = "r"\neffect = "deny"\nwhen.tenant = "acme-corp"\n')
    assert not h.decide(who("acme-corp"), ask(), "http").allowed
    assert h.decide(who("acme"), ask(), "http").allowed


def test_decisions_are_audited_and_counted_by_rule(tmp_path):
    app = app_with_policy(tmp_path, DENY_ACME, dry_run=True)
    rows = []
    record = app.audit.record
    app.audit.record = lambda *a: (rows.append(a), record(*a))
    run(app, who(), ask())
    run(app, who("globex"), ask())
    details = [r[-1] for r in rows]
    assert details[0]["policy_rule"] == "deny-acme" and details[0]["policy"] == "deny"
    assert details[0]["policy_dry_run"] is True
    assert details[1]["policy_rule"] == "default" and details[1]["policy"] == "allow"
    text = app.metrics.render().decode()
    assert 'atp_policy_decisions_total{rule="deny-acme",verdict="dry_run_deny"} 1.0' in text
    assert 'atp_policy_decisions_total{rule="default",verdict="allow"} 1.0' in text
