"""bench/workers.py: the config it serves is valid, and with --redis it may fork (shared state)."""
from atp_server import config as atp_config

from bench import workers


def test_the_redis_config_shares_state_and_may_run_two_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(workers, "WORK", tmp_path)
    monkeypatch.setattr(workers.atp, "DIR", tmp_path / "atp")
    path = workers.write_config("http://127.0.0.1:9/v1", "redis://127.0.0.1:6379/0", 75)
    cfg = atp_config.load(path)
    assert cfg.state.redis_url == "redis://127.0.0.1:6379/0" and cfg.state.timeout_ms == 75
    assert [r.name for r in cfg.limits] == ["bench"] and not cfg.audit.enabled
    atp_config.check_workers(cfg, 2, "--workers")


def test_without_redis_nothing_is_shared_and_nothing_needs_to_be(tmp_path, monkeypatch):
    monkeypatch.setattr(workers, "WORK", tmp_path)
    monkeypatch.setattr(workers.atp, "DIR", tmp_path / "atp")
    cfg = atp_config.load(workers.write_config("http://127.0.0.1:9/v1", None, 50))
    assert not cfg.state.redis_url and not cfg.limits and not cfg.auth.hmac_keys
    atp_config.check_workers(cfg, 2, "--workers")
