"""Differential-privacy releases: Laplace noise of the right scale, an epsilon ledger that refuses
when spent, persists, rolls over by day, and `atp costs --private` charging it."""
import json
import random
import statistics

import pytest

from atp_server import config as atp_config
from atp_server.cli import main
from atp_server.metrics import Metrics
from atp_server.privacy import BudgetSpent, Ledger, PrivacyConfig, laplace, release

from .test_cli_audit import ROWS, fill, write_config


class Seeded(random.Random):
    """A reproducible stand-in for secrets.SystemRandom in the statistics tests."""


def test_laplace_noise_has_the_scale_sensitivity_over_epsilon():
    rng = Seeded(7)
    draws = [laplace(100.0, 1.0, 0.5, resolution=1e-9, rng=rng) - 100.0 for _ in range(40_000)]
    # Laplace(0, b): mean 0, mean absolute deviation b = sensitivity / epsilon = 2
    assert abs(statistics.fmean(draws)) < 0.05
    assert statistics.fmean(abs(d) for d in draws) == pytest.approx(2.0, rel=0.03)


def test_released_values_are_rounded_to_the_metric_resolution():
    assert laplace(10.0, 1.0, 1.0, resolution=1.0, rng=Seeded(1)) % 1 == 0


@pytest.mark.parametrize("eps,sens", [(0, 1.0), (-1, 1.0), (1.0, 0)])
def test_bad_parameters_are_refused(eps, sens):
    with pytest.raises(ValueError):
        laplace(1.0, sens, eps)


def test_the_ledger_refuses_once_spent_and_charges_nothing_then(tmp_path):
    ledger = Ledger(tmp_path / "l.json", PrivacyConfig(epsilon_per_day=1.0))
    release(ledger, "acme", "requests", 10, 0.6)
    with pytest.raises(BudgetSpent) as info:
        release(ledger, "acme", "requests", 10, 0.6)
    assert info.value.left == pytest.approx(0.4)
    assert ledger.remaining("acme", "requests") == pytest.approx(0.4)
    release(ledger, "acme", "tokens", 10, 0.6)        # another metric: its own budget
    release(ledger, "globex", "requests", 10, 0.6)    # another tenant: its own budget


def test_the_ledger_survives_a_restart_and_rolls_over_by_day(tmp_path):
    now = [1_000_000.0]
    path = tmp_path / "l.json"
    Ledger(path, clock=lambda: now[0]).spend("acme", "requests", 0.9)
    again = Ledger(path, clock=lambda: now[0])
    assert again.remaining("acme", "requests") == pytest.approx(0.1)
    now[0] += 86400
    assert again.remaining("acme", "requests") == pytest.approx(1.0)


def test_a_damaged_ledger_is_an_error_not_a_refill(tmp_path):
    path = tmp_path / "l.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable privacy ledger"):
        Ledger(path)


def test_costs_private_charges_each_tenant_and_then_refuses(tmp_path, capsys):
    fill(tmp_path, ROWS)
    cfg = write_config(tmp_path, "[privacy]\nepsilon_per_day = 1.0\n")
    assert main(["costs", "--config", cfg, "--private", "0.6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {x["group"] for x in out["lines"]} == {"acme", "globex"}
    assert all(x["epsilon_left"]["requests"] == pytest.approx(0.4) for x in out["lines"])
    assert main(["costs", "--config", cfg, "--private", "0.6"]) == 1
    assert "privacy budget spent" in capsys.readouterr().err
    assert main(["costs", "--config", cfg, "--private", "0.3", "--by", "model"]) == 2


def test_remaining_budget_is_a_metric(tmp_path):
    fill(tmp_path, ROWS)
    cfg = atp_config.load(write_config(tmp_path))
    Ledger(atp_config.privacy_ledger(cfg)).spend("acme", "cost_usd", 0.25)
    metrics = Metrics()
    metrics.track_privacy(atp_config.privacy_ledger(cfg), cfg.privacy)
    text = metrics.render().decode()
    assert 'atp_privacy_epsilon_remaining{metric="cost_usd",tenant="acme"} 0.75' in text


@pytest.mark.parametrize("toml,key", [("epsilon_per_day = 0", "privacy.epsilon_per_day"),
                                      ("tokens_clip = 0", "privacy.tokens_clip"),
                                      ("colour = 1", "privacy.colour")])
def test_privacy_config_errors_name_the_key(tmp_path, toml, key):
    with pytest.raises(atp_config.ConfigError, match=key.replace(".", r"\.")):
        atp_config.load(write_config(tmp_path, f"[privacy]\n{toml}\n"))
