"""HMAC signature keys in the `atp keys` store (hmac_keys.py): ids, one tenant each, secrets
encrypted at rest, revocable/expiring/rotatable, picked up by reload; the CLI around them."""
import json
import os
import time

import pytest

from atp_server import cli
from atp_server.auth import (SIG_KEY_ID, SIG_NONCE, SIG_SIGNATURE, SIG_TIMESTAMP, Authenticator,
                             Principal, sign_request)
from atp_server.config import AuthConfig
from atp_server.hmac_keys import MASTER_FILE, HmacKeyFile, hmac_path
from atp_server.tenants import KeyStoreError
from atp_server.types import AtpError
from codec.errors import ErrorCode

ACME = Principal("acme", "k", "api_key")
GLOBEX = Principal("globex", "g", "api_key")
_nonces = iter(range(1, 1 << 30))


@pytest.fixture
def store(tmp_path):
    return HmacKeyFile(hmac_path(tmp_path / "keys.json"), frozenset({"acme", "globex", "default"}))


def auth_for(store) -> Authenticator:
    return Authenticator(AuthConfig(), keys_path=store.path.with_name("keys.json"))


def signed(auth, kid: int, secret: bytes, principal=ACME, body=b"{}"):
    now = int(time.time() * 1000)
    nonce = f"{next(_nonces):016x}"
    headers = {SIG_KEY_ID: str(kid), SIG_TIMESTAMP: str(now), SIG_NONCE: nonce,
               SIG_SIGNATURE: sign_request(secret, "POST", "/v1/chat/completions", now, nonce, body)}
    auth.check_signature(headers, "POST", "/v1/chat/completions", body, now, principal)


def code_of(fn) -> ErrorCode:
    with pytest.raises(AtpError) as info:
        fn()
    return info.value.code


def test_the_secret_is_stored_encrypted_and_owner_only(store):
    secret, rec = store.create("signer", "acme")
    raw = store.path.read_text()
    assert secret.hex() not in raw and str(rec.id) in raw and rec.id >= 1 << 31
    assert oct(store.path.stat().st_mode)[-3:] == "600"
    assert oct((store.path.parent / MASTER_FILE).stat().st_mode)[-3:] == "600"
    assert store.secrets() == {rec.id: ("acme", secret, None)}


def test_a_stored_key_verifies_for_its_tenant_only(store):
    secret, rec = store.create("signer", "acme")
    auth = auth_for(store)
    signed(auth, rec.id, secret)
    assert code_of(lambda: signed(auth, rec.id, secret, GLOBEX)) == ErrorCode.FORBIDDEN
    assert code_of(lambda: signed(auth, rec.id, b"x" * 32)) == ErrorCode.BAD_SIGNATURE
    assert auth.session_principal(rec.id).tenant == "acme"


def test_revocation_and_creation_take_effect_at_reload(store):
    secret, rec = store.create("signer", "acme")
    auth = auth_for(store)
    new_secret, new = store.create("second", "acme")
    assert code_of(lambda: signed(auth, new.id, new_secret)) == ErrorCode.UNKNOWN_KEY
    store.revoke(str(rec.id))
    signed(auth, rec.id, secret)                       # not reloaded yet
    auth.prepare_reload()()
    assert code_of(lambda: signed(auth, rec.id, secret)) == ErrorCode.UNKNOWN_KEY
    signed(auth, new.id, new_secret)


def test_rotation_keeps_the_old_key_for_the_grace(store):
    secret, rec = store.create("signer", "acme")
    new_secret, new = store.rotate("signer", grace_s=3600)
    auth = auth_for(store)
    assert new.id != rec.id and new.tenant == "acme"
    signed(auth, rec.id, secret)
    signed(auth, new.id, new_secret)
    store.rotate(str(new.id), grace_s=0)               # the second one now expires at once
    auth.prepare_reload()()
    assert code_of(lambda: signed(auth, new.id, new_secret)) == ErrorCode.UNKNOWN_KEY


def test_a_record_moved_to_another_tenant_does_not_decrypt_and_reload_is_refused(store):
    secret, rec = store.create("signer", "acme")
    auth = auth_for(store)
    doc = json.loads(store.path.read_text())
    doc["hmac_keys"][0]["tenant"] = "globex"
    store.path.write_text(json.dumps(doc))
    with pytest.raises(KeyStoreError, match="does not decrypt"):
        auth.prepare_reload()
    signed(auth, rec.id, secret)                       # the old keys stay in force


def test_a_missing_master_key_is_named(store):
    store.create("signer", "acme")
    (store.path.parent / MASTER_FILE).unlink()
    with pytest.raises(KeyStoreError, match=MASTER_FILE):
        store.secrets()


def test_a_configured_id_cannot_be_reused(store):
    _, rec = store.create("signer", "acme")
    with pytest.raises(KeyStoreError, match="also in"):
        store.secrets({rec.id})


def test_the_cli_creates_lists_rotates_and_revokes_hmac_keys(tmp_path, capsys):
    from atp_server import config as atp_config
    cfg = tmp_path / "atp.toml"
    cfg.write_text(atp_config.DEFAULT_TOML.replace("[server]\n", f'[server]\nstate_dir = "{tmp_path}"\n', 1))
    assert cli.main(["keys", "create", "--hmac", "--config", str(cfg), "--tenant", "default",
                     "--name", "signer", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["kind"] == "hmac" and len(bytes.fromhex(made["secret_hex"])) == 32
    assert made["secret_hex"] not in (tmp_path / "hmac_keys.json").read_text()
    assert cli.main(["keys", "rotate", "--hmac", "--config", str(cfg), "signer", "--json"]) == 0
    rotated = json.loads(capsys.readouterr().out)
    assert cli.main(["keys", "revoke", "--hmac", "--config", str(cfg), str(rotated["id"])]) == 0
    assert "secret" not in capsys.readouterr().out
    assert cli.main(["keys", "list", "--config", str(cfg), "--json"]) == 0
    rows = {r["id"]: r["state"] for r in json.loads(capsys.readouterr().out) if r["kind"] == "hmac"}
    assert rows == {made["id"]: "expired", rotated["id"]: "revoked"}
    assert cli.main(["keys", "create", "--hmac", "--config", str(cfg), "--tenant", "default",
                     "--name", "x", "--model", "m"]) == 2
    assert "apply to API keys" in capsys.readouterr().err


def test_several_workers_are_refused_while_the_store_holds_hmac_keys(tmp_path):
    from atp_server import config as atp_config
    text = atp_config.DEFAULT_TOML.replace("[server]\n", f'[server]\nstate_dir = "{tmp_path}"\n', 1)
    text = text.replace(atp_config.dev_auth_toml(), atp_config.dev_auth_toml(hmac=False))
    cfg = atp_config.loads(text)
    atp_config.check_workers(cfg, 2, "--workers")             # no HMAC key anywhere: fine
    store = HmacKeyFile(hmac_path(tmp_path / "keys.json"))
    _, rec = store.create("signer", "default")
    with pytest.raises(atp_config.ConfigError, match="anti-replay"):
        atp_config.check_workers(cfg, 2, "--workers")
    store.revoke(str(rec.id))
    atp_config.check_workers(cfg, 2, "--workers")
