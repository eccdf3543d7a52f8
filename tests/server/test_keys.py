"""The API-key store (`atp keys`): shown once, salted hashes, revocable, expiring, scoped; reload."""
import json

import pytest

from atp_server.auth import Authenticator
from atp_server.config import AuthConfig
from atp_server.tenants import KeyFile, KeyStoreError, Tenant, load_keys, split_token
from atp_server.types import AtpError
from codec.errors import ErrorCode


@pytest.fixture
def store(tmp_path):
    return KeyFile(tmp_path / "keys.json", frozenset({"acme", "globex", "default"}))


def auth_for(store, tenants=()) -> Authenticator:
    return Authenticator(AuthConfig(), keys_path=store.path, tenants=tenants)


def test_a_created_key_is_stored_as_a_salted_hash_only(store):
    token, rec = store.create("ci", "acme")
    raw = store.path.read_text()
    assert split_token(token)[0] == rec.id
    assert split_token(token)[1] not in raw and token not in raw      # shown once, never stored
    doc = json.loads(raw)["api_keys"][0]
    assert doc["digest"] != doc["salt"] and len(doc["salt"]) == 32
    other, rec2 = store.create("ci2", "acme")
    assert rec2.salt != rec.salt and oct(store.path.stat().st_mode)[-3:] == "600"


def test_a_store_key_authenticates_as_its_tenant_user_and_groups(store):
    token, rec = store.create("ci", "acme", user="alice", groups=["ci"], models=["m1"])
    tenants = (Tenant("acme", {"region": "eu"}, {"alice": frozenset({"admins"})}),)
    p = auth_for(store, tenants).api_key(f"Bearer {token}")
    assert (p.tenant, p.name, p.key_id, p.user) == ("acme", "ci", rec.id, "alice")
    assert p.groups == {"ci", "admins"} and p.attributes == {"region": "eu"}
    assert p.models == {"m1"}


@pytest.mark.parametrize("mangle", [lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
                                    lambda t: t.replace("atp_", "atp_0", 1),
                                    lambda t: "atp_000000000000_" + t.split("_", 2)[2]])
def test_a_wrong_secret_or_id_is_unauthenticated(store, mangle):
    token, _ = store.create("ci", "acme")
    auth = auth_for(store)
    with pytest.raises(AtpError) as info:
        auth.api_key(f"Bearer {mangle(token)}")
    assert info.value.code == ErrorCode.UNAUTHENTICATED


def test_revocation_takes_effect_at_reload_even_for_a_cached_key(store):
    token, rec = store.create("ci", "acme")
    auth = auth_for(store)
    assert auth.api_key(f"Bearer {token}").tenant == "acme"      # now cached
    store.revoke("ci")
    assert auth.api_key(f"Bearer {token}").tenant == "acme"      # not reloaded yet
    auth.prepare_reload()()
    with pytest.raises(AtpError) as info:
        auth.api_key(f"Bearer {token}")
    assert info.value.code == ErrorCode.UNAUTHENTICATED and "revoked" in info.value.message


def test_an_expired_key_is_refused_even_from_the_cache(store, monkeypatch):
    import atp_server.auth as auth_module
    now = [1_000.0]
    monkeypatch.setattr(auth_module.time, "time", lambda: now[0])
    token, _ = store.create("ci", "acme", expires=1_010.0, now=1_000.0)
    auth = auth_for(store)
    assert auth.api_key(f"Bearer {token}").tenant == "acme"
    now[0] = 1_010.0
    with pytest.raises(AtpError) as info:
        auth.api_key(f"Bearer {token}")
    assert "expired" in info.value.message


def test_rotation_issues_a_new_key_and_retires_the_old_after_the_grace(store):
    old_token, old = store.create("ci", "acme", models=["m1"])
    new_token, new = store.rotate("ci", grace_s=60, now=5_000.0)
    assert new.id != old.id and (new.name, new.tenant, new.models) == ("ci", "acme", ("m1",))
    keys = load_keys(store.path)
    assert keys[old.id].expires == 5_060.0 and keys[new.id].expires is None
    with pytest.raises(KeyStoreError, match="2 active keys"):
        store.revoke("ci")                       # ambiguous by name: give the id
    store.revoke(old.id)


def test_unknown_tenant_and_unknown_key_are_refused_by_name(store):
    with pytest.raises(KeyStoreError, match="tenant: 'nope'"):
        store.create("ci", "nope")
    with pytest.raises(KeyStoreError, match="no active key"):
        store.revoke("ghost")


@pytest.mark.parametrize("field,kwargs", [("groups", {"groups": ["ci", ""]}),
                                          ("models", {"models": [""]})])
def test_an_empty_group_or_model_name_is_refused_and_nothing_is_written(store, field, kwargs):
    # The loader refuses such a file (a list of non-empty strings): a key created with one would
    # make the whole store unreadable at the next reload.
    store.create("ci", "acme")
    before = store.path.read_text()
    with pytest.raises(KeyStoreError, match=f"^{field}: "):
        store.create("ci2", "acme", **kwargs)
    assert store.path.read_text() == before
    assert [k.name for k in load_keys(store.path).values()] == ["ci"]


@pytest.mark.parametrize("edit,key", [
    (lambda d: d["api_keys"][0].update(tenant="nope"), "api_keys[0].tenant"),
    (lambda d: d["api_keys"][0].update(salt="zz"), "api_keys[0].salt"),
    (lambda d: d["api_keys"][0].pop("digest"), "api_keys[0].digest"),
    (lambda d: d.update(format=9), "format"),
    (lambda d: d["api_keys"].append(dict(d["api_keys"][0])), "api_keys[1].id"),
])
def test_a_bad_keys_file_is_refused_by_reload_and_the_old_keys_stay(store, edit, key):
    token, _ = store.create("ci", "acme")
    auth = auth_for(store, (Tenant("acme"),))
    doc = json.loads(store.path.read_text())
    edit(doc)
    store.path.write_text(json.dumps(doc))
    with pytest.raises(KeyStoreError) as info:
        auth.prepare_reload()
    assert key in str(info.value)
    assert auth.api_key(f"Bearer {token}").tenant == "acme"      # still in force


def test_a_file_that_is_not_json_names_the_file(store):
    store.path.write_text("{")
    with pytest.raises(KeyStoreError, match="keys.json: not JSON"):
        load_keys(store.path)
