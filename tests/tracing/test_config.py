"""[tracing]: defaults, each bad value refused naming its key, and the start-up error without the extra."""
import subprocess
import sys

import pytest

from atp_server import config, tracing
from atp_server.tracing import TracingConfig


def load(section: str):
    return config.loads(config.DEFAULT_TOML + "\n[tracing]\n" + section + "\n")


def test_tracing_is_off_by_default_and_builds_no_tracer():
    cfg = config.loads(config.DEFAULT_TOML)
    assert cfg.tracing == TracingConfig()
    assert (cfg.tracing.enabled, cfg.tracing.exporter, cfg.tracing.endpoint, cfg.tracing.service_name,
            cfg.tracing.sample_ratio) == (False, "otlp", "http://127.0.0.1:4318/v1/traces", "atp", 1.0)
    assert tracing.build(cfg.tracing, {}) is None


def test_every_key_is_read():
    t = load('enabled = true\nexporter = "console"\nendpoint = "https://otel.example:4318/v1/traces"\n'
             'service_name = "gw-eu"\nsample_ratio = 0')
    assert t.tracing == TracingConfig(True, "console", "https://otel.example:4318/v1/traces", "gw-eu", 0.0)


@pytest.mark.parametrize("line,key,says", [
    ('exporter = "zipkin"', "tracing.exporter", "must be one of otlp, console, memory"),
    ("sample_ratio = 1.5", "tracing.sample_ratio", "must be in [0, 1]"),
    ("sample_ratio = -0.1", "tracing.sample_ratio", "must be in [0, 1]"),
    ('sample_ratio = "all"', "tracing.sample_ratio", "must be a number"),
    ('endpoint = "localhost:4318"', "tracing.endpoint", "http:// or https://"),
    ('endpoint = "http://h:99999/v1/traces"', "tracing.endpoint", "not a valid URL"),
    ('service_name = ""', "tracing.service_name", "must not be empty"),
    ("enabled = 1", "tracing.enabled", "true or false"),
    ("exporters = []", "tracing.exporters", "unknown key"),
])
def test_a_bad_value_is_refused_naming_its_key(line, key, says):
    with pytest.raises(config.ConfigError) as info:
        load(line)
    assert str(info.value).startswith(f"{key}: ") and says in str(info.value)


def test_enabled_without_the_extra_is_a_start_up_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "atp_server.tracing.otel", None)   # as if not installed
    monkeypatch.delattr(tracing, "otel", raising=False)      # (imported by an earlier test)
    with pytest.raises(config.ConfigError) as info:
        tracing.build(load('enabled = true\nexporter = "memory"').tracing, {})
    assert str(info.value).startswith("tracing.enabled: ") and "pip install 'atp[otel]'" in str(info.value)


def test_the_core_never_imports_opentelemetry_while_tracing_is_off():
    code = ("import sys, asyncio, tempfile\n"
            "from atp_server import config\n"
            "from atp_server.app import App\n"
            "from atp_server.types import ChatRequest\n"
            "from tests.server.helpers import PRINCIPAL, make_config\n"
            "async def main():\n"
            "    app = App(make_config(tempfile.mkdtemp()))\n"
            "    await app.pipeline.complete(ChatRequest([('user', 'x')], traceparent='00-' + '1' * 32 + '-' + '2' * 16 + '-01'), PRINCIPAL, 't')\n"
            "    await app.stop(0)\n"
            "asyncio.run(main())\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_readmes_tracing_example_loads():
    import pathlib
    import re
    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
    (block,) = re.findall(r"```toml\n(\[tracing\]\n.*?)```", readme, re.S)
    t = config.loads(config.DEFAULT_TOML + "\n" + block).tracing
    assert t.enabled and t.sample_ratio == 0.1 and t.service_name == "atp-eu-1"


@pytest.mark.parametrize("workers", [1, 2])
def test_atp_serve_without_the_extra_exits_2_naming_it(tmp_path, workers):
    import os
    import socket

    from tests.test_cli import api_key_only_toml, atp, free_port
    fake = tmp_path / "site"                  # an `opentelemetry` that fails to import, as if absent
    (fake / "opentelemetry").mkdir(parents=True)
    (fake / "opentelemetry" / "__init__.py").write_text(
        'raise ImportError("not installed (test)", name="opentelemetry")\n')
    cfg = tmp_path / "atp.toml"
    cfg.write_text(api_key_only_toml(tmp_path) + '\n[tracing]\nenabled = true\n')
    ports = [str(free_port(socket.SOCK_STREAM)) for _ in range(2)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(fake), os.environ.get("PYTHONPATH")]))}
    r = atp("serve", "--config", str(cfg), "--workers", str(workers), "--http-port", ports[0],
            "--grpc-port", ports[1], "--no-quic", timeout=30, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("atp: config error: tracing.enabled: true needs the OpenTelemetry "
                                "extra, which is not installed (no module opentelemetry): "
                                "pip install 'atp[otel]'")
