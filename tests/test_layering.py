"""The layering rules of docs/ARCHITECTURE.md, enforced on every import statement (module level or not).

- codec/ is the sans-I/O core: no event loop, clock, RNG, sockets, threads or network library;
  codec/aio/ alone is the asyncio glue and may use asyncio, time and aioquic.
- codec/ (aio included) imports neither the server nor the SDK: both build on it.
- atp_server/ never imports the SDK (atp_client); atp_server/cli.py is exempt, being a client of
  a running server as much as its launcher.
- clients/atp_client/ never imports atp_server: the SDK depends on codec (and proto) only.
- atp_server/routing/ never imports atp_server.adapters: model specs live with the table.
- only atp_server/tracing/otel.py imports opentelemetry (the optional `otel` extra).
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).parents[1]
IO_MODULES = {"asyncio", "socket", "time", "random", "threading", "grpc", "aioquic", "aiohttp",
              "uvloop", "selectors", "ssl", "secrets"}
AIO_MAY_USE = {"asyncio", "time", "aioquic"}


def imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "__import__" and node.args
              and isinstance(node.args[0], ast.Constant)):
            found.append((node.lineno, str(node.args[0].value).split(".")[0]))
    return found


def files(folder: str) -> list[pathlib.Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def rel(path: pathlib.Path) -> str:
    return str(path.relative_to(ROOT))


def violations(folder: str, forbidden, exempt=()) -> list[str]:
    out = []
    for path in files(folder):
        if rel(path) in exempt:
            continue
        banned = forbidden(path)
        out += [f"{rel(path)}:{line}: imports {mod}" for line, mod in imports(path) if mod in banned]
    return out


def codec_forbidden(path: pathlib.Path) -> set:
    upper = {"atp_server", "atp_client"}
    if (ROOT / "codec" / "aio") in path.parents:
        return upper | (IO_MODULES - AIO_MAY_USE)
    return upper | IO_MODULES


def test_codec_is_sans_io_except_codec_aio():
    assert violations("codec", codec_forbidden) == []


def test_server_does_not_import_the_sdk():
    assert violations("atp_server", lambda p: {"atp_client"}, exempt={"atp_server/cli.py"}) == []


def test_sdk_does_not_import_the_server():
    assert violations("clients/atp_client", lambda p: {"atp_server"}) == []


def test_only_the_tracing_extras_module_imports_opentelemetry():
    # The otel extra is optional: every other module must import without it (tracing/__init__.py
    # imports tracing/otel.py only when [tracing] enabled = true).
    assert violations("atp_server", lambda p: {"opentelemetry"},
                      exempt={"atp_server/tracing/otel.py"}) == []
    assert "opentelemetry" in {m for _, m in imports(ROOT / "atp_server/tracing/otel.py")}


def routing_imports_adapters(path: pathlib.Path) -> list[str]:
    """Relative or absolute imports of the adapters package from a routing module."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            names = [a.name for a in node.names]
            absolute = node.level == 0 and mod.startswith("atp_server.adapters")
            relative = node.level == 2 and (mod.startswith("adapters") or (not mod and "adapters" in names))
            if absolute or relative:
                out.append(f"{rel(path)}:{node.lineno}")
        elif isinstance(node, ast.Import):
            out += [f"{rel(path)}:{node.lineno}" for a in node.names if a.name.startswith("atp_server.adapters")]
    return out


def test_routing_does_not_import_adapters():
    assert [v for p in files("atp_server/routing") for v in routing_imports_adapters(p)] == []


def test_the_rules_cover_the_code_they_name():
    assert any((ROOT / "codec" / "aio") in p.parents for p in files("codec"))
    assert len(files("atp_server")) > 10 and len(files("clients/atp_client")) > 5


# ---- the checker catches what it should ---------------------------------------------------------

@pytest.mark.parametrize("source,module", [
    ("import asyncio", "asyncio"), ("from aioquic.quic import events", "aioquic"),
    ("def f():\n    import atp_client.sync", "atp_client"), ("__import__('socket')", "socket"),
    ("import grpc.aio as g", "grpc")])
def test_checker_sees_every_kind_of_import(tmp_path, source, module):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert [m for _, m in imports(path)] == [module]


def test_checker_ignores_relative_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("from . import time\nfrom .asyncio import x\n")
    assert imports(path) == []
