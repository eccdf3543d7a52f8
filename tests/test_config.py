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
    (MINIMAL.replace('type = "simulated"', 'type = "openai_compat"'), "providers[sim].base_url"),
    (MINIMAL.replace('provider = "sim"\n', 'provider = "nope"\n'), "models[0].provider"),
    (MINIMAL + "quality = 2.0\n", "models[0].quality"),
    (MINIMAL + "capabilities = \"chat\"\n", "models[0].capabilities"),
    ("[audit]\nenabled = \"yes\"\n" + MINIMAL, "audit.enabled"),
    ("[bogus]\n" + MINIMAL, "bogus"),
    ("[[providers]]\nname = \"sim\"\ntype = \"simulated\"\n", "models"),
])
def test_invalid_config_names_the_key(toml, key, monkeypatch):
    monkeypatch.delenv("ATP_TEST_UNSET_SECRET", raising=False)
    with pytest.raises(config.ConfigError) as info:
        config.loads(toml)
    assert str(info.value).startswith(key + ":"), str(info.value)


def test_unknown_simulated_option_is_named_at_load():
    with pytest.raises(config.ConfigError, match=r"^providers\[sim\]\.latency: unknown option"):
        config.loads(MINIMAL.replace('type = "simulated"', 'type = "simulated"\nlatency = 5'))


# ---- every bad configuration is a ConfigError naming the key, never a traceback ------------------

SIM = MINIMAL.replace('type = "simulated"\n', 'type = "simulated"\nOPT\n')
LOCAL = """
[[providers]]
name = "local"
type = "openai_compat"
base_url = "http://127.0.0.1:8000/v1"
OPT

[[models]]
id = "m"
provider = "local"
"""


@pytest.mark.parametrize("toml,message", [
    # a single table where an array of tables belongs: say what to write
    ('[providers]\nname = "sim"\ntype = "simulated"\n[[models]]\nid = "m"\nprovider = "sim"\n',
     "providers: must be an array of tables: write [[providers]]"),
    ('[[providers]]\nname = "sim"\ntype = "simulated"\n[models]\nid = "m"\nprovider = "sim"\n',
     "models: must be an array of tables: write [[models]]"),
    ('[auth.api_keys]\nname = "k"\n' + MINIMAL,
     "auth.api_keys: must be an array of tables: write [[auth.api_keys]]"),
    ('[auth.hmac_keys]\nid = 1\n' + MINIMAL,
     "auth.hmac_keys: must be an array of tables: write [[auth.hmac_keys]]"),
    ('providers = "sim"\n[[models]]\nid = "m"\nprovider = "sim"\n',
     "providers: must be an array of tables"),
    # wrong types inside [auth]
    ("[auth]\napi_keys = [1]\n" + MINIMAL, "auth.api_keys[0]: must be a table"),
    ('[auth]\napi_keys = "sk-1"\n' + MINIMAL, "auth.api_keys: must be an array of tables"),
    ("[auth]\nhmac_keys = [1]\n" + MINIMAL, "auth.hmac_keys[0]: must be a table"),
    ("[auth]\nhmac_keys = 5\n" + MINIMAL, "auth.hmac_keys: must be an array of tables"),
    ('[[auth.api_keys]]\nname = "k"\nkey_env = 5\n' + MINIMAL, "auth.api_keys[0].key_env: must be a string"),
    ('[[auth.api_keys]]\nname = 5\nsha256 = "' + "a" * 64 + '"\n' + MINIMAL,
     "auth.api_keys[0].name: must be a string"),
    ('[[auth.api_keys]]\nname = ""\nsha256 = "' + "a" * 64 + '"\n' + MINIMAL,
     "auth.api_keys[0].name: must not be empty"),
    ('[[auth.hmac_keys]]\nid = 1\nsecret = "0123456789abcdef"\ntenant = 5\n' + MINIMAL,
     "auth.hmac_keys[0].tenant: must be a string"),
    ('[[auth.hmac_keys]]\nid = 1.5\nsecret = "0123456789abcdef"\n' + MINIMAL,
     "auth.hmac_keys[0].id: must be an integer"),
    ("[auth]\nnonce_cache = 0\n" + MINIMAL, "auth.nonce_cache: must be >= 1"),
    ("[auth]\nskew_ms = 0\n" + MINIMAL, "auth.skew_ms: must be >= 1"),
    ("[auth]\nrequire_signature = true\n" + MINIMAL, "auth.require_signature: needs at least one"),
    # other sections that are not tables
    ("server = 5\n" + MINIMAL, "server: must be a table"),
    ("audit = [1]\n" + MINIMAL, "audit: must be a table"),
    ("models = [1]\n" + MINIMAL.split("[[models]]")[0], "models[0]: must be a table"),
    ("[server]\nmax_queue = -1\n" + MINIMAL, "server.max_queue: must be >= 0"),
    ("[server]\nmax_inflight = 0\n" + MINIMAL, "server.max_inflight: must be >= 1"),
    ("[server]\ndrain_seconds = -1.0\n" + MINIMAL, "server.drain_seconds: must be >= 0"),
    ("[server]\ndrain_seconds = nan\n" + MINIMAL, "server.drain_seconds: must be a finite number"),
    ('[server]\nhost = ""\n' + MINIMAL, "server.host: must not be empty"),
    # every numeric field of a model
    (MINIMAL + "context_window = -5\n", "models[0].context_window: must be >= 1"),
    (MINIMAL + "max_output_tokens = 0\n", "models[0].max_output_tokens: must be >= 1"),
    (MINIMAL + "context_window = 100\nmax_output_tokens = 200\n",
     "models[0].max_output_tokens: must be <= context_window (100)"),
    (MINIMAL + "price_in_per_mtok = -1\n", "models[0].price_in_per_mtok: must be >= 0"),
    (MINIMAL + "price_out_per_mtok = inf\n", "models[0].price_out_per_mtok: must be a finite number"),
    (MINIMAL + "quality = nan\n", "models[0].quality: must be a finite number"),
    (MINIMAL + "latency_ms = -0.5\n", "models[0].latency_ms: must be >= 0"),
    (MINIMAL.replace('id = "m"', 'id = ""'), "models[0].id: must not be empty"),
    (MINIMAL + 'upstream = ""\n', "models[0].upstream: must not be empty"),
    (MINIMAL + "capabilities = [1]\n", "models[0].capabilities: must be a list of strings"),
    # provider options: typed, ranged, unknown ones named with the provider's name
    (SIM.replace("OPT", 'latency_ms = "abc"'), "providers[sim].latency_ms: must be a number, got str 'abc'"),
    (SIM.replace("OPT", "latency_ms = -1"), "providers[sim].latency_ms: must be >= 0"),
    (SIM.replace("OPT", "latency_jitter = -1"), "providers[sim].latency_jitter: must be >= 0"),
    (SIM.replace("OPT", "tokens_per_s = -1"), "providers[sim].tokens_per_s: must be >= 0"),
    (SIM.replace("OPT", "failure_rate = 1.5"), "providers[sim].failure_rate: must be in [0, 1]"),
    (SIM.replace("OPT", "cut_rate = -0.1"), "providers[sim].cut_rate: must be in [0, 1]"),
    (SIM.replace("OPT", "output_tokens = 0"), "providers[sim].output_tokens: must be >= 1"),
    (SIM.replace("OPT", "output_tokens = 1.5"), "providers[sim].output_tokens: must be an integer"),
    (SIM.replace("OPT", "seed = true"), "providers[sim].seed: must be an integer, got a boolean"),
    (SIM.replace("OPT", "latency = 5"), "providers[sim].latency: unknown option (known: cut_rate,"),
    (LOCAL.replace("OPT", "timeout = 5"), "providers[local].timeout: unknown option (known: api_key,"),
    (LOCAL.replace("OPT", "timeout_s = 0"), "providers[local].timeout_s: must be > 0"),
    (LOCAL.replace("OPT", 'timeout_s = "60"'), "providers[local].timeout_s: must be a number"),
    (LOCAL.replace("OPT", "connect_timeout_s = -1"), "providers[local].connect_timeout_s: must be > 0"),
    (LOCAL.replace("OPT", "max_connections = 0"), "providers[local].max_connections: must be >= 1"),
    (LOCAL.replace("OPT", 'extra_headers = { "X-A" = 1 }'),
     "providers[local].extra_headers: must be a table of strings"),
    (LOCAL.replace("OPT", 'extra_headers = "x"'), "providers[local].extra_headers: must be a table of strings"),
    (LOCAL.replace("OPT", 'api_key = "k"\napi_key_env = "K"'),
     "providers[local].api_key: give api_key or api_key_env, not both"),
    (LOCAL.replace("OPT", 'api_key_env = "ATP_TEST_UNSET_SECRET"'),
     "providers[local].api_key_env: environment variable ATP_TEST_UNSET_SECRET is not set"),
    (LOCAL.replace("OPT", 'capabilities = "chat"'), "providers[local].capabilities: must be a list of strings"),
    (LOCAL.replace('"http://127.0.0.1:8000/v1"', '"ftp://127.0.0.1/v1"').replace("OPT", ""),
     "providers[local].base_url: must be an http:// or https:// URL with a host"),
    (LOCAL.replace('"http://127.0.0.1:8000/v1"', '"127.0.0.1:8000"').replace("OPT", ""),
     "providers[local].base_url: must be an http:// or https:// URL with a host"),
    (LOCAL.replace('"http://127.0.0.1:8000/v1"', '"http://127.0.0.1:99999/v1"').replace("OPT", ""),
     "providers[local].base_url: is not a valid URL (Port out of range"),
    (LOCAL.replace('"http://127.0.0.1:8000/v1"', '"http://[::1/v1"').replace("OPT", ""),
     "providers[local].base_url: is not a valid URL"),
    (LOCAL.replace("OPT", 'extra_headers = { "X-A" = "b\\r\\nX-Evil: 1" }'),
     "providers[local].extra_headers.X-A: must not contain line breaks"),
    ('[[auth.api_keys]]\nname = "a"\nsha256 = "' + "a" * 64 + '"\n[[auth.api_keys]]\nname = "b"\nsha256 = "'
     + "A" * 64 + '"\n' + MINIMAL, "auth.api_keys[1].sha256: the same as auth.api_keys[0].sha256"),
    ('[[auth.api_keys]]\nname = "a"\nsha256 = "' + "a" * 64 + '"\n[[auth.api_keys]]\nname = "a"\nsha256 = "'
     + "b" * 64 + '"\n' + MINIMAL, "auth.api_keys[1].name: the same as auth.api_keys[0].name"),
    (LOCAL.replace('"http://127.0.0.1:8000/v1"', "8000").replace("OPT", ""),
     "providers[local].base_url: must be a string"),
    (LOCAL.replace('base_url = "http://127.0.0.1:8000/v1"', "").replace("OPT", ""),
     "providers[local].base_url: is required for openai_compat providers"),
    ('[[providers]]\nname = ""\ntype = "simulated"\n[[models]]\nid = "m"\nprovider = ""\n',
     "providers[0].name: must not be empty"),
])
def test_bad_shapes_and_values_name_the_key(toml, message, monkeypatch):
    monkeypatch.delenv("ATP_TEST_UNSET_SECRET", raising=False)
    with pytest.raises(config.ConfigError) as info:
        config.loads(toml)
    assert str(info.value).startswith(message), str(info.value)


def test_max_output_tokens_default_fits_a_small_context_window():
    cfg = config.loads(MINIMAL + "context_window = 512\n")
    assert cfg.models[0].max_output_tokens == 512
    assert config.loads(MINIMAL).models[0].max_output_tokens == 1024


def test_provider_options_become_typed_settings(monkeypatch):
    from atp_server.adapters.settings import OpenAICompatSettings
    from atp_server.adapters.simulated import SimulatedSettings
    cfg = config.loads(SIM.replace("OPT", "latency_ms = 20\nfailure_rate = 1\nseed = 3"))
    assert cfg.provider("sim").settings == SimulatedSettings(latency_ms=20.0, failure_rate=1.0, seed=3)
    assert isinstance(cfg.provider("sim").settings.latency_ms, float)
    monkeypatch.setenv("ATP_TEST_UPSTREAM_KEY", "sk-upstream")
    cfg = config.loads(LOCAL.replace("OPT", 'api_key_env = "ATP_TEST_UPSTREAM_KEY"\ntimeout_s = 3\n'
                                            'extra_headers = { "X-A" = "b" }'))
    s = cfg.provider("local").settings
    assert s == OpenAICompatSettings(base_url="http://127.0.0.1:8000/v1", api_key="sk-upstream",
                                     api_key_env="ATP_TEST_UPSTREAM_KEY", timeout_s=3.0,
                                     extra_headers={"X-A": "b"})
    assert "sk-upstream" not in repr(s)      # a secret never reaches a log line through repr


def test_adapters_are_built_from_the_typed_settings(tmp_path):
    from atp_server.app import build_adapter
    adapter = build_adapter("local", "openai_compat", {"base_url": "http://127.0.0.1:9/v1",
                                                        "api_key": "sk-x", "max_connections": 2,
                                                        "capabilities": ["chat", "tools"]})
    assert adapter._url == "http://127.0.0.1:9/v1/chat/completions"
    assert adapter._json_headers["Authorization"] == "Bearer sk-x"
    assert adapter.capabilities == frozenset({"chat", "tools"})
    asyncio.run(adapter.aclose())
    with pytest.raises(config.ConfigError, match=r"^providers\[sim\]\.latency_ms: must be a number"):
        build_adapter("sim", "simulated", {"latency_ms": "abc"})


# ---- fuzz: whatever TOML says, parse() answers with a Config or a ConfigError ---------------------

import copy    # noqa: E402  (fuzz helpers kept together)
import datetime   # noqa: E402
import tomllib   # noqa: E402

from hypothesis import HealthCheck, given, settings, strategies as st   # noqa: E402

_KEYS = sorted({"server", "auth", "providers", "models", "audit", "api_keys", "hmac_keys", "name",
                "type", "id", "provider", "sha256", "key_env", "secret", "secret_hex", "secret_env",
                "tenant", "base_url", "api_key", "api_key_env", "timeout_s", "extra_headers",
                "capabilities", "latency_ms", "failure_rate", "output_tokens", "context_window",
                "max_output_tokens", "quality", "http_port", "workers", "require_signature",
                "enabled", "path", "upstream", "max_connections", "host", "drain_seconds"})
_SCALARS = (st.booleans() | st.integers(-2**64, 2**64) | st.floats(allow_nan=True)
            | st.text(max_size=8) | st.sampled_from(["sim", "simulated", "openai_compat", "m",
                                                   "http://h/v1", "http://[::1", "http://h:99999",
                                                   "0123456789abcdef" * 4, "HOME", "a\0b"])
            | st.datetimes() | st.dates() | st.times())
_KEY = st.sampled_from(_KEYS) | st.text(max_size=6)
_TOMLISH = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(_KEY, inner, max_size=5), max_leaves=30)
_VALID = tomllib.loads(config.DEFAULT_TOML.replace('[server]\n', '[server]\nworkers = 1\n') + """
[[providers]]
name = "up"
type = "openai_compat"
base_url = "http://127.0.0.1:9/v1"
extra_headers = { "X-A" = "b" }
[audit]
enabled = false
""")


def _paths(node, prefix=()):
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


def _parse_only_config_errors(data) -> None:
    """parse() accepts or raises ConfigError; what it accepts, build_adapter builds."""
    from atp_server.app import build_adapter
    try:
        cfg = config.parse(data)
    except config.ConfigError:
        return
    for p in cfg.providers:
        adapter = build_adapter(p.name, p.type, p.options)
        asyncio.run(adapter.aclose())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_KEY, _TOMLISH, max_size=6))
def test_parse_of_random_tables_raises_only_config_errors(data):
    _parse_only_config_errors(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_parse_of_a_valid_config_with_one_value_replaced_raises_only_config_errors(data):
    paths = [p for p in _paths(_VALID) if p]
    doc = copy.deepcopy(_VALID)
    path = data.draw(st.sampled_from(paths))
    node = doc
    for step in path[:-1]:
        node = node[step]
    if data.draw(st.booleans()) and isinstance(node, dict):
        node[data.draw(_KEY)] = data.draw(_TOMLISH)     # an extra key beside it
    else:
        node[path[-1]] = data.draw(_TOMLISH)
    _parse_only_config_errors(doc)


def test_fuzz_base_config_is_valid():
    assert config.parse(copy.deepcopy(_VALID)).provider("up").settings.extra_headers == {"X-A": "b"}
    assert datetime   # TOML datetimes are among the fuzzed values


def test_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[server]\nhost = "\xff"\n')
    with pytest.raises(config.ConfigError, match=r"^\(file\): .*bad\.toml is not UTF-8 text"):
        config.load(path)


@pytest.mark.parametrize("toml,message", [
    ('[[providers]]\ntype = "simulated"\n', "providers[0].name: is required"),
    ('[[providers]]\nname = "p"\n', "providers[0].type: is required (simulated, openai_compat, anthropic, ollama)"),
])
def test_provider_name_and_type_are_required(toml, message):
    with pytest.raises(config.ConfigError) as info:
        config.loads(toml)
    assert str(info.value).startswith(message), str(info.value)
