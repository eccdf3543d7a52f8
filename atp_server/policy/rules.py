"""Policy files (TOML) parsed into rules, each compiled once into closures over request facts.

A rule is `id`, `priority` (higher first), `effect` (allow | deny | require_redaction |
restrict_models | cache | no_cache), optional `models` (restrict_models), `reason`, and `when`: conditions that must
all hold, each a list meaning "any of". Subject: tenant, user, group, key, attribute.<name>.
Resource: model (globs), provider, region, classification, tool, capability. Context: transport,
pii (detected types, "*" = any), hours_utc [start, end), weekdays, min/max_prompt_chars,
min_max_tokens.
"""
import fnmatch
import tomllib
from dataclasses import dataclass

EFFECTS = ("allow", "deny", "require_redaction", "restrict_models", "cache", "no_cache")
# Obligations on the response cache (stages/cache.py): `cache` opts the requests it matches in,
# `no_cache` keeps them out whatever the request or [cache] default asks.
CACHE_EFFECTS = {"cache": "on", "no_cache": "off"}
DECIDING = frozenset({"allow", "deny"})
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_LISTS = ("tenant", "user", "group", "key", "model", "provider", "region", "classification",
          "tool", "capability", "transport", "pii", "weekdays")
_INTS = ("min_prompt_chars", "max_prompt_chars", "min_max_tokens")
# Conditions that read the model a request goes to: evaluated per candidate model when the
# request is not pinned, so a deny on one model only takes that model out of routing.
MODEL_KEYS = frozenset({"model", "provider", "region"})
CONDITIONS = frozenset(_LISTS + _INTS + ("hours_utc",))


class PolicyError(ValueError):
    """An unusable policy file; the message starts with the file and the key at fault."""


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    priority: int
    effect: str
    reason: str
    when: dict                       # as written, for `atp policy test`'s explanation
    models: frozenset | None         # restrict_models: the models left usable
    check: object                    # fn(facts) -> bool, the conditions that do not read the model
    check_model: object              # fn(facts, spec) -> bool, or None when no condition reads it
    source: str                      # "file.toml: rules[3]"
    conditions: tuple = ()           # (name, pred, reads the model): for explanations only


@dataclass(frozen=True, slots=True)
class PolicySet:
    rules: tuple[Rule, ...]          # by priority, highest first; file order among equals
    default: str                     # "allow" | "deny" when no allow/deny rule matches
    max_prompt_chars: int
    max_tokens: int
    model_attributes: dict           # model id -> {"region": ..., ...} from [models."id"]
    by_tenant: dict = None           # tenant -> the rules that can match it, in walk order
    any_tenant: tuple = ()           # the rules without a tenant condition (other tenants)
    needs_clock: bool = False        # a rule reads the hour or weekday (else no gmtime per request)

    def candidates(self, tenant: str) -> tuple:
        """The rules worth checking for `tenant`: a rule naming other tenants never matches."""
        return self.by_tenant.get(tenant, self.any_tenant)


def make_policy_set(rules: list, settings: dict, attrs: dict) -> PolicySet:
    rules = sorted(rules, key=lambda r: -r.priority)     # stable: file order among equals
    def tenants_of(r):      # `when.tenant = "a"` is a list of one, not a string to search
        t = r.when.get("tenant")
        return (t,) if isinstance(t, str) else t
    named = {t for r in rules for t in tenants_of(r) or ()}
    by_tenant = {t: tuple(r for r in rules if t in (tenants_of(r) or (t,))) for t in named}
    return PolicySet(tuple(rules), settings["default"], settings["max_prompt_chars"],
                     settings["max_tokens"], attrs, by_tenant,
                     tuple(r for r in rules if "tenant" not in r.when),
                     any("hours_utc" in r.when or "weekdays" in r.when for r in rules))


def _fail(where: str, problem: str):
    raise PolicyError(f"{where}: {problem}")


def _compile_condition(where: str, name: str, value):
    """One condition -> fn(facts) (or fn(facts, spec) for MODEL_KEYS)."""
    if name.startswith("attribute."):
        attr = name.split(".", 1)[1]
        allowed = frozenset(_strings(where, value))
        return lambda f: f.attributes.get(attr) in allowed
    if name not in CONDITIONS:
        _fail(where, f"unknown condition (known: {', '.join(sorted(CONDITIONS))}, attribute.<name>)")
    if name in _INTS:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            _fail(where, "must be a non-negative integer")
        if name == "min_prompt_chars":
            return lambda f: f.prompt_chars >= value
        if name == "max_prompt_chars":
            return lambda f: f.prompt_chars <= value
        return lambda f: (f.max_tokens or 0) >= value
    if name == "hours_utc":
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(h, int) and 0 <= h <= 24 for h in value)):
            _fail(where, "must be [start, end) hours, integers in 0..24")
        start, end = value
        if start <= end:
            return lambda f: start <= f.hour < end
        return lambda f: f.hour >= start or f.hour < end     # across midnight: [22, 6)
    items = frozenset(_strings(where, value))
    if name == "weekdays":
        bad = items - set(WEEKDAYS)
        if bad:
            _fail(where, f"unknown day {sorted(bad)[0]!r} (known: {', '.join(WEEKDAYS)})")
        days = frozenset(WEEKDAYS.index(d) for d in items)
        return lambda f: f.weekday in days
    if name == "model":
        exact = frozenset(p for p in items if not any(c in p for c in "*?["))
        globs = tuple(p for p in items if p not in exact)
        return lambda f, m: m.id in exact or any(fnmatch.fnmatchcase(m.id, g) for g in globs)
    if name == "provider":
        return lambda f, m: m.provider in items
    if name == "region":
        return lambda f, m: f.model_attributes.get(m.id, {}).get("region") in items
    if name == "pii":
        if "*" in items:
            return lambda f: bool(f.pii)
        disjoint = items.isdisjoint
        return lambda f: not disjoint(f.pii)
    # One closure per fact, each reading its attribute directly (getattr(f, name) costs twice).
    overlap = items.isdisjoint
    if name == "group":
        return lambda f: not overlap(f.groups)
    if name == "tool":
        return lambda f: not overlap(f.tools)
    if name == "capability":
        return lambda f: not overlap(f.capabilities)
    if name == "tenant":
        return lambda f: f.tenant in items
    if name == "user":
        return lambda f: f.user in items
    if name == "key":
        return lambda f: f.key in items
    if name == "classification":
        return lambda f: f.classification in items
    return lambda f: f.transport in items


def _strings(where: str, value) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        _fail(where, f"must be a non-empty list of strings, got {value!r}")
    return value


def _all(preds: list, arity: int = 1):
    """One closure for a conjunction, unrolled for the common sizes (each level saves a call;
    fixed arities, not *args, which cost a tuple per call)."""
    if not preds:
        return None
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return (lambda f: a(f) and b(f)) if arity == 1 else (lambda f, m: a(f, m) and b(f, m))
    if len(preds) == 3:
        a, b, c = preds
        return ((lambda f: a(f) and b(f) and c(f)) if arity == 1
                else (lambda f, m: a(f, m) and b(f, m) and c(f, m)))
    first, rest = preds[0], _all(preds[1:], arity)
    return (lambda f: first(f) and rest(f)) if arity == 1 else (lambda f, m: first(f, m) and rest(f, m))


def compile_rule(where: str, t: dict, seen: set) -> Rule:
    known = {"id", "priority", "effect", "reason", "when", "models"}
    for name in t:
        if name not in known:
            _fail(f"{where}.{name}", f"unknown key (known: {', '.join(sorted(known))})")
    rid = t.get("id")
    if not isinstance(rid, str) or not rid:
        _fail(f"{where}.id", "is required (a non-empty string)")
    if rid in seen:
        _fail(f"{where}.id", f"rule {rid!r} is defined twice")
    seen.add(rid)
    effect = t.get("effect")
    if effect not in EFFECTS:
        _fail(f"{where}.effect", f"must be one of {', '.join(EFFECTS)}, got {effect!r}")
    priority = t.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        _fail(f"{where}.priority", "must be an integer")
    models = None
    if effect == "restrict_models":
        models = frozenset(_strings(f"{where}.models", t.get("models")))
    elif "models" in t:
        _fail(f"{where}.models", "only a restrict_models rule takes models")
    when = t.get("when", {})
    if not isinstance(when, dict):
        _fail(f"{where}.when", "must be a table of conditions")
    plain, on_model, conditions = [], [], []
    for name, value in when.items():
        pred = _compile_condition(f"{where}.when.{name}", name, value)
        (on_model if name in MODEL_KEYS else plain).append(pred)
        conditions.append((name, pred, name in MODEL_KEYS))
    reason = t.get("reason", "")
    if not isinstance(reason, str):
        _fail(f"{where}.reason", "must be a string")
    check = _all(plain) or (lambda f: True)
    return Rule(rid, priority, effect, reason, dict(when), models, check, _all(on_model, 2), where,
                tuple(conditions))


def parse_policy(data: dict, where: str, known_models: frozenset) -> tuple[list[Rule], dict, dict]:
    """One policy document -> (rules, settings, model attributes)."""
    known = {"rules", "default", "max_prompt_chars", "max_tokens", "models"}
    for name in data:
        if name not in known:
            _fail(f"{where}: {name}", f"unknown key (known: {', '.join(sorted(known))})")
    rules_in = data.get("rules", [])
    if not isinstance(rules_in, list) or not all(isinstance(r, dict) for r in rules_in):
        _fail(f"{where}: rules", "must be an array of tables: write [[rules]]")
    settings = {}
    if "default" in data:
        if data["default"] not in DECIDING:
            _fail(f"{where}: default", "must be allow or deny")
        settings["default"] = data["default"]
    for name in ("max_prompt_chars", "max_tokens"):
        if name in data:
            v = data[name]
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                _fail(f"{where}: {name}", "must be an integer >= 1")
            settings[name] = v
    attrs = data.get("models", {})
    if not isinstance(attrs, dict):
        _fail(f"{where}: models", 'must be a table: [models."<id>"] region = "eu"')
    for mid, a in attrs.items():
        if mid not in known_models:
            _fail(f"{where}: models.{mid}", "is not a configured model")
        if not isinstance(a, dict) or not all(isinstance(v, str) for v in a.values()):
            _fail(f"{where}: models.{mid}", "must be a table of strings")
    seen: set = set()
    rules = [compile_rule(f"{where}: rules[{i}]", r, seen) for i, r in enumerate(rules_in)]
    for r in rules:
        if r.models is not None and not r.models <= known_models:
            _fail(f"{r.source}.models", f"no configured model {sorted(r.models - known_models)[0]!r}")
    return rules, settings, {k: dict(v) for k, v in attrs.items()}


def load_policy_files(paths, known_models: frozenset, defaults: dict) -> PolicySet:
    """Every file parsed and compiled, or PolicyError naming the file and key: never half."""
    rules, settings, attrs, ids = [], dict(defaults), {}, {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise PolicyError(f"{path}: cannot read ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{path}: not TOML ({exc})") from None
        file_rules, file_settings, file_attrs = parse_policy(data, str(path), known_models)
        for r in file_rules:
            if r.id in ids:
                _fail(f"{r.source}.id", f"rule {r.id!r} is also defined in {ids[r.id]}")
            ids[r.id] = r.source
        rules += file_rules
        settings.update(file_settings)
        attrs.update(file_attrs)
    return make_policy_set(rules, settings, attrs)
