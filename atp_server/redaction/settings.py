"""The [redaction] and [guard] configuration: defaults plus per-tenant overrides, checked at load.

    [redaction]
    mode = "restore"                 # off | redact | restore | block
    types = ["email", "card"]        # default: every type (detectors.TYPES)
    [redaction.tenants.acme]         # any key left out is inherited from [redaction]
    mode = "block"

    [guard]
    mode = "tag"                     # off | tag | log | block
    threshold = 0.5                  # injection score at which the mode applies
    [guard.tenants.acme]
    mode = "block"

Errors name the dotted key at fault (config.py's ConfigError via the `fail` it passes in).
"""
from dataclasses import dataclass, field

from .detectors import TYPES

REDACTION_MODES = ("off", "redact", "restore", "block")
GUARD_MODES = ("off", "tag", "log", "block")
ALL_TYPES = frozenset(TYPES)


class _PerTenant:
    """A default rule and per-tenant rules (subclasses are dataclasses with those two fields)."""

    __slots__ = ()

    @property
    def enabled(self) -> bool:
        """Whether the stage belongs in the chain: some tenant's rule is not off."""
        return any(r.mode != "off" for r in (self.default, *self.tenants.values()))

    def rule(self, tenant: str):
        return self.tenants.get(tenant, self.default)


@dataclass(frozen=True, slots=True)
class RedactionRule:
    mode: str = "off"
    types: frozenset = ALL_TYPES


@dataclass(frozen=True, slots=True)
class RedactionConfig(_PerTenant):
    default: RedactionRule = RedactionRule()
    tenants: dict = field(default_factory=dict)     # tenant -> RedactionRule


@dataclass(frozen=True, slots=True)
class GuardRule:
    mode: str = "off"
    # 0.5: one strong signal (an explicit "ignore previous instructions") reaches it on its own,
    # one weak signal (a role word) does not; see injection.py for the weights.
    threshold: float = 0.5


@dataclass(frozen=True, slots=True)
class GuardConfig(_PerTenant):
    default: GuardRule = GuardRule()
    tenants: dict = field(default_factory=dict)     # tenant -> GuardRule


def _mode(key: str, value, modes, fail) -> str:
    if not isinstance(value, str) or value not in modes:
        fail(key, f"must be one of {', '.join(modes)}, got {value!r}")
    return value


def _types(key: str, value, fail) -> frozenset:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        fail(key, f"must be a list of type names ({', '.join(TYPES)}), got {value!r}")
    for i, name in enumerate(value):
        if name not in ALL_TYPES:
            fail(f"{key}[{i}]", f"unknown type {name!r} (known: {', '.join(TYPES)})")
    return frozenset(value)


def _threshold(key: str, value, fail) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        fail(key, f"must be a number in (0, 1], got {value!r}")
    return float(value)


def _rule(key: str, table, base, fail, *, tenants_allowed: bool):
    if not isinstance(table, dict):
        fail(key, f"must be a table, got {type(table).__name__} {table!r}")
    is_guard = isinstance(base, GuardRule)
    known = ("mode", "threshold") if is_guard else ("mode", "types")
    known += ("tenants",) if tenants_allowed else ()
    for name in table:
        if name not in known:
            fail(f"{key}.{name}", f"unknown key (known: {', '.join(known)})")
    mode = _mode(f"{key}.mode", table["mode"], GUARD_MODES if is_guard else REDACTION_MODES,
                 fail) if "mode" in table else base.mode
    if is_guard:
        threshold = (_threshold(f"{key}.threshold", table["threshold"], fail)
                     if "threshold" in table else base.threshold)
        return GuardRule(mode, threshold)
    types = _types(f"{key}.types", table["types"], fail) if "types" in table else base.types
    return RedactionRule(mode, types)


def _parse(section: str, table, base, cls, fail):
    default = _rule(section, table, base, fail, tenants_allowed=True)
    tenants_table = table.get("tenants", {})
    if not isinstance(tenants_table, dict):
        fail(f"{section}.tenants", "must be a table of tables: write [" + section + ".tenants.NAME]")
    tenants = {name: _rule(f"{section}.tenants.{name}", t, default, fail, tenants_allowed=False)
               for name, t in tenants_table.items()}
    return cls(default, tenants)


def parse_redaction(table, fail) -> RedactionConfig:
    return _parse("redaction", table, RedactionRule(), RedactionConfig, fail)


def parse_guard(table, fail) -> GuardConfig:
    return _parse("guard", table, GuardRule(), GuardConfig, fail)
