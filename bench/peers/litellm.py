"""LiteLLM proxy (`litellm[proxy]` from PyPI) in its own venv, one model entry pointing at nginx.

No database, no master key (`dangerously_permit_weak_or_unset_master_key`), logging off, the local
model cost map (LITELLM_LOCAL_MODEL_COST_MAP=True: no network fetch at start). It takes tens of
seconds to import and start, hence the long readiness bound.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from . import upstream
from .common import LOGS, WORK, Proc, Unavailable, completion_check, free_port, log, run_text, wait_ready

VENV = WORK / "litellm-venv"
STAMP = VENV / ".bench-installed.json"
# Override to pin (e.g. ATP_BENCH_LITELLM_SPEC='litellm[proxy]==1.77.0'); the installed version is
# recorded in STAMP and printed with every run.
SPEC = os.environ.get("ATP_BENCH_LITELLM_SPEC", "litellm[proxy]")
API_KEY = "sk-bench-dummy"  # accepted: no master key is set
READY_TIMEOUT_S = 180.0


def _python() -> Path:
    return VENV / "bin" / "python"


def installed_version() -> str | None:
    try:
        return json.loads(STAMP.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def _installed_spec() -> str | None:
    try:
        return json.loads(STAMP.read_text())["spec"]
    except (OSError, ValueError, KeyError):
        return None


def install() -> str:
    """Create the venv and pip-install litellm[proxy] once; return the installed version."""
    v = installed_version()
    if v and _installed_spec() == SPEC and (VENV / "bin" / "litellm").exists():
        return v
    LOGS.mkdir(parents=True, exist_ok=True)
    log(f"  installing {SPEC} into {VENV} (first run; a few minutes)")
    base = sys.executable  # any CPython >= 3.9 works for litellm; use ours (the project's >= 3.11)
    with open(LOGS / "litellm-install.log", "wb") as out:
        steps = [[base, "-m", "venv", "--clear", str(VENV)],
                 [str(_python()), "-m", "pip", "install", "-q", "--upgrade", "pip"],
                 [str(_python()), "-m", "pip", "install", "-q", SPEC]]
        for cmd in steps:
            if subprocess.run(cmd, stdout=out, stderr=out).returncode != 0:
                raise Unavailable(f"LiteLLM install failed at {' '.join(cmd[-3:])}; see {LOGS / 'litellm-install.log'}")
    v = run_text([str(_python()), "-c", "import importlib.metadata as m; print(m.version('litellm'))"])
    if not v or " " in v:
        raise Unavailable(f"LiteLLM installed but not importable: {v}")
    STAMP.write_text(json.dumps({"spec": SPEC, "version": v}))
    return v


def version() -> str:
    return installed_version() or "not installed"


def write_config(upstream_base_url: str, path: Path) -> Path:
    # YAML is a superset of JSON: write JSON and need no YAML library.
    cfg = {
        "model_list": [{
            "model_name": upstream.MODEL,
            "litellm_params": {"model": f"openai/{upstream.MODEL}", "api_base": upstream_base_url,
                               "api_key": "dummy"},
        }],
        "litellm_settings": {"set_verbose": False, "json_logs": False, "turn_off_message_logging": True,
                             "telemetry": False, "request_timeout": 60},
        "general_settings": {"dangerously_permit_weak_or_unset_master_key": True,
                             "disable_spend_logs": True, "disable_error_logs": True},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=2))
    return path


class LiteLLM:
    def __init__(self, upstream_base_url: str, core: int | None, log_path: Path | None = None,
                 num_workers: int = 1):
        self.upstream_base_url, self.core, self.num_workers = upstream_base_url, core, num_workers
        self.port = free_port()
        self.log_path = log_path or LOGS / "litellm.log"
        self.proc: Proc | None = None

    url_path = "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def start(self) -> "LiteLLM":
        install()
        conf = write_config(self.upstream_base_url, WORK / "litellm" / "config.yaml")
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
               "LITELLM_TELEMETRY": "False", "DISABLE_ADMIN_UI": "True", "NO_DOCS": "True",
               "PYTHONUNBUFFERED": "1"}
        env.pop("DATABASE_URL", None)
        env.pop("VIRTUAL_ENV", None)
        cmd = [str(VENV / "bin" / "litellm"), "--config", str(conf), "--host", "127.0.0.1",
               "--port", str(self.port), "--num_workers", str(self.num_workers)]
        if self.num_workers > 1:
            cmd += ["--timeout_worker_healthcheck", "180"]
        self.proc = Proc("litellm", cmd, core=self.core, env=env, cwd=WORK / "litellm", log_path=self.log_path)
        self.ready_s = wait_ready("litellm", completion_check("127.0.0.1", self.port, self.url_path, self.headers),
                                  READY_TIMEOUT_S, self.proc, interval_s=0.5)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace_s=10.0)
