"""Operator control of the champion/challenger (`atp router status|promote|rollback|pin|unpin`):
the CLI writes a command into the state dir and signals the server, whose reloader applies it once,
audits it and answers in router_state.json."""
import getpass
import json
import os
import signal
import sqlite3

import pytest

from atp_server import cli
from atp_server import config as atp_config
from atp_server.app import App
from atp_server.reload import PID_FILE
from atp_server.routing.control import COMMAND_FILE, STATE_FILE
from atp_server.types import ChatRequest
from tests.server.helpers import make_config


def _models_toml(names) -> str:
    return "".join(f'\n[[models]]\nid = "{m}"\nprovider = "sim"\nprice_in_per_mtok = 1.0\n'
                   f'price_out_per_mtok = 2.0\nquality = 0.6\nlatency_ms = 100\n' for m in names)


@pytest.fixture
def served(tmp_path, trained):
    """An App (no transports) whose challenger is a second router.bin, answering SIGHUP in this
    very process: the CLI's signal reaches the App's reloader as it would a server's."""
    trained.save(str(tmp_path / "v1.bin"))
    trained.save(str(tmp_path / "v2.bin"))
    cfg = make_config(tmp_path, models=_models_toml(trained.models), extra=f"""
[routing]
bandit = "greedy"
predictor = "{tmp_path / 'v1.bin'}"
challenger = "{tmp_path / 'v2.bin'}"
challenger_share = 0.5
""")
    app = App(cfg)
    app.router_control.write_state()
    (tmp_path / PID_FILE).write_text(str(os.getpid()))
    previous = signal.signal(signal.SIGHUP, lambda *_: app.reloader.reload())
    conf = tmp_path / "atp.toml"
    conf.write_text(cli_config(tmp_path))
    yield app, str(conf)
    signal.signal(signal.SIGHUP, previous)


def cli_config(tmp_path) -> str:
    """What the operator's `--config` needs: the same state dir."""
    return atp_config.DEFAULT_TOML.replace("[server]\n", f'[server]\nstate_dir = "{tmp_path}"\n', 1)


def audit_rows(app):
    app.audit.flush()
    return sqlite3.connect(app.audit.path).execute(
        "select principal, transport, model, outcome, record from audit order by seq").fetchall()


def test_status_shows_the_running_challenger(served, capsys):
    app, conf = served
    assert cli.main(["router", "status", "--config", conf, "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["running"] and state["challenger"].endswith("v2.bin") and state["share"] == 0.5
    assert state["pinned"] is False and state["pid"] == os.getpid()


def test_pin_freezes_the_champion_until_unpin_and_each_action_is_audited(served, capsys):
    app, conf = served
    assert cli.main(["router", "pin", "--config", conf, "--actor", "ops-alice", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["action"] == "pin" and out["state"]["pinned"] is True
    assert app.router.pinned and app.router.experiment.pinned
    picks = [app.router.choose(ChatRequest([("user", "x")]), 0.0) for _ in range(100)]
    assert not any(d.trace.challenger for d in picks)            # the champion decides everything
    assert cli.main(["router", "promote", "--config", conf]) == 1  # pinned: no promotion
    assert "pinned" in capsys.readouterr().err and app.router.experiment.running
    assert cli.main(["router", "unpin", "--config", conf]) == 0
    assert "unpin: applied" in capsys.readouterr().out and not app.router.pinned
    picks = [app.router.choose(ChatRequest([("user", "x")]), 0.0) for _ in range(100)]
    assert any(d.trace.challenger for d in picks)
    rows = [r for r in audit_rows(app) if r[1] == "admin"]
    assert [(r[0], r[3]) for r in rows] == [("ops-alice", "router.pin"), (getpass.getuser(),
                                                                          "router.unpin")]
    assert rows[0][2].endswith("v2.bin")


def test_promote_makes_the_challenger_champion_and_a_second_promote_is_refused(served, capsys):
    app, conf = served
    champion = app.router.table.predictor
    assert cli.main(["router", "promote", "--config", conf]) == 0
    assert "promote: applied" in capsys.readouterr().out
    assert app.router.table.predictor is not champion and not app.router.experiment.running
    assert app.router.verdicts[-1].reason == "operator"
    rows = audit_rows(app)
    assert ("routing", "promote") in [(r[1], r[3]) for r in rows]          # the verdict row
    assert "router.promote" in [r[3] for r in rows if r[1] == "admin"]     # the operator's act
    # the client refuses from the published state, before signalling anything
    assert cli.main(["router", "rollback", "--config", conf, "--json"]) == 1
    err = json.loads(capsys.readouterr().out)
    assert not err["ok"] and "ended" in err["error"]


def test_the_server_refuses_what_it_cannot_do_even_past_a_stale_state(served, capsys):
    app, conf = served
    app.router.operator("rollback")            # ended, but router_state.json not rewritten yet
    state = json.loads((app.router_control.directory / STATE_FILE).read_text())
    state["running"] = True
    (app.router_control.directory / STATE_FILE).write_text(json.dumps(state))
    assert cli.main(["router", "promote", "--config", conf]) == 1
    assert "refused promote: no challenger running" in capsys.readouterr().err
    assert json.loads((app.router_control.directory / STATE_FILE).read_text())["running"] is False


def test_a_command_is_applied_once_and_a_later_reload_does_not_repeat_it(served, capsys):
    app, conf = served
    assert cli.main(["router", "pin", "--config", conf]) == 0
    app.router.operator("unpin")
    assert app.reloader.reload()                  # e.g. `atp reload` for a keys change
    assert not app.router.pinned
    assert (app.router_control.directory / COMMAND_FILE).exists()


def test_no_challenger_registered(tmp_path, capsys):
    app = App(make_config(tmp_path))
    app.router_control.write_state()
    conf = tmp_path / "atp.toml"
    conf.write_text(cli_config(tmp_path))
    assert cli.main(["router", "promote", "--config", str(conf)]) == 1
    assert "no challenger registered" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no challenger registered"):
        app.router.operator("rollback")
    assert cli.main(["router", "status", "--config", str(conf)]) == 0
    assert "no challenger registered" in capsys.readouterr().out


def test_no_server_is_a_clear_error(tmp_path, capsys):
    conf = tmp_path / "atp.toml"
    conf.write_text(cli_config(tmp_path))
    assert cli.main(["router", "pin", "--config", str(conf)]) == 1
    assert "is a server running" in capsys.readouterr().err


def test_a_stale_command_from_an_earlier_run_is_never_applied(tmp_path):
    (tmp_path / COMMAND_FILE).write_text(json.dumps({"id": "old", "action": "pin"}))
    app = App(make_config(tmp_path))
    assert app.reloader.reload() and not app.router.pinned


def test_a_pin_survives_a_restart(tmp_path):
    app = App(make_config(tmp_path))
    app.router.operator("pin")
    app.router_control.write_state()
    again = App(make_config(tmp_path))
    assert again.router.pinned
    again.router.operator("unpin")
    again.router_control.write_state()
    assert not App(make_config(tmp_path)).router.pinned
