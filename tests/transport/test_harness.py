"""The real-socket harness itself: a transport that cannot import or start fails tests, never skips them."""
import dataclasses
import socket
import sys

import pytest

from .conftest import ServerHarness, server_config


def test_a_transport_that_cannot_import_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "atp_server.transport.http", None)   # import -> ImportError
    harness = ServerHarness(server_config(tmp_path), str(tmp_path / "audit.sqlite"))
    with pytest.raises(ImportError):
        harness.start()
    assert harness.loop.is_closed()          # nothing left running


def test_a_transport_that_cannot_start_is_an_error(tmp_path):
    with socket.socket() as taken:           # the HTTP port is in use
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = server_config(tmp_path)
        cfg = dataclasses.replace(cfg, server=dataclasses.replace(
            cfg.server, http_port=taken.getsockname()[1]))
        harness = ServerHarness(cfg, str(tmp_path / "audit.sqlite"))
        with pytest.raises(OSError):
            harness.start()
