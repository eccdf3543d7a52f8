"""Chooses the pure or native twin of the codec primitives; ATP_NATIVE=0|1 forces either.

ATP_NATIVE unset: native if it was built, else pure. ATP_NATIVE=1 and no native build is an
error at import (a forced choice must not silently degrade). Tests switch with `use()`.
"""
import os

from . import _pure

try:
    from . import _native  # type: ignore[attr-defined]
except ImportError:  # the optional C build did not happen
    _native = None

AVAILABLE = {"pure": _pure}
if _native is not None:
    AVAILABLE["native"] = _native

impl = _pure


def use(name: str):
    """Select a twin by name ('pure' or 'native'); returns the module now in use."""
    global impl
    if name not in AVAILABLE:
        raise ImportError(f"codec backend {name!r} is not available (built: {sorted(AVAILABLE)})")
    impl = AVAILABLE[name]
    return impl


def _from_env():
    forced = os.environ.get("ATP_NATIVE", "").strip()
    if forced == "0":
        return use("pure")
    if forced == "1":
        return use("native")
    if forced not in ("", "auto"):
        raise ValueError(f"ATP_NATIVE must be 0, 1 or auto, not {forced!r}")
    return use("native" if _native is not None else "pure")


_from_env()
