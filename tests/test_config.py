"""atp.example.toml stays loadable, and invalid configurations fail with errors naming the key."""
import asyncio
import hashlib
from pathlib import Path

import pytest

from atp_server import config
from atp_server.app import App

EXAMPLE = Path(__file__).resolve().parent.parent / "atp.example.toml"
MINIMAL = """
[[providers]]
name = "sim"
type = "simulated"

[[models]]
id = "m"
provider = "sim"
"""


@pytest.fixture
def example_env(monkeypatch):
    monkeypatch.setenv("ATP_CI_API_KEY", "sk-ci-example")
    monkeypatch.setenv("ATP_HMAC_SECRET", "an-example-secret-of-32-bytes!!!")


def test_example_config_loads_and_builds(example_env, tmp_path):
    cfg = config.load(EXAMPLE)
    assert cfg.server.http_port == 8470 and cfg.server.drain_seconds == 10.0
    keys = {k.name: k for k in cfg.auth.api_keys}
    assert keys["dev"].sha256 == hashlib.sha256(config.DEV_API_KEY.encode()).hexdigest()
    assert keys["ci"].sha256 == hashlib.sha256(b"sk-ci-example").hexdigest()
    assert {k.id: k.secret for k in cfg.auth.hmac_keys}[2] == b"an-example-secret-of-32-bytes!!!"
    local = cfg.provider("local")
    assert local.type == "openai_compat" and local.options["base_url"] == "http://127.0.0.1:8000/v1"
    models = {m.id: m for m in cfg.models}
    assert models["local-qwen"].upstream == "qwen2.5-0.5b-instruct"
    assert models["sim-fast"].upstream == "sim-fast"

    async def build():   # provider options are checked when the adapters are built
        app = App(cfg, audit_path=str(tmp_path / "audit.sqlite"))
        names = sorted(app.adapters)
        await app.stop(0)
        return names
    assert asyncio.run(build()) == ["local", "sim"]


def test_example_config_names_missing_environment(monkeypatch):
    monkeypatch.delenv("ATP_CI_API_KEY", raising=False)
    monkeypatch.setenv("ATP_HMAC_SECRET", "an-example-secret-of-32-bytes!!!")
    with pytest.raises(config.ConfigError, match=r"auth\.api_keys\[1\]\.key_env.*ATP_CI_API_KEY"):
        config.load(EXAMPLE)


@pytest.mark.parametrize("toml,key", [
    ("[server]\nhttp_port = 70000\n" + MINIMAL, "server.http_port"),
    ("[server]\nhttp_port = \"8470\"\n" + MINIMAL, "server.http_port"),
    ("[server]\nbogus = 1\n" + MINIMAL, "server.bogus"),
    ("[server]\ntls_cert = \"c.pem\"\n" + MINIMAL, "server.tls_cert"),
    ("[auth]\nskew_ms = true\n" + MINIMAL, "auth.skew_ms"),
    ("[[auth.api_keys]]\nname = \"k\"\nsha256 = \"abc\"\n" + MINIMAL, "auth.api_keys[0].sha256"),
    ("[[auth.hmac_keys]]\nid = 1\nsecret = \"short\"\n" + MINIMAL, "auth.hmac_keys[0].secret"),
    ("[[auth.hmac_keys]]\nid = 1\nsecret_env = \"ATP_TEST_UNSET_SECRET\"\n" + MINIMAL,
     "auth.hmac_keys[0].secret_env"),
    (MINIMAL.replace('type = "simulated"', 'type = "carrier-pigeon"'), "providers[0].type"),
    (MINIMAL.replace('type = "simulated"', 'type = "openai_compat"'), "providers[0].base_url"),
    (MINIMAL.replace('provider = "sim"\n', 'provider = "nope"\n'), "models[0].provider"),
    (MINIMAL + "quality = 2.0\n", "models[0].quality"),
    (MINIMAL + "capabilities = \"chat\"\n", "models[0].capabilities"),
    ("[audit]\nenabled = \"yes\"\n" + MINIMAL, "audit.enabled"),
    ("[metrics]\n" + MINIMAL, "metrics"),
    ("[[providers]]\nname = \"sim\"\ntype = \"simulated\"\n", "models"),
])
def test_invalid_config_names_the_key(toml, key, monkeypatch):
    monkeypatch.delenv("ATP_TEST_UNSET_SECRET", raising=False)
    with pytest.raises(config.ConfigError) as info:
        config.loads(toml)
    assert str(info.value).startswith(key + ":"), str(info.value)


def test_unknown_simulated_option_is_named_when_building(tmp_path):
    cfg = config.loads(MINIMAL.replace('type = "simulated"', 'type = "simulated"\nlatency = 5'))
    with pytest.raises(config.ConfigError, match=r"providers\[sim\]\.latency"):
        App(cfg, audit_path=str(tmp_path / "a.sqlite"))
