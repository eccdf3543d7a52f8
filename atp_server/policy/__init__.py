"""Attribute-based policy, decided before routing: who (subject) may send what (context) where (resource).

Rules (policy/rules.py) are walked by priority, highest first: restrict_models, require_redaction,
cache and no_cache rules met on the way apply, and the first allow or deny ends the walk; when none
matches, the file's `default` decides. A request without a pinned model is decided per candidate
model, so a rule over model, provider or region takes only the models it names out of routing.
The API key's own model scope applies on top. Dry-run decides, logs and audits the same way and
enforces nothing. The rule set is swapped whole on reload (`prepare_reload`).
"""
import logging
import time
from dataclasses import dataclass

from codec.errors import ErrorCode

from ..events import publish
from ..types import AtpError
from .rules import CACHE_EFFECTS, PolicyError, PolicySet, load_policy_files, make_policy_set

__all__ = ["Decision", "Facts", "PolicyError", "PolicyHolder", "PolicySet"]

log = logging.getLogger("atp.policy")

DEFAULTS = {"default": "allow",
            "max_prompt_chars": 400_000,   # ~100k tokens at ~4 chars/token: the largest context served
            "max_tokens": 32_768}          # the largest output window among common providers
KEY_SCOPE = "key-scope"                    # the deciding "rule" when the API key's scope refuses
NO_REDACTION = "redaction-unavailable"     # require_redaction with no redaction stage: fail closed


class Facts:
    """What the rules read about one request, gathered once."""

    __slots__ = ("tenant", "user", "groups", "key", "attributes", "classification", "tools",
                 "capabilities", "transport", "pii", "hour", "weekday", "prompt_chars",
                 "max_tokens", "model_attributes")

    def __init__(self, principal, request, transport: str, pii, wall_s: float, model_attributes,
                 prompt_chars: int | None = None):
        self.tenant, self.user, self.groups = principal.tenant, principal.user, principal.groups
        self.key = principal.key_id or principal.name
        self.attributes = principal.attributes
        meta = request.metadata
        self.classification = meta.get("data_classification") or principal.attributes.get(
            "data_classification", "")
        tools = meta.get("tools")
        self.tools = frozenset(tools.split(",")) if tools else frozenset()
        self.capabilities = frozenset(request.capabilities)
        self.transport = transport
        self.pii = pii if type(pii) is frozenset else frozenset(pii or ())
        if wall_s is None:            # no rule reads the clock
            self.hour = self.weekday = -1
        else:
            t = time.gmtime(wall_s)
            self.hour, self.weekday = t.tm_hour, t.tm_wday
        self.prompt_chars = request.prompt_chars() if prompt_chars is None else prompt_chars
        self.max_tokens = request.max_tokens
        self.model_attributes = model_attributes


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str                        # the deciding rule's id, "default" or KEY_SCOPE
    reason: str
    models: frozenset | None         # the models the request may go to; None = any
    redact: bool                     # a require_redaction rule applies
    matched: tuple[str, ...]         # every rule that applied, in walk order
    dry_run: bool = False
    cache: str | None = None         # "on" (a cache rule applies), "off" (no_cache: wins), None


class PolicyHolder:
    """The rule set in force, the stage-facing decide(), and reload. One per App."""

    def __init__(self, policy: PolicySet, files=(), models=None, *, dry_run: bool = False,
                 wall=time.time):
        self.policy = policy
        self.files = tuple(files)
        self.models = dict(models or {})      # id -> ModelSpec: candidates of unpinned requests
        self.dry_run = dry_run
        self.wall = wall
        self.redaction_available = False      # set by a redaction stage that honours Decision.redact
        # (rule id, "allow" | "deny" | "dry_run_deny") -> count; rule ids come from the policy
        # files, so the series are bounded by configuration (metrics.track_policy exports them)
        self.counts: dict[tuple[str, str], int] = {}
        self._plain_cache: tuple | None = None

    @classmethod
    def from_config(cls, config) -> "PolicyHolder":
        models = {m.id: m for m in config.models}
        try:
            policy = load_policy_files(config.policy.files, frozenset(models), DEFAULTS)
        except PolicyError as exc:
            from ..config import ConfigError
            raise ConfigError(f"policy.files: {exc}") from None
        return cls(policy, config.policy.files, models, dry_run=config.policy.dry_run)

    @classmethod
    def of_rules(cls, toml_text: str, models, **kw) -> "PolicyHolder":
        """A holder from policy text (tests, `atp policy test`)."""
        import tomllib
        from .rules import parse_policy
        specs = {m.id: m for m in models}
        rules, settings, attrs = parse_policy(tomllib.loads(toml_text), "<policy>", frozenset(specs))
        return cls(make_policy_set(rules, {**DEFAULTS, **settings}, attrs), (), specs, **kw)

    def prepare_reload(self):
        policy = load_policy_files(self.files, frozenset(self.models), DEFAULTS)

        def commit() -> None:
            self.policy = policy
        return commit

    # ---- deciding -----------------------------------------------------------------------------

    def _walk(self, live, facts: Facts, spec, redact_rules: list):
        """(allowed, rule id, reason) for one candidate model (None: the request names none)."""
        for r in live:
            if r.check_model is not None and (spec is None or not r.check_model(facts, spec)):
                continue
            effect = r.effect
            if effect == "deny":
                return False, r, r.reason or f"denied by rule {r.id}"
            if effect == "allow":
                return True, r, r.reason or f"allowed by rule {r.id}"
            if effect == "restrict_models":
                if spec is not None and spec.id not in r.models:
                    return False, r, r.reason or f"rule {r.id} restricts to {', '.join(sorted(r.models))}"
                redact_rules.append(r)          # applied on the way (explanation)
            else:
                redact_rules.append(r)
        d = self.policy.default
        return d == "allow", None, f"no rule decided: default {d}"

    def decide_facts(self, facts: Facts, pinned: str | None, scope: frozenset | None) -> Decision:
        p = self.policy
        live = [r for r in p.candidates(facts.tenant) if r.check(facts)]
        if pinned is not None:
            spec = self.models.get(pinned)
            if scope is not None and pinned not in scope:
                return Decision(False, KEY_SCOPE, f"the API key is scoped to "
                                f"{', '.join(sorted(scope))}", scope, False, (), self.dry_run)
            candidates = [spec] if spec is not None else [None]   # unknown: routing says so
        else:
            candidates = [m for m in self.models.values() if scope is None or m.id in scope]
            if not candidates:
                return Decision(False, KEY_SCOPE, "the API key's scope names no served model",
                                frozenset(), False, (), self.dry_run)
            if not live or all(r.check_model is None and r.effect != "restrict_models" for r in live):
                candidates = candidates[:1] or [None]        # the same answer for every model
                per_model = False
            else:
                per_model = True
        allowed, first, redact, matched, cache = set(), None, False, [], None
        for spec in candidates:
            on_way: list = []
            ok, rule, reason = self._walk(live, facts, spec, on_way)
            if first is None or (ok and not first[0]):
                first = (ok, rule, reason)
            for r in on_way + ([rule] if rule is not None else []):
                if r.id not in matched:
                    matched.append(r.id)
            if ok:
                allowed.add(spec.id if spec is not None else None)
                redact = redact or any(r.effect == "require_redaction" for r in on_way)
                for r in on_way:
                    says = CACHE_EFFECTS.get(r.effect)
                    if says is not None and cache != "off":     # no_cache wins over cache
                        cache = says
        ok, rule, reason = first
        if pinned is None and per_model:
            models = frozenset(allowed) if ok else frozenset()
            if ok and len(models) == len(self.models):
                models = None if scope is None else scope
        else:
            models = scope
        if ok and redact and not self.redaction_available:
            return Decision(False, NO_REDACTION, "a rule requires redaction and no redaction stage "
                            "is configured", models, True, tuple(matched), self.dry_run)
        return Decision(ok, rule.id if rule is not None else "default", reason, models, redact,
                        tuple(matched), self.dry_run, cache)

    def decide(self, principal, request, transport: str, pii=()) -> Decision:
        """The decision for one request; the size caps raise before any rule is read."""
        p = self.policy
        chars = request.prompt_chars()
        if chars > p.max_prompt_chars:
            raise AtpError(ErrorCode.INVALID_REQUEST,
                           f"prompt of {chars} chars exceeds {p.max_prompt_chars}")
        if request.max_tokens is not None and request.max_tokens > p.max_tokens:
            raise AtpError(ErrorCode.POLICY_DENIED, f"max_tokens {request.max_tokens} exceeds "
                           f"policy limit {p.max_tokens}")
        if principal.models is None and not p.candidates(principal.tenant):
            return self._plain(p)      # no rule can match this tenant: skip gathering facts
        facts = Facts(principal, request, transport, pii, self.wall() if p.needs_clock else None,
                      p.model_attributes, chars)
        return self.decide_facts(facts, request.model, principal.models)

    def _plain(self, p: PolicySet) -> Decision:
        """The default's decision for a rule set, built once per rule set (reload replaces it)."""
        cached = self._plain_cache
        if cached is None or cached[0] is not p:
            ok = p.default == "allow"
            cached = self._plain_cache = (p, Decision(ok, "default", f"no rule decided: default "
                                                      f"{p.default}", None, False, (), self.dry_run))
        return cached[1]

    def enforce(self, decision: Decision, request_id: str) -> None:
        """Refuse a denial (POLICY_DENIED); in dry-run only log what would have happened."""
        verdict = "allow" if decision.allowed else "dry_run_deny" if self.dry_run else "deny"
        key = (decision.rule, verdict)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        if decision.allowed:
            return
        if self.dry_run:
            log.warning("policy dry-run: would deny %s by %s (%s)", request_id or "-",
                        decision.rule, decision.reason)
            return
        publish("policy.denied", rule=decision.rule, reason=decision.reason, request_id=request_id)
        raise AtpError(ErrorCode.POLICY_DENIED, f"{decision.reason} (policy rule {decision.rule})")

    def visible_models(self, principal, specs) -> list:
        """The models `principal` could be routed to: a listing must not show what policy hides."""
        from ..types import ChatRequest
        probe = ChatRequest([("user", "")])
        facts = Facts(principal, probe, "list", (), self.wall(), self.policy.model_attributes)
        out = []
        for spec in specs:
            if principal.models is not None and spec.id not in principal.models:
                continue
            d = self.decide_facts(facts, spec.id, principal.models)
            if d.allowed or d.rule == NO_REDACTION:
                out.append(spec)
        return out
