"""The admin API's logic (no HTTP): admin identities and roles, and the live changes to models, keys, budgets — audited, persisted to the state dir.

Admin credentials are their own: `[[admin.keys]]` in the config (name, role, sha256 or key_env),
never a tenant's API key, so a leaked application key can never change the gateway. Each call is
checked against PERMISSIONS (role -> what it may do); every change is written to the audit log
(actor, role, action, target, before/after). Model and budget changes are kept in
<state_dir>/admin.json and applied again at start, over the config file (which is never
rewritten); API keys live in the key store (<state_dir>/keys.json) as with `atp keys`.
"""
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from codec.errors import ErrorCode

from .types import AtpError, ChatRequest

log = logging.getLogger("atp.admin")

ROLES = ("super-admin", "platform-admin", "security-admin", "cost-admin", "read-only")
_ALL = frozenset(ROLES)
# action -> the roles that may perform it (the README's permission matrix is this table).
PERMISSIONS = {
    "models.read": _ALL,
    "models.write": frozenset({"super-admin", "platform-admin"}),     # add, update, enable, disable
    "models.test": frozenset({"super-admin", "platform-admin"}),      # calls a provider: costs money
    "policies.read": _ALL,                                            # list, validate, simulate
    "keys.read": frozenset({"super-admin", "security-admin", "platform-admin", "read-only"}),
    "keys.write": frozenset({"super-admin", "security-admin"}),       # create, revoke
    "budgets.read": _ALL,
    "budgets.write": frozenset({"super-admin", "cost-admin"}),
}
STATE_FILE = "admin.json"           # in the state dir: model and budget changes made here
MODEL_FIELDS = ("id", "provider", "upstream", "price_in_per_mtok", "price_out_per_mtok",
                "context_window", "capabilities", "quality", "latency_ms", "max_output_tokens")
BUDGET_FIELDS = ("requests_per_min", "tokens_per_min", "concurrent", "usd_per_day", "usd_per_month")
# A connectivity test waits this long for the provider: long enough for a cold local model's first
# token, short enough that an operator is not left staring at a hung request.
TEST_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class AdminKey:
    name: str
    role: str
    sha256: str = dataclasses.field(repr=False, default="")


@dataclass(frozen=True, slots=True)
class AdminConfig:
    keys: tuple[AdminKey, ...] = ()
    persist: bool = True           # keep model/budget changes in <state_dir>/admin.json


def parse_admin(t) -> AdminConfig:
    """[admin] persist = true, [[admin.keys]] name, role, sha256 | key_env; errors name the key."""
    from .config import _check, _env, _fail, _table, _tables, _typed
    _table("admin", t)
    v = _typed("admin", {k: x for k, x in t.items() if k != "keys"}, AdminConfig, skip=("keys",))
    keys, seen = [], {}
    for i, k in enumerate(_tables("admin.keys", t.get("keys", []))):
        key = f"admin.keys[{i}]"
        kv = _typed(key, k, AdminKey, extra={"key_env": str})
        _check(key, kv, {"name": ("nonempty",)})
        if "key_env" in kv:
            if "sha256" in kv:
                _fail(f"{key}.sha256", "give sha256 or key_env, not both")
            kv["sha256"] = hashlib.sha256(_env(f"{key}.key_env", kv.pop("key_env")).encode()).hexdigest()
        for name in ("name", "role", "sha256"):
            if not kv.get(name):
                _fail(f"{key}.{name}", "is required")
        if kv["role"] not in ROLES:
            _fail(f"{key}.role", f"must be one of {', '.join(ROLES)}, got {kv['role']!r}")
        digest = kv["sha256"].lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            _fail(f"{key}.sha256", "must be 64 hex characters (sha256 of the key)")
        for field_name, value in (("name", kv["name"]), ("sha256", digest)):
            if (field_name, value) in seen:
                _fail(f"{key}.{field_name}", f"the same as {seen[field_name, value]}.{field_name}")
            seen[field_name, value] = key
        keys.append(AdminKey(kv["name"], kv["role"], digest))
    return AdminConfig(tuple(keys), **v)


def fault(message: str, param: str | None = None, status: int = 400) -> AtpError:
    """A refusal of an admin call: 400 naming the field (param), 404 unknown target, 409 conflict."""
    exc = AtpError(ErrorCode.FORBIDDEN if status == 403 else ErrorCode.INVALID_REQUEST, message)
    exc.param, exc.status = param, status
    return exc


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    role: str


def _object(body, what: str = "the request body") -> dict:
    if type(body) is not dict:
        raise fault(f"{what} must be a JSON object")
    return body


def spec_json(spec, enabled: bool = True) -> dict:
    d = {f: getattr(spec, f) for f in MODEL_FIELDS}
    d["capabilities"] = sorted(spec.capabilities)
    d["enabled"] = enabled
    return d


class Admin:
    """Everything /admin/v1 may do, on the App's live parts."""

    def __init__(self, app):
        from .config import state_dir
        from .tenants import KeyFile, keys_path
        self.app = app
        cfg = app.config
        self.cfg: AdminConfig = getattr(cfg, "admin", AdminConfig())
        self._keys = {k.sha256: k for k in self.cfg.keys}
        self.specs = {m.id: m for m in cfg.models}      # every model known here, enabled or not
        self.disabled: set[str] = set()
        self.budgets = {r.name: r for r in cfg.limits}
        self.keyfile = KeyFile(keys_path(cfg), app.auth.tenant_names)
        self.path = state_dir(cfg) / STATE_FILE if self.cfg.persist else None
        self._load()
        app.reloader.add("admin", self.prepare_reload)

    # ---- identity and permission ----------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> Identity:
        if not self._keys:
            raise AtpError(ErrorCode.UNAUTHENTICATED, "the admin API needs [[admin.keys]] in the config")
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AtpError(ErrorCode.UNAUTHENTICATED, "missing admin key (Authorization: Bearer <admin key>)")
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        for known, key in self._keys.items():
            if hmac.compare_digest(known, digest):
                return Identity(key.name, key.role)
        raise AtpError(ErrorCode.UNAUTHENTICATED, "invalid admin key")

    @staticmethod
    def authorize(who: Identity, action: str) -> None:
        if who.role != "super-admin" and who.role not in PERMISSIONS[action]:
            raise fault(f"role {who.role} may not {action} (see the admin permission matrix)",
                        status=403)

    def _audit(self, who: Identity, action: str, target: str, before, after) -> None:
        detail = {"role": who.role, "before": before, "after": after}
        audit = self.app.audit
        if audit is not None:
            audit.admin("", f"admin:{who.name}", action, target, detail)
        log.info("admin %s (%s): %s %s", who.name, who.role, action, target)

    # ---- models and providers -------------------------------------------------------------------

    def providers(self) -> list[dict]:
        return [{"name": p.name, "type": p.type,
                 "models": [m for m, s in self.specs.items() if s.provider == p.name]}
                for p in self.app.config.providers]

    def models(self) -> list[dict]:
        return [spec_json(s, i not in self.disabled) for i, s in self.specs.items()]

    def _spec(self, model_id: str):
        spec = self.specs.get(model_id)
        if spec is None:
            raise fault(f"no model {model_id!r}", status=404)
        return spec

    def _validated(self, fields_: dict):
        from .config import ConfigError, _parse_model
        try:
            return _parse_model(0, fields_, set(self.app.adapters))
        except ConfigError as exc:   # "models[0].quality: must be ..." -> param "quality"
            text = str(exc)
            where, _, problem = text.partition(": ")
            param = where.removeprefix("models[0]").lstrip(".") or None
            raise fault(f"{param or 'body'}: {problem or text}", param) from None

    def add_model(self, who: Identity, body) -> dict:
        spec = self._validated(_object(body))
        if spec.id in self.specs:
            raise fault(f"model {spec.id!r} exists; PATCH /admin/v1/models/{spec.id} changes it",
                        "id", 409)
        self._change(who, "model.add", spec.id, lambda: self.specs.__setitem__(spec.id, spec))
        return spec_json(spec)

    def update_model(self, who: Identity, model_id: str, body) -> dict:
        old = self._spec(model_id)
        body = _object(body)
        if body.get("id", model_id) != model_id:
            raise fault("id cannot change; add a new model and disable this one", "id")
        merged = {**{k: v for k, v in spec_json(old).items() if k != "enabled"}, **body}
        merged["capabilities"] = list(merged["capabilities"]) if type(merged["capabilities"]) in (
            list, tuple) else merged["capabilities"]
        new = self._validated(merged)
        self._change(who, "model.update", model_id, lambda: self.specs.__setitem__(model_id, new))
        return spec_json(new, model_id not in self.disabled)

    def set_enabled(self, who: Identity, model_id: str, enabled: bool) -> dict:
        spec = self._spec(model_id)
        change = (lambda: self.disabled.discard(model_id)) if enabled else (lambda: self.disabled.add(model_id))
        self._change(who, "model.enable" if enabled else "model.disable", model_id, change)
        return spec_json(spec, enabled)

    def _change(self, who: Identity, action: str, target: str, mutate) -> None:
        """Mutate the model set, swap the router's table (all or nothing), audit, persist."""
        before = self._model_state(target)
        saved = (dict(self.specs), set(self.disabled))
        mutate()
        try:
            self._apply_models()
        except ValueError as exc:    # the last model disabled, an alias left without its model...
            self.specs, self.disabled = saved
            raise fault(str(exc)) from None
        self._audit(who, action, target, before, self._model_state(target))
        self._save()
        self._tell_workers()

    def _model_state(self, model_id: str):
        spec = self.specs.get(model_id)
        return None if spec is None else spec_json(spec, model_id not in self.disabled)

    def _apply_models(self) -> None:
        app = self.app
        live = [s for i, s in self.specs.items() if i not in self.disabled]
        if not live:
            raise ValueError("at least one model must stay enabled")
        app.router.set_models(live)      # raises ValueError (alias names a missing model) unchanged;
        app.metrics.add_models(self.specs)   # limits, policy and cache follow (App._models_changed)

    async def test_model(self, model_id: str) -> dict:
        """One tiny completion straight through the model's adapter (no routing, no breaker)."""
        import asyncio
        spec = self._spec(model_id)
        adapter = self.app.adapters[spec.provider]
        t0 = time.perf_counter()
        try:
            request = ChatRequest([("user", "ping")], model=model_id, max_tokens=1)
            await asyncio.wait_for(adapter.complete(spec, request), TEST_TIMEOUT_S)
        except (Exception, asyncio.TimeoutError) as exc:   # the answer is the failure, reported
            return {"model": model_id, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:500],
                    "latency_ms": round((time.perf_counter() - t0) * 1000, 3)}
        return {"model": model_id, "ok": True, "latency_ms": round((time.perf_counter() - t0) * 1000, 3)}

    async def test_provider(self, name: str) -> dict:
        adapter = self.app.adapters.get(name)
        if adapter is None:
            raise fault(f"no provider {name!r}", status=404)
        t0 = time.perf_counter()
        try:
            probe = getattr(adapter, "health", None)
            answer = None if probe is None else await probe()
            if answer is None:    # no probe of its own (the simulated provider): a tiny completion
                model = next((i for i, s in self.specs.items() if s.provider == name), None)
                if model is not None:
                    return {"provider": name, **await self.test_model(model)}
            ok = bool(answer)
            error = None if ok else "the provider's health check failed"
        except Exception as exc:     # a dead provider is the answer, not a server error
            ok, error = False, f"{type(exc).__name__}: {exc}"[:500]
        return {"provider": name, "ok": ok, "error": error,
                "latency_ms": round((time.perf_counter() - t0) * 1000, 3)}

    # ---- policies ----------------------------------------------------------------------------------

    def policies(self) -> dict:
        p = self.app.policy
        return {"files": list(p.files), "dry_run": p.dry_run, "default": p.policy.default,
                "rules": [{"id": r.id, "priority": r.priority, "effect": r.effect, "reason": r.reason,
                           "when": r.when, "source": r.source} for r in p.policy.rules]}

    def validate_policy(self, body) -> dict:
        import tomllib
        from .policy.rules import PolicyError, parse_policy
        text = _object(body).get("toml")
        if type(text) is not str:
            raise fault("toml must be a string holding a policy file", "toml")
        try:
            rules, _, _ = parse_policy(tomllib.loads(text), "toml", frozenset(self.specs))
        except tomllib.TOMLDecodeError as exc:
            raise fault(f"toml: not TOML: {exc}", "toml") from None
        except PolicyError as exc:
            raise fault(str(exc), "toml") from None
        return {"valid": True, "rules": [r.id for r in rules]}

    def simulate_policy(self, body) -> dict:
        """`atp policy test` on the rules in force. explain() sets the holder's clock to the
        case's time, so it runs on a copy: the live holder's clock is never touched."""
        from .policy import PolicyHolder
        from .policy.explain import explain
        live = self.app.policy
        copy = PolicyHolder(live.policy, (), live.models, dry_run=live.dry_run)
        copy.redaction_available = live.redaction_available
        try:
            return explain(copy, _object(body), self.app.config.tenants)
        except ValueError as exc:      # explain names the field at fault: "principal.tenant: ..."
            raise fault(str(exc), str(exc).partition(":")[0] or None) from None
        except (TypeError, AttributeError, KeyError) as exc:    # a value of the wrong shape
            raise fault(f"the case does not have the shape `atp policy test` reads: {exc}") from None

    # ---- tenants and keys ---------------------------------------------------------------------------

    def tenants(self) -> list[dict]:
        names = sorted({t.name for t in self.app.config.tenants} | {"default"})
        return [{"name": n, "keys": [k["id"] for k in self.keys() if k["tenant"] == n]} for n in names]

    def keys(self) -> list[dict]:
        now = time.time()
        return [{"id": k.id, "name": k.name, "tenant": k.tenant, "user": k.user, "groups": list(k.groups),
                 "models": None if k.models is None else list(k.models), "created": k.created,
                 "expires": k.expires, "state": k.state(now)} for k in self.keyfile.list()]

    def create_key(self, who: Identity, body) -> dict:
        from .tenants import KeyStoreError
        b = _object(body)
        for name, types in (("name", str), ("tenant", str), ("user", str)):
            if name in b and type(b[name]) is not types:
                raise fault(f"{name} must be a string", name)
        for name in ("groups", "models"):
            # non-empty: the key store refuses to load an empty group or model name
            if b.get(name) is not None and (type(b[name]) is not list or
                                            not all(type(x) is str and x for x in b[name])):
                raise fault(f"{name} must be a list of non-empty strings", name)
        if "tenant" in b and not b["tenant"]:
            raise fault("tenant must not be empty (omit it for the default tenant)", "tenant")
        unknown = [m for m in b.get("models") or () if m not in self.specs]
        if unknown:
            raise fault(f"models: no model {unknown[0]!r}", "models")
        days = b.get("expires_days")
        if days is not None and (type(days) not in (int, float) or days <= 0):
            raise fault("expires_days must be a positive number", "expires_days")
        extra = set(b) - {"name", "tenant", "user", "groups", "models", "expires_days"}
        if extra:
            raise fault(f"unknown field {sorted(extra)[0]!r}", sorted(extra)[0])
        try:
            token, rec = self.keyfile.create(b.get("name", ""), b.get("tenant", "default"),
                                             user=b.get("user", ""), groups=b.get("groups") or (),
                                             models=b.get("models"),
                                             expires=None if days is None else time.time() + days * 86400)
        except KeyStoreError as exc:       # "name: must be ..." / "tenant: ..."
            raise fault(str(exc), str(exc).partition(":")[0]) from None
        self.app.auth.prepare_reload()()
        self._audit(who, "key.create", rec.id, None, {"name": rec.name, "tenant": rec.tenant,
                                                      "models": b.get("models")})
        self._tell_workers()
        return {"id": rec.id, "name": rec.name, "tenant": rec.tenant, "key": token}

    def revoke_key(self, who: Identity, ref: str) -> dict:
        from .tenants import KeyStoreError
        try:
            rec = self.keyfile.revoke(ref)
        except KeyStoreError as exc:
            raise fault(str(exc), status=404) from None
        self.app.auth.prepare_reload()()
        self._audit(who, "key.revoke", rec.id, {"state": "active"}, {"state": "revoked"})
        self._tell_workers()
        return {"id": rec.id, "name": rec.name, "state": "revoked"}

    # ---- budgets -----------------------------------------------------------------------------------

    async def budget_list(self) -> list[dict]:
        stage, out = self.app.limit_stage, []
        for r in self.budgets.values():
            row = {"name": r.name, "scope": r.scope, "match": r.match,
                   **{f: getattr(r, f) for f in BUDGET_FIELDS}, "spend": []}
            if stage is not None:
                day_id, _, month_id, _ = stage._periods(stage.wall_clock())
                for subject in self._subjects(r):
                    for period, pid, limit in (("day", day_id, r.usd_per_day), ("month", month_id, r.usd_per_month)):
                        if limit:
                            spent, held = await stage.budgets.usage(f"usd:{r.name}:{subject}:{pid}")
                            row["spend"].append({"subject": subject, "period": period,
                                                 "spent_usd": spent / 1e6, "reserved_usd": held / 1e6,
                                                 "limit_usd": limit})
            out.append(row)
        return out

    def _subjects(self, rule) -> list[str]:
        if rule.match:
            return [rule.match]
        if rule.scope == "model":
            return list(self.specs)
        if rule.scope == "tenant":
            return sorted({t.name for t in self.app.config.tenants} | {"default"})
        return sorted({k.name for k in self.keyfile.list()} | {k.name for k in self.app.config.auth.api_keys})

    def spend(self) -> dict:
        acc = self.app.accountant
        return {"by_tenant": {t: v.cost_usd_micros / 1e6 for t, v in list(acc.by_tenant.items())},
                "by_model": {m: v.cost_usd_micros / 1e6 for m, v in list(acc.by_model.items())}}

    def set_budget(self, who: Identity, name: str, body) -> dict:
        old = self.budgets.get(name)
        if old is None:
            raise fault(f"no [[limits]] entry named {name!r}", status=404)
        stage = self.app.limit_stage
        if stage is None:    # cannot happen while budgets exist; kept for a clear message
            raise fault("the limits stage is not in the chain (no [[limits]] at start)", status=409)
        b = _object(body)
        for k, v in b.items():
            if k not in BUDGET_FIELDS:
                raise fault(f"unknown field {k!r} (known: {', '.join(BUDGET_FIELDS)})", k)
            want = (int,) if k in ("requests_per_min", "tokens_per_min", "concurrent") else (int, float)
            if type(v) not in want or v < 0 or v != v:
                raise fault(f"{k} must be a number >= 0" + (" (an integer)" if want == (int,) else ""), k)
        new = dataclasses.replace(old, **{k: (float(v) if k.startswith("usd") else v) for k, v in b.items()})
        if not any(getattr(new, f) for f in BUDGET_FIELDS):
            raise fault("a budget must keep at least one limit above 0", next(iter(b), None))
        self.budgets[name] = new
        self._apply_budgets()
        self._audit(who, "budget.set", name, {f: getattr(old, f) for f in BUDGET_FIELDS},
                    {f: getattr(new, f) for f in BUDGET_FIELDS})
        self._save()
        self._tell_workers()
        return {"name": name, **{f: getattr(new, f) for f in BUDGET_FIELDS}}

    def _apply_budgets(self) -> None:
        stage = self.app.limit_stage
        if stage is not None:
            stage.set_rules(self.budgets.values())

    # ---- persistence -------------------------------------------------------------------------------

    def _save(self) -> None:
        if self.path is None:
            return
        # Only what differs from the config file: a model later removed from the file stays removed.
        configured = {m.id: m for m in self.app.config.models}
        doc = {"format": 1, "models": {i: spec_json(s, i not in self.disabled) for i, s in self.specs.items()
                                       if configured.get(i) != s or i in self.disabled},
               "budgets": {n: {f: getattr(r, f) for f in BUDGET_FIELDS} for n, r in self.budgets.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.path)      # a crash leaves the old file or the new, never half

    def _read_state(self) -> tuple[dict, set, dict]:
        """(specs, disabled ids, budget changes by name): the config's models with
        <state_dir>/admin.json over them (`_over_config` lays the budget changes over the limits).
        A bad entry is logged and skipped (the config's own models still serve); an unreadable
        file raises OSError/ValueError."""
        cfg = self.app.config
        specs, disabled = {m.id: m for m in cfg.models}, set()
        if self.path is None or not Path(self.path).exists():
            return specs, disabled, {}
        doc = json.loads(Path(self.path).read_text())
        if type(doc) is not dict:
            raise ValueError("must be a JSON object")
        for i, m in dict(doc.get("models", {})).items():
            try:
                specs[i] = self._validated({k: v for k, v in dict(m).items() if k != "enabled"})
            except AtpError as exc:
                log.error("admin: %s: models.%s skipped: %s", self.path, i, exc.message)
                continue
            if m.get("enabled") is False:
                disabled.add(i)
        return specs, disabled, dict(doc.get("budgets", {}))

    def _over_config(self, overrides: dict) -> dict:
        """The config's [[limits]] in force now, with admin.json's budget changes over them."""
        budgets = {r.name: r for r in self.app.config.limits}
        for n, b in overrides.items():
            if n in budgets:
                budgets[n] = dataclasses.replace(budgets[n], **{f: b[f] for f in BUDGET_FIELDS if f in b})
        return budgets

    def _load(self) -> None:
        """At start: the state file over the config, or the config alone if the file is bad —
        never a server that cannot start."""
        if self.path is None or not Path(self.path).exists():
            return                     # the config as loaded: no table to rebuild
        try:
            specs, disabled, changes = self._read_state()
            self._put(specs, disabled, self._over_config(changes))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("admin: %s ignored: %s", self.path, exc)
            self._put({m.id: m for m in self.app.config.models}, set(),
                      {r.name: r for r in self.app.config.limits})

    def _put(self, specs: dict, disabled: set, budgets: dict) -> None:
        self.specs, self.disabled, self.budgets = specs, disabled, budgets
        self._apply_models()
        self._apply_budgets()

    def prepare_reload(self):
        """The Reloader's part (SIGHUP, `atp reload`): re-read admin.json — how the other workers
        of `--workers N` pick up a change one of them made. Raises, changing nothing, when the
        file is unreadable or would leave no model."""
        if self.path is None:          # persist = false: nothing on disk to follow
            return lambda: None
        state = self._read_state()
        live = [m for i, m in state[0].items() if i not in state[1]]
        if not live:
            raise ValueError(f"{self.path}: every model is disabled")
        from .routing.table import rebuild
        rebuild(self.app.router.table, live)      # an alias left without its model raises here
        # budgets laid over the config's limits as they are at commit: a reload of the config
        # file's [[limits]] (app.py, an earlier part) has put its rules in force by then
        return lambda: self._put(state[0], state[1], self._over_config(state[2]))

    def _tell_workers(self) -> None:
        """With --workers N, SIGHUP the parent: it forwards it to every worker, which reloads the
        key store and admin.json (this one too: applying the same state again changes nothing)."""
        owner = getattr(self.app, "pid_owner", None)
        if owner is not None:
            os.kill(owner, signal.SIGHUP)
