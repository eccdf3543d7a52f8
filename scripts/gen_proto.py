#!/usr/bin/env python3
"""Regenerate the Python gRPC stubs for every .proto under proto/ (the ONE command for it).

    python scripts/gen_proto.py           # write proto/<pkg>/<name>_pb2.py, _pb2_grpc.py, _pb2.pyi
    python scripts/gen_proto.py --check   # CI drift check: exit 1 if the committed stubs are stale

Layout: each stub is written next to its .proto, so proto/atp/v1/atp.proto gives
proto/atp/v1/atp_pb2.py, atp_pb2_grpc.py and atp_pb2.pyi, imported as

    from proto.atp.v1 import atp_pb2, atp_pb2_grpc

protoc emits absolute imports for generated modules (`from atp.v1 import atp_pb2 as ...`), which
only resolve when `atp` is a top-level package. They are rewritten to relative imports
(`from . import atp_pb2 as ...`, or `from ...atp.v1 import ...` across packages) so the stubs
work from the repo root and after `pip install -e .`. Imports of modules that are not generated
here (google.protobuf well-known types, grpc) are left alone. Every directory holding stubs, and
every directory between it and proto/, gets an __init__.py if missing (created empty, never
overwritten).

Generation goes to a temporary directory first; the tree is only touched once protoc succeeded.
Stubs whose .proto has gone away are deleted (or, with --check, reported).

Output depends on the grpcio-tools version (it bundles protoc and stamps its version into the
stubs): regenerate and check with the version pinned for the project.
"""
import argparse
import difflib
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")

# `from atp.v1 import atp_pb2 as atp_dot_v1_dot_atp__pb2` (also the .pyi form `... as _atp_pb2`).
_IMPORT = re.compile(r"^from ([A-Za-z_][\w.]*) import (\w+_pb2)\b", re.M)


def _protos():
    """Every .proto under proto/, as paths relative to proto/ (posix), sorted."""
    return sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))


def _stub_names(proto_rel):
    base = proto_rel[: -len(".proto")]
    return [base + s for s in SUFFIXES]


def _relative_imports(text, module_pkg, generated):
    """Rewrite imports of generated modules in one stub to be relative to its package.

    module_pkg: the stub's package as a tuple of parts relative to proto/, e.g. ("atp", "v1").
    generated: set of dotted module names generated in this run, e.g. {"atp.v1.atp_pb2"}.
    """

    def fix(m):
        pkg, mod = m.group(1), m.group(2)
        if f"{pkg}.{mod}" not in generated:
            return m.group(0)
        target = tuple(pkg.split("."))
        common = 0
        while common < min(len(target), len(module_pkg)) and target[common] == module_pkg[common]:
            common += 1
        dots = "." * (len(module_pkg) - common + 1)
        rest = ".".join(target[common:])
        return f"from {dots}{rest} import {mod}"

    return _IMPORT.sub(fix, text)


def _generate(out_dir, protos):
    """Run protoc on all protos into out_dir, then post-process imports. Returns {rel: text}."""
    from grpc_tools import protoc
    import grpc_tools

    wkt = Path(grpc_tools.__file__).resolve().parent / "_proto"  # google/protobuf/*.proto
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{wkt}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *[str(PROTO_ROOT / p) for p in protos],
    ]
    rc = protoc.main(args)
    if rc != 0:
        sys.exit(f"gen_proto: protoc failed (exit {rc})")

    generated = {p[: -len(".proto")].replace("/", ".") + "_pb2" for p in protos}
    result = {}
    for p in protos:
        pkg = tuple(Path(p).parent.parts)
        for rel in _stub_names(p):
            src = Path(out_dir) / rel
            if not src.exists():
                sys.exit(f"gen_proto: protoc did not produce {rel}")
            result[rel] = _relative_imports(src.read_text(encoding="utf-8"), pkg, generated)
    return result


def _package_dirs(protos):
    """proto/ and every directory between it and a .proto (each needs an __init__.py)."""
    dirs = {PROTO_ROOT}
    for p in protos:
        d = (PROTO_ROOT / p).parent
        while d != PROTO_ROOT:
            dirs.add(d)
            d = d.parent
    return sorted(dirs)


def _existing_stubs():
    found = set()
    for s in SUFFIXES:
        for f in PROTO_ROOT.rglob("*" + s):
            found.add(f.relative_to(PROTO_ROOT).as_posix())
    return found


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="do not write; exit 1 if committed stubs differ from fresh output")
    args = ap.parse_args(argv)

    protos = _protos()
    if not protos:
        sys.exit(f"gen_proto: no .proto files under {PROTO_ROOT}")

    with tempfile.TemporaryDirectory(prefix="gen_proto_") as tmp:
        fresh = _generate(tmp, protos)

    stale = sorted(_existing_stubs() - set(fresh))
    missing_init = [d for d in _package_dirs(protos) if not (d / "__init__.py").exists()]

    if args.check:
        problems = []
        for rel, text in sorted(fresh.items()):
            path = PROTO_ROOT / rel
            if not path.exists():
                problems.append(f"missing: proto/{rel}")
                continue
            old = path.read_text(encoding="utf-8")
            if old != text:
                diff = list(difflib.unified_diff(
                    old.splitlines(), text.splitlines(),
                    f"proto/{rel} (committed)", f"proto/{rel} (fresh)", lineterm="", n=1))
                changed = sum(1 for l in diff if l[:1] in "+-" and l[:3] not in ("+++", "---"))
                problems.append(f"differs: proto/{rel} ({changed} changed lines)")
                problems.extend("    " + (l if len(l) <= 160 else l[:157] + "...") for l in diff[:40])
                if len(diff) > 40:
                    problems.append(f"    ... ({len(diff) - 40} more diff lines)")
        problems += [f"stale (no .proto): proto/{rel}" for rel in stale]
        problems += [f"missing: {d.relative_to(ROOT).as_posix()}/__init__.py" for d in missing_init]
        if problems:
            print("gen_proto --check: generated stubs are out of date:", file=sys.stderr)
            for line in problems:
                print("  " + line, file=sys.stderr)
            print("run: python scripts/gen_proto.py", file=sys.stderr)
            return 1
        print(f"gen_proto --check: {len(fresh)} stubs from {len(protos)} proto(s) up to date")
        return 0

    for d in missing_init:
        (d / "__init__.py").write_text("", encoding="utf-8")
    written = 0
    for rel, text in sorted(fresh.items()):
        path = PROTO_ROOT / rel
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = path.with_name(path.name + ".tmp")
        tmp_path.write_text(text, encoding="utf-8")
        os.replace(tmp_path, path)
        written += 1
    for rel in stale:
        (PROTO_ROOT / rel).unlink()
    print(f"gen_proto: {len(protos)} proto(s), {written} stub(s) rewritten, "
          f"{len(fresh) - written} unchanged, {len(stale)} stale removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
