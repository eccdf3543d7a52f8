"""[routing] and [aliases] config: typed values, every error names the key at fault."""
import pytest

from atp_server import config
from atp_server.config import ConfigError
from atp_server.routing.config import DEFAULT_TIERS, TierWeights


def load(extra: str):
    return config.loads(config.DEFAULT_TOML + extra)


def test_defaults_and_values():
    r = config.loads(config.DEFAULT_TOML).routing
    assert r.bandit == "thompson" and r.aliases == () and r.tiers == DEFAULT_TIERS
    r = load('[routing]\nbandit = "ucb"\nexplore = 1\nseed = 4\n'
             '[routing.tiers.fast]\nlatency_weight = 2.0\n').routing
    assert (r.bandit, r.explore, r.seed) == ("ucb", 1.0, 4)
    assert r.tiers["fast"] == TierWeights(None, 2.0) and r.tiers["high"] == DEFAULT_TIERS["high"]


def test_both_alias_spellings():
    a = load('[aliases]\nduo = ["sim-high", "sim-fast"]\n').routing.aliases
    assert a[0].name == "duo" and a[0].models == ("sim-high", "sim-fast") and a[0].mode == "ordered"
    a = load('[[aliases]]\nname = "mix"\nmode = "weighted"\nmodels = ["sim-high", "sim-fast"]\n'
             'weights = [1, 3]\nmax_attempts = 1\n').routing.aliases
    assert a[0].weights == (1.0, 3.0) and a[0].max_attempts == 1


@pytest.mark.parametrize("extra,key", [
    ('[routing]\nbandit = "epsilon"\n', "routing.bandit"),
    ('[routing]\nprior_strength = 0\n', "routing.prior_strength"),
    ('[routing]\nexplore = "lots"\n', "routing.explore"),
    ('[routing]\nbanditt = "ucb"\n', "routing.banditt"),
    ('[routing]\npersist = 1\n', "routing.persist"),
    ('[routing.tiers.turbo]\ncost_weight = 1\n', "routing.tiers.turbo"),
    ('[routing.tiers.fast]\ncost_weight = -1\n', "routing.tiers.fast.cost_weight"),
    ('[[aliases]]\nmodels = ["sim-high"]\n', "aliases[0].name"),
    ('[[aliases]]\nname = "x"\nmodels = ["ghost"]\n', "aliases[0].models[0]"),
    ('[[aliases]]\nname = "x"\nmodels = []\n', "aliases[0].models"),
    ('[[aliases]]\nname = "sim-high"\nmodels = ["sim-fast"]\n', "aliases[0].name"),
    ('[[aliases]]\nname = "x"\nmode = "weighted"\nmodels = ["sim-fast"]\n', "aliases[0].weights"),
    ('[[aliases]]\nname = "x"\nmode = "weighted"\nmodels = ["sim-fast"]\nweights = [0]\n',
     "aliases[0].weights"),
    ('[[aliases]]\nname = "x"\nmodels = ["sim-fast"]\nmin_quality = 0.5\n', "aliases[0].min_quality"),
    ('[[aliases]]\nname = "x"\nmode = "routed"\nmodels = ["sim-fast"]\nmin_quality = 1.5\n',
     "aliases[0].min_quality"),
    ('[[aliases]]\nname = "x"\nmodels = ["sim-fast"]\nmax_attempts = 0\n', "aliases[0].max_attempts"),
    ('[[aliases]]\nname = "x"\nmodels = ["sim-fast"]\ncolour = "red"\n', "aliases[0].colour"),
    ('[[aliases]]\nname = "x"\nmodels = ["sim-fast"]\n[[aliases]]\nname = "x"\nmodels = ["sim-high"]\n',
     "aliases[1].name"),
    ('[aliases]\nduo = "sim-high"\n', "aliases.duo"),
    ('[routing]\nchallenger_share = 1\n', "routing.challenger_share"),
    ('[routing]\nchallenger = 3\n', "routing.challenger"),
])
def test_errors_name_the_key(extra, key):
    with pytest.raises(ConfigError) as info:
        load(extra)
    assert str(info.value).startswith(key + ":"), str(info.value)


def test_a_bad_predictor_file_names_the_key(tmp_path):
    from atp_server.app import App
    bad = tmp_path / "router.bin"
    bad.write_bytes(b"junk")
    cfg = load(f'[routing]\npredictor = "{bad}"\n')
    with pytest.raises(ValueError, match="routing.predictor"):
        App(cfg, audit_path=str(tmp_path / "a.sqlite"))


def test_a_challenger_from_config_starts_an_experiment(tmp_path, trained):
    from atp_server.app import App
    path = tmp_path / "v2.bin"
    trained.save(path)
    cfg = load(f'[routing]\nchallenger = "{path}"\nchallenger_share = 0.25\n')
    app = App(cfg, audit_path=str(tmp_path / "a.sqlite"))
    exp = app.router.experiment
    assert exp.challenger == str(path) and exp.share == 0.25 and exp.running
    assert app.router.challenger_table.predictor.models == trained.models
    bad = load('[routing]\nchallenger = "/nonexistent/v3.bin"\n')
    with pytest.raises(ValueError, match="routing.challenger"):
        App(bad, audit_path=str(tmp_path / "b.sqlite"))
