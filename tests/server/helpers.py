"""Builders for in-memory server tests: a config with chosen simulated behaviour, a principal."""

from atp_server import config
from atp_server.auth import Principal

PRINCIPAL = Principal("default", "dev", "api_key")


def make_config(tmp_path, *, sim_options: str = "", server: str = "", models: str | None = None,
                extra: str = ""):
    """The embedded default with the simulated provider's options and [server] keys overridden;
    `extra` is appended (more sections, e.g. [routing])."""
    models = models if models is not None else """
[[models]]
id = "cheap"
provider = "sim"
price_in_per_mtok = 0.1
price_out_per_mtok = 0.2
quality = 0.5
latency_ms = 100

[[models]]
id = "smart"
provider = "sim"
price_in_per_mtok = 3.0
price_out_per_mtok = 15.0
quality = 0.95
latency_ms = 800
capabilities = ["chat", "vision"]
"""
    text = f"""
[server]
http_port = 0
grpc_port = 0
quic_port = 0
state_dir = "{tmp_path}"
{server}

{config.dev_auth_toml("dev")}
[[providers]]
name = "sim"
type = "simulated"
{sim_options}
{models}
{extra}
"""
    return config.loads(text)
