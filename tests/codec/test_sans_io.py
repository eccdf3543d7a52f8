"""codec/ stays sans-I/O: no module imports or references a clock, an RNG, sockets, threads or an event loop.

docs/ARCHITECTURE.md: time and randomness are passed in. Two exceptions, both explicit here:
codec/backend.py reads the ATP_NATIVE environment variable through `os.environ` at import, and
codec/aio/ is the asyncio glue that drives a Connection on a loop (it may use asyncio, time and
aioquic; tests/test_layering.py holds it to that).
"""
import ast
import pathlib

import pytest

import codec

CODEC_DIR = pathlib.Path(codec.__file__).parent
EXEMPT_DIRS = {"aio"}     # subpackages of codec/ that are I/O glue by design
MODULES = sorted(p for p in CODEC_DIR.rglob("*.py")
                 if p.relative_to(CODEC_DIR).parts[0] not in EXEMPT_DIRS)

FORBIDDEN_MODULES = {
    "asyncio", "socket", "time", "random", "secrets", "threading", "selectors", "ssl", "os",
    "datetime", "uuid", "subprocess", "multiprocessing", "concurrent", "signal", "select",
    "_thread", "urllib", "http", "trio", "anyio", "sched",
}
OS_ALLOWED_IN = {"backend.py": {"environ"}}   # module file -> os attributes it may use

# Attribute names that mean a clock or an RNG, whatever they are reached through.
FORBIDDEN_ATTRS = {"urandom", "getrandom", "token_bytes", "token_hex", "randbytes", "randint",
                   "monotonic", "monotonic_ns", "perf_counter", "time_ns", "utcnow", "now",
                   "uuid4", "uuid1", "getpid", "sleep"}
FORBIDDEN_CALLS = {"__import__", "open", "input", "exec", "eval"}


def violations(source: str, filename: str) -> list[str]:
    """Every forbidden import or reference in `source` (empty when the module is sans-I/O)."""
    found = []
    allowed_os = OS_ALLOWED_IN.get(filename)
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else []
            if node.level == 0 and (node.module or "").split(".")[0] == "os":
                found.append(f"{filename}:{node.lineno}: from os import ...")
                continue
            if node.level == 0 and (node.module or "").split(".")[0] == "importlib":
                found.append(f"{filename}:{node.lineno}: importlib")
                continue
        else:
            names = []
        for name in names:
            top = name.split(".")[0]
            if top == "os" and allowed_os is not None:
                continue
            if top in FORBIDDEN_MODULES or top == "importlib":
                found.append(f"{filename}:{node.lineno}: import {name}")
        if isinstance(node, ast.Attribute):
            if node.attr in FORBIDDEN_ATTRS:
                found.append(f"{filename}:{node.lineno}: .{node.attr}")
            if isinstance(node.value, ast.Name) and node.value.id == "os":
                if allowed_os is None or node.attr not in allowed_os:
                    found.append(f"{filename}:{node.lineno}: os.{node.attr}")
        if isinstance(node, ast.Name) and node.id in FORBIDDEN_ATTRS | FORBIDDEN_CALLS:
            if isinstance(node.ctx, ast.Load):
                found.append(f"{filename}:{node.lineno}: {node.id}")
    return found


def test_only_codec_aio_is_exempt():
    subpackages = {p.parent.relative_to(CODEC_DIR).parts[0] for p in CODEC_DIR.rglob("*.py")
                   if p.parent != CODEC_DIR}
    assert EXEMPT_DIRS <= subpackages           # the exemption names something real
    checked = {p.relative_to(CODEC_DIR).parts[0] for p in MODULES if p.parent != CODEC_DIR}
    assert checked == subpackages - EXEMPT_DIRS  # any other subpackage is checked
    assert (CODEC_DIR / "aio" / "driver.py") not in MODULES
    assert (CODEC_DIR / "connection.py") in MODULES


def test_codec_has_the_expected_modules():
    names = {path.name for path in MODULES}
    assert {"__init__.py", "backend.py", "connection.py", "frame.py", "keys.py", "payload.py",
            "replay.py", "flow.py", "stream.py", "events.py", "errors.py", "_pure.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_is_sans_io(path):
    assert violations(path.read_text(), path.name) == []


def test_only_backend_touches_os_and_only_environ():
    users = {}
    for path in MODULES:
        tree = ast.parse(path.read_text())
        attrs = {node.attr for node in ast.walk(tree)
                 if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                 and node.value.id == "os"}
        if attrs:
            users[path.name] = attrs
    assert users == {"backend.py": {"environ"}}


def test_no_code_token_names_a_clock_or_rng():
    # tokens, not text: comments and docstrings may talk about datetimes
    import io
    import tokenize
    for path in MODULES:
        tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        names = {tok.string for tok in tokens if tok.type == tokenize.NAME}
        assert not names & (FORBIDDEN_ATTRS | {"urandom", "datetime", "secrets", "asyncio"}), path.name


def test_native_twin_source_has_no_clock_rng_or_io_calls():
    source = CODEC_DIR.parent / "native" / "atp_native.c"
    if not source.exists():
        pytest.skip("native source not present")
    import re
    text = source.read_text()
    # comments and string literals may say "at the same time (...)"; only code counts
    text = re.sub(r"/\*.*?\*/|//[^\n]*|\"(?:\\.|[^\"\\])*\"", " ", text, flags=re.S)
    calls = re.findall(r"\b(rand|srand|random|time|clock_gettime|gettimeofday|getrandom|"
                       r"arc4random|socket|connect|pthread_create|fopen|sleep|usleep)\s*\(", text)
    assert calls == []


# ---- the checker itself catches what it should --------------------------------------------------

@pytest.mark.parametrize("source", [
    "import time", "import os", "from os import urandom", "import asyncio.events",
    "from random import random", "import secrets as s", "import threading",
    "import socket, struct", "x = os.urandom(8)", "t = clock.monotonic()", "import ssl",
    "import selectors", "from datetime import datetime", "__import__('time')",
    "import importlib; importlib.import_module('time')", "from concurrent import futures",
])
def test_checker_flags_violations(source):
    assert violations(source, "frame.py") != []


def test_checker_allows_environ_in_backend_only():
    source = "import os\nforced = os.environ.get('ATP_NATIVE', '')\n"
    assert violations(source, "backend.py") == []
    assert violations(source, "frame.py") != []
    assert violations("import os\nos.urandom(8)\n", "backend.py") != []


def test_checker_allows_the_codecs_real_imports():
    source = "import hashlib, hmac, struct, io\nfrom dataclasses import dataclass\nimport cbor2\n" \
             "from enum import IntEnum\nfrom collections import deque\nfrom . import backend\n"
    assert violations(source, "frame.py") == []
