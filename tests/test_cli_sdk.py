"""`atp chat` over the SDK: explicit dev credentials and how it trusts a QUIC server's certificate."""
import argparse

from atp_server import cli


def trust(host, home, ca_file=None, insecure=False):
    return cli._quic_trust(argparse.Namespace(ca_file=ca_file, insecure=insecure), host)


def test_flags_win(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert trust("example.com", tmp_path, ca_file="/x.pem") == {"ca_file": "/x.pem"}
    assert trust("127.0.0.1", tmp_path, insecure=True) == {"insecure": True}


def test_remote_hosts_use_the_system_store(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert trust("atp.example.com", tmp_path) == {}


def test_loopback_pins_the_embedded_defaults_certificate(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert trust("127.0.0.1", tmp_path) == {"insecure": True}      # none generated here yet
    (tmp_path / ".atp").mkdir()
    (tmp_path / ".atp" / "quic-cert.pem").write_text("pem")
    assert trust("localhost", tmp_path) == {"ca_file": str(tmp_path / ".atp" / "quic-cert.pem")}


def test_chat_help_names_the_trust_options(capsys):
    try:
        cli.main(["chat", "--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    assert "--ca-file" in out and "--insecure" in out
