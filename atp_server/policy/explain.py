"""`atp policy test request.json`: the decision for a described request, and why, rule by rule."""
import calendar
import time

from ..auth import Principal
from ..types import ChatRequest
from . import Facts, PolicyHolder

REQUEST_KEYS = {"principal", "request", "transport", "pii", "time"}
PRINCIPAL_KEYS = {"tenant", "user", "groups", "key", "attributes", "models"}


def _expect(where: str, value, types, what: str):
    if not isinstance(value, types) or isinstance(value, bool):
        raise ValueError(f"{where}: must be {what}, got {value!r}")
    return value


def parse_case(doc, tenants=()) -> tuple[Principal, ChatRequest, str, tuple, float]:
    """The JSON test case -> (principal, request, transport, pii types, wall time); the
    principal gets its configured tenant's attributes and its user's groups, as a server's would."""
    _expect("(document)", doc, dict, "an object")
    for k in doc:
        if k not in REQUEST_KEYS:
            raise ValueError(f"{k}: unknown key (known: {', '.join(sorted(REQUEST_KEYS))})")
    p = _expect("principal", doc.get("principal", {}), dict, "an object")
    for k in p:
        if k not in PRINCIPAL_KEYS:
            raise ValueError(f"principal.{k}: unknown key (known: {', '.join(sorted(PRINCIPAL_KEYS))})")
    models = p.get("models")
    tenant = _expect("principal.tenant", p.get("tenant", "default"), str, "a string")
    user = _expect("principal.user", p.get("user", ""), str, "a string")
    configured = next((t for t in tenants if t.name == tenant), None)
    groups = frozenset(_expect("principal.groups", p.get("groups", []), list, "a list"))
    attributes = dict(_expect("principal.attributes", p.get("attributes", {}), dict, "an object"))
    if configured is not None:
        groups |= configured.users.get(user, frozenset())
        attributes = {**configured.attributes, **attributes}
    principal = Principal(
        tenant, p.get("key", "test"), "api_key", user, groups, attributes,
        None if models is None else frozenset(_expect("principal.models", models, list, "a list")),
        p.get("key", "test"))
    r = _expect("request", doc.get("request", {}), dict, "an object")
    messages = r.get("messages") or [{"role": "user", "content": r.get("prompt", "")}]
    request = ChatRequest(
        [(m.get("role", "user"), m.get("content", "")) for m in messages],
        model=r.get("model"), max_tokens=r.get("max_tokens"),
        capabilities=tuple(r.get("capabilities", ())),
        metadata={str(k): str(v) for k, v in r.get("metadata", {}).items()})
    when = doc.get("time")
    wall = time.time() if when is None else calendar.timegm(
        time.strptime(_expect("time", when, str, "an ISO time"), "%Y-%m-%dT%H:%M:%SZ"))
    return (principal, request, _expect("transport", doc.get("transport", "http"), str, "a string"),
            tuple(doc.get("pii", ())), wall)


def explain(holder: PolicyHolder, doc, tenants=()) -> dict:
    """The decision, plus each rule in walk order with the first condition that failed."""
    principal, request, transport, pii, wall = parse_case(doc, tenants)
    holder.wall = lambda: wall
    decision = holder.decide(principal, request, transport, pii)
    facts = Facts(principal, request, transport, pii, wall, holder.policy.model_attributes)
    spec = holder.models.get(request.model) if request.model else None
    trace, decided = [], False
    for r in holder.policy.rules:
        if decided:      # the walk ended at an allow/deny above: this rule was not read
            trace.append({"rule": r.id, "priority": r.priority, "effect": r.effect,
                          "source": r.source, "matched": False, "failed": None, "reached": False})
            continue
        failed = None
        for name, pred, on_model in r.conditions:
            if on_model:
                if spec is None:
                    failed = f"{name} (decided per candidate model: the request names none)"
                    break
                ok = pred(facts, spec)
            else:
                ok = pred(facts)
            if not ok:
                failed = name
                break
        trace.append({"rule": r.id, "priority": r.priority, "effect": r.effect,
                      "source": r.source, "matched": failed is None, "failed": failed,
                      "reached": True})
        decided = failed is None and spec is not None and (
            r.effect in ("allow", "deny")
            or (r.effect == "restrict_models" and spec.id not in r.models))
    return {"allowed": decision.allowed, "rule": decision.rule, "reason": decision.reason,
            "models": None if decision.models is None else sorted(decision.models),
            "require_redaction": decision.redact, "cache": decision.cache,
            "matched": list(decision.matched),
            "dry_run": decision.dry_run, "trace": trace}
