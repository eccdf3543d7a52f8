"""[redaction] and [guard]: defaults, per-tenant overrides, errors that name the key."""
import pytest

from atp_server import config
from atp_server.config import ConfigError
from atp_server.redaction.settings import ALL_TYPES


def load(extra: str):
    return config.loads(config.DEFAULT_TOML + extra)


def test_off_by_default():
    cfg = load("")
    assert not cfg.redaction.enabled and not cfg.guard.enabled
    assert cfg.redaction.rule("anyone").mode == "off"


def test_tenant_overrides_inherit_what_they_leave_out():
    cfg = load("""
[redaction]
mode = "restore"
types = ["email", "card"]
[redaction.tenants.bank]
mode = "block"
[redaction.tenants.lab]
types = ["secret"]
[guard]
mode = "tag"
[guard.tenants.bank]
mode = "block"
threshold = 0.3
""")
    r = cfg.redaction
    assert r.enabled
    assert (r.rule("other").mode, r.rule("other").types) == ("restore", frozenset({"email", "card"}))
    assert (r.rule("bank").mode, r.rule("bank").types) == ("block", frozenset({"email", "card"}))
    assert (r.rule("lab").mode, r.rule("lab").types) == ("restore", frozenset({"secret"}))
    assert cfg.guard.rule("x").mode == "tag" and cfg.guard.rule("x").threshold == 0.5
    assert (cfg.guard.rule("bank").mode, cfg.guard.rule("bank").threshold) == ("block", 0.3)


def test_only_one_tenant_on_is_enough_for_the_stage():
    cfg = load('[redaction.tenants.bank]\nmode = "redact"\n')
    assert cfg.redaction.enabled and cfg.redaction.rule("bank").types == ALL_TYPES
    assert cfg.redaction.rule("other").mode == "off"


@pytest.mark.parametrize("extra, key", [
    ('[redaction]\nmode = "mask"\n', "redaction.mode"),
    ('[redaction]\ntypes = ["email", "passport"]\n', "redaction.types[1]"),
    ('[redaction]\ntypes = "email"\n', "redaction.types"),
    ('[redaction]\nmodes = "redact"\n', "redaction.modes"),
    ('[redaction.tenants.acme]\nmode = "nope"\n', "redaction.tenants.acme.mode"),
    ('[redaction.tenants.acme]\ntenants = {}\n', "redaction.tenants.acme.tenants"),
    ('[redaction]\ntenants = 3\n', "redaction.tenants"),
    ('[guard]\nthreshold = 0\n', "guard.threshold"),
    ('[guard]\nthreshold = true\n', "guard.threshold"),
    ('[guard]\nmode = "redact"\n', "guard.mode"),
    ('[guard.tenants.a]\ntypes = ["email"]\n', "guard.tenants.a.types"),
])
def test_invalid_keys_are_named(extra, key):
    with pytest.raises(ConfigError) as e:
        load(extra)
    assert str(e.value).startswith(key + ":")
