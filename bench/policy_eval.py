"""µs per policy decision, 20 rules: ATP's closures compiled at load against Cedar (cedarpy).

The same 20 deny rules over tenant, group, model, provider, PII types, prompt size, hour and data
classification, with allow as the default, in both languages (Cedar: one permit plus 20 forbids;
with deny rules only, "the first matching deny" and "any forbid wins" decide alike). Every sample
request is checked to get the same decision from both before anything is timed.
"""
import json
import statistics
import time

HELP = "µs per policy decision (20 rules): ATP compiled closures vs cedarpy"

TENANTS = [f"t{i}" for i in range(10)]
MODELS = ["cheap", "smart", "vision-x", "local"]


def atp_rules() -> str:
    out = []
    for i in range(20):
        kind = i % 5
        cond = {0: f'when.tenant = ["t{i % 10}"]\nwhen.model = ["smart"]',
                1: f'when.group = ["g{i}"]\nwhen.pii = ["email"]',
                2: f'when.tenant = ["t{i % 10}"]\nwhen.min_prompt_chars = {1000 + i}',
                3: f'when.classification = ["secret"]\nwhen.provider = ["p{i % 3}"]',
                4: f'when.group = ["g{i}"]\nwhen.hours_utc = [0, {i % 24 + 1}]'}[kind]
        out.append(f'[[rules]]\nid = "r{i}"\npriority = {100 - i}\neffect = "deny"\n{cond}\n')
    return "\n".join(out)


def cedar_rules() -> str:
    out = ["permit(principal, action, resource);"]
    for i in range(20):
        kind = i % 5
        cond = {0: f'principal.tenant == "t{i % 10}" && resource.id == "smart"',
                1: f'principal in Group::"g{i}" && context.pii.contains("email")',
                2: f'principal.tenant == "t{i % 10}" && context.prompt_chars >= {1000 + i}',
                3: f'context.classification == "secret" && resource.provider == "p{i % 3}"',
                4: f'principal in Group::"g{i}" && context.hour >= 0 && context.hour < {i % 24 + 1}'}[kind]
        out.append(f'@id("r{i}")\nforbid(principal, action, resource) when {{ {cond} }};')
    return "\n".join(out)


def samples(n: int):
    """Deterministic requests spread over tenants, groups, models, PII and sizes."""
    out = []
    for i in range(n):
        out.append({"tenant": TENANTS[i % 10], "groups": [f"g{(i * 7) % 23}"],
                    "model": MODELS[i % 4], "provider": f"p{i % 3}",
                    "pii": ["email"] if i % 3 == 0 else [], "chars": 200 + (i * 131) % 2000,
                    "classification": "secret" if i % 4 == 0 else "internal", "hour": i % 24})
    return out


def build_atp(now_hour_of):
    from atp_server.auth import Principal
    from atp_server.policy import PolicyHolder
    from atp_server.routing.spec import ModelSpec
    from atp_server.types import ChatRequest
    specs = [ModelSpec(m, f"p{i % 3}", m) for i, m in enumerate(MODELS)]
    holder = PolicyHolder.of_rules(atp_rules(), specs)

    def prepare(s):
        p = Principal(s["tenant"], "k", "api_key", "", frozenset(s["groups"]), {}, None, "k")
        r = ChatRequest([("user", "x" * s["chars"])], model=s["model"],
                        metadata={"data_classification": s["classification"]})
        return p, r, tuple(s["pii"]), s["hour"] * 3600.0

    def decide(prepared):
        p, r, pii, wall = prepared
        holder.wall = lambda: wall
        return holder.decide(p, r, "http", pii).allowed
    return prepare, decide


def build_cedar():
    import cedarpy
    policies = cedarpy.PolicySet.from_str(cedar_rules())   # parsed once, like ours

    def prepare(s):
        principal = f'User::"{s["tenant"]}-k"'
        entities = [{"uid": {"type": "User", "id": f'{s["tenant"]}-k'},
                     "attrs": {"tenant": s["tenant"]},
                     "parents": [{"type": "Group", "id": g} for g in s["groups"]]},
                    *({"uid": {"type": "Group", "id": g}, "attrs": {}, "parents": []}
                      for g in s["groups"]),
                    {"uid": {"type": "Model", "id": s["model"]},
                     "attrs": {"id": s["model"], "provider": s["provider"]}, "parents": []}]
        request = {"principal": principal, "action": 'Action::"complete"',
                   "resource": f'Model::"{s["model"]}"',
                   "context": {"pii": s["pii"], "prompt_chars": s["chars"],
                               "classification": s["classification"], "hour": s["hour"]}}
        return request, entities, cedarpy.Entities.from_json_str(json.dumps(entities))

    def decide(prepared, prebuilt: bool):
        request, entities, built = prepared
        result = cedarpy.is_authorized(request, policies, built if prebuilt else entities)
        return result.decision == cedarpy.Decision.Allow
    return prepare, decide


def _time(fn, items, repeats: int) -> float:
    """Median over `repeats` passes of µs per call."""
    per = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for x in items:
            fn(x)
        per.append((time.perf_counter_ns() - t0) / len(items) / 1000)
    return statistics.median(per)


def add_arguments(p) -> None:
    p.add_argument("--requests", type=int, default=400, help="distinct sample requests (default 400)")
    p.add_argument("--repeats", type=int, default=15, help="timed passes; the median is reported")


def main(args) -> int:
    data = samples(args.requests)
    atp_prepare, atp_decide = build_atp(None)
    atp_items = [atp_prepare(s) for s in data]
    rows = [("atp closures (decide, incl. facts)", _time(atp_decide, atp_items, args.repeats))]
    try:
        cedar_prepare, cedar_decide = build_cedar()
    except ImportError:
        print("cedarpy is not installed: pip install cedarpy (dev extra)")
        cedar_prepare = None
    if cedar_prepare is not None:
        cedar_items = [cedar_prepare(s) for s in data]
        disagree = [i for i, (a, c) in enumerate(zip(atp_items, cedar_items))
                    if atp_decide(a) != cedar_decide(c, True)]
        if disagree:
            print(f"the two rule sets disagree on samples {disagree[:10]}: fix the translation")
            return 1
        denied = sum(not atp_decide(a) for a in atp_items)
        print(f"{len(data)} requests, {denied} denied, both engines agree on every one")
        rows.append(("cedarpy, entities prebuilt", _time(lambda c: cedar_decide(c, True),
                                                          cedar_items, args.repeats)))
        rows.append(("cedarpy, entities per request", _time(lambda c: cedar_decide(c, False),
                                                             cedar_items, args.repeats)))
        rows.append(("cedarpy, entities + request built", _time(
            lambda s: cedar_decide(cedar_prepare(s), True), data, args.repeats)))
    for name, us in rows:
        print(f"{name:<38} {us:8.2f} µs per decision (median of {args.repeats})")
    return 0
