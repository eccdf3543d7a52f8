"""Portkey gateway (`@portkey-ai/gateway` from npm) in bench/.peers/portkey/node_modules.

Entry point: the package's `bin`, build/start-server.js (a Hono app on @hono/node-server); flags
`--port=N` and `--headless` (no console UI), NODE_ENV=production. It needs no config: each request
names its provider and upstream in headers (x-portkey-provider, x-portkey-custom-host).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from .common import LOGS, WORK, Proc, Unavailable, completion_check, free_port, log, run_text, wait_ready

DIR = WORK / "portkey"
PACKAGE = "@portkey-ai/gateway"
# Override to pin (e.g. ATP_BENCH_PORTKEY_SPEC='@portkey-ai/gateway@1.15.2'); the installed version
# is read from its package.json and printed with every run.
SPEC = os.environ.get("ATP_BENCH_PORTKEY_SPEC", PACKAGE)
READY_TIMEOUT_S = 60.0


def _pkg_dir() -> Path:
    return DIR / "node_modules" / "@portkey-ai" / "gateway"


def installed_version() -> str | None:
    try:
        return json.loads((_pkg_dir() / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def entry_point() -> Path:
    pkg = json.loads((_pkg_dir() / "package.json").read_text())
    b = pkg.get("bin")
    rel = b if isinstance(b, str) else (next(iter(b.values())) if b else "build/start-server.js")
    return _pkg_dir() / rel


def install() -> str:
    v = installed_version()
    stamp = DIR / ".bench-spec"
    if v and entry_point().exists() and stamp.exists() and stamp.read_text() == SPEC:
        return v
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise Unavailable("node/npm not found (apt-get install -y nodejs npm)")
    DIR.mkdir(parents=True, exist_ok=True)
    if not (DIR / "package.json").exists():  # a private project, so npm installs here, not upward
        (DIR / "package.json").write_text(json.dumps({"name": "atp-bench-portkey", "private": True}))
    LOGS.mkdir(parents=True, exist_ok=True)
    log(f"  npm install {SPEC} into {DIR} (first run)")
    env = {**os.environ, "NODE_ENV": "production"}  # skips the package's husky `prepare` step
    with open(LOGS / "portkey-install.log", "wb") as out:
        r = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--omit=dev", SPEC], cwd=DIR,
                           stdout=out, stderr=out, env=env)
    v = installed_version()
    if r.returncode != 0 or not v:
        raise Unavailable(f"npm install {SPEC} failed; see {LOGS / 'portkey-install.log'}")
    stamp.write_text(SPEC)
    return v


def version() -> str:
    return installed_version() or "not installed"


def node_version() -> str:
    return run_text(["node", "--version"]) or "not installed"


class Portkey:
    url_path = "/v1/chat/completions"

    def __init__(self, upstream_base_url: str, core: int | None, log_path: Path | None = None):
        self.core, self.port = core, free_port()
        self.log_path = log_path or LOGS / "portkey.log"
        self.headers = {"Authorization": "Bearer dummy", "x-portkey-provider": "openai",
                        "x-portkey-custom-host": upstream_base_url}
        self.proc: Proc | None = None

    def start(self) -> "Portkey":
        install()
        node = shutil.which("node")
        env = {**os.environ, "NODE_ENV": "production", "PORT": str(self.port)}
        self.proc = Proc("portkey", [node, str(entry_point()), f"--port={self.port}", "--headless"],
                         core=self.core, env=env, cwd=DIR, log_path=self.log_path)
        self.ready_s = wait_ready("portkey", completion_check("127.0.0.1", self.port, self.url_path, self.headers),
                                  READY_TIMEOUT_S, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace_s=5.0)
