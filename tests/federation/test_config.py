"""[federation] configuration, two ATP servers federating in one process, and the CLI."""
import asyncio
import json
import socket

import pytest

from atp_server import config as atp_config
from atp_server.app import App
from atp_server.cli import main
from atp_server.federation.config import load_key, public_b64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_toml(tmp_path, name, model, port, peers=(), trust=()) -> str:
    state = tmp_path / name
    lines = [f'[server]\nstate_dir = "{state}"\nhttp_port = 0\ngrpc_port = 0\nquic_port = 0\n',
             atp_config.dev_auth_toml("dev"),
             '[[providers]]\nname = "sim"\ntype = "simulated"\n',
             f'[[models]]\nid = "{model}"\nprovider = "sim"\nprice_in_per_mtok = 1.0\n'
             'price_out_per_mtok = 2.0\n',
             f'[federation]\nrouter_id = "{name}"\nlisten = "127.0.0.1:{port}"\n']
    for addr, rid in peers:
        lines.append(f'[[federation.peers]]\naddress = "{addr}"\nrouter_id = "{rid}"\n')
    for rid, pub in trust:
        lines.append(f'[[federation.trust]]\nrouter_id = "{rid}"\npublic_key = "{pub}"\n')
    return "\n".join(lines)


def keys(tmp_path, *names) -> dict:
    return {n: public_b64(load_key(tmp_path / n / "agp_key.pem")) for n in names}


def test_two_servers_federate_and_status_shows_the_remote_model(tmp_path, capsys):
    pub = keys(tmp_path, "eu", "us")
    pe, pu = free_port(), free_port()
    eu = atp_config.loads(server_toml(tmp_path, "eu", "eu-model", pe, [(f"127.0.0.1:{pu}", "us")],
                                      pub.items()))
    us = atp_config.loads(server_toml(tmp_path, "us", "us-model", pu, (), pub.items()))

    async def main_():
        a, b = App(eu), App(us)
        await b.start(quic=False)
        await a.start(quic=False)
        try:
            learned = asyncio.Event()
            a.federation.listeners.append(
                lambda e: learned.set() if e.kind == "best_changed"
                and e.detail["model"] == "us-model" else None)
            if "us-model" not in a.federation.node.rib.best:
                await asyncio.wait_for(learned.wait(), 10)
            return a.ports.agp, a.federation.node.rib.best["us-model"].route.path
        finally:
            await a.stop(0)
            await b.stop(0)
    port, path = asyncio.run(main_())
    assert port == pe and path == ("us",)


@pytest.mark.parametrize("extra,key", [
    ('router_id = ""', "federation.router_id"),
    ('router_id = "a"\nkeepalive_ms = 2000', "federation.keepalive_ms"),
    ('router_id = "a"\nlisten = "nowhere"', "federation.listen"),
    ('router_id = "a"\ncolour = 1', "federation.colour"),
    ('router_id = "a"\nadvertise = ["gpt-nope"]', "federation.advertise"),
    ('router_id = "a"\n[[federation.peers]]\naddress = "127.0.0.1:1"\nrouter_id = "b"',
     "federation.trust"),
    ('router_id = "a"\n[[federation.trust]]\nrouter_id = "b"\npublic_key = "abc"',
     "federation.trust[0].public_key"),
])
def test_federation_config_errors_name_the_key(tmp_path, extra, key):
    text = server_toml(tmp_path, "x", "m", 1).split("[federation]")[0] + "[federation]\n" + extra
    with pytest.raises(atp_config.ConfigError) as info:
        atp_config.loads(text)
    assert str(info.value).startswith(key)


def test_keygen_prints_a_trust_entry_that_loads(tmp_path, capsys):
    cfg = tmp_path / "atp.toml"
    cfg.write_text(server_toml(tmp_path, "eu", "m", 1))
    assert main(["federation", "keygen", "--config", str(cfg)]) == 0
    entry = capsys.readouterr().out
    assert (tmp_path / "eu" / "agp_key.pem").exists() and 'router_id = "eu"' in entry
    atp_config.loads(server_toml(tmp_path, "us", "m", 2) + entry.split("\n", 1)[1])


def test_status_of_a_router_that_is_not_there_is_a_clear_error(capsys):
    assert main(["federation", "status", "--target", f"127.0.0.1:{free_port()}",
                 "--timeout", "1"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
