"""The admin API on the HTTP port (/admin/v1/...): admin keys and roles checked, JSON in and out; the logic is atp_server/admin.py's."""
import inspect
import logging

import orjson
from aiohttp import web

from codec.errors import ErrorCode

from ..dialects.openai import bad
from ..types import AtpError

log = logging.getLogger("atp.http")

PREFIX = "/admin/v1"
_JSON = "application/json"

# (method, path, permission, handler(admin, who, match, body) -> result, success status, has body)
_ENDPOINTS = (
    ("GET", "/whoami", None, lambda a, w, m, b: {"name": w.name, "role": w.role, "may": sorted(
        action for action, roles in _permissions().items() if w.role == "super-admin" or w.role in roles)},
     200, False),
    ("GET", "/providers", "models.read", lambda a, w, m, b: {"providers": a.providers()}, 200, False),
    ("POST", "/providers/{name}/test", "models.test", lambda a, w, m, b: a.test_provider(m["name"]), 200, False),
    ("GET", "/models", "models.read", lambda a, w, m, b: {"models": a.models()}, 200, False),
    ("POST", "/models", "models.write", lambda a, w, m, b: a.add_model(w, b), 201, True),
    ("PATCH", "/models/{model_id}", "models.write",
     lambda a, w, m, b: a.update_model(w, m["model_id"], b), 200, True),
    ("POST", "/models/{model_id}/enable", "models.write",
     lambda a, w, m, b: a.set_enabled(w, m["model_id"], True), 200, False),
    ("POST", "/models/{model_id}/disable", "models.write",
     lambda a, w, m, b: a.set_enabled(w, m["model_id"], False), 200, False),
    ("POST", "/models/{model_id}/test", "models.test", lambda a, w, m, b: a.test_model(m["model_id"]), 200, False),
    ("GET", "/policies", "policies.read", lambda a, w, m, b: a.policies(), 200, False),
    ("POST", "/policies/validate", "policies.read", lambda a, w, m, b: a.validate_policy(b), 200, True),
    ("POST", "/policies/simulate", "policies.read", lambda a, w, m, b: a.simulate_policy(b), 200, True),
    ("GET", "/tenants", "keys.read", lambda a, w, m, b: {"tenants": a.tenants()}, 200, False),
    ("GET", "/keys", "keys.read", lambda a, w, m, b: {"keys": a.keys()}, 200, False),
    ("POST", "/keys", "keys.write", lambda a, w, m, b: a.create_key(w, b), 201, True),
    ("DELETE", "/keys/{key_ref}", "keys.write", lambda a, w, m, b: a.revoke_key(w, m["key_ref"]), 200, False),
    ("GET", "/budgets", "budgets.read", lambda a, w, m, b: _budgets(a), 200, False),
    ("GET", "/budgets/spend", "budgets.read", lambda a, w, m, b: a.spend(), 200, False),
    ("PUT", "/budgets/{name}", "budgets.write", lambda a, w, m, b: a.set_budget(w, m["name"], b), 200, True),
)
# path -> its methods, for the 405 answer and openapi.py's coverage check
ROUTES: dict[str, str] = {}
for _method, _path, *_ in _ENDPOINTS:
    ROUTES[PREFIX + _path] = ", ".join(filter(None, (ROUTES.get(PREFIX + _path), _method)))


def _permissions():
    from ..admin import PERMISSIONS
    return PERMISSIONS


async def _budgets(admin):
    return {"budgets": await admin.budget_list()}


def add_routes(transport) -> None:
    """Register /admin/v1 on an HttpTransport; a wrong method on an admin path is a 405 here."""
    routes = [web.route(method, PREFIX + path, _handler(transport, *rest))
              for method, path, *rest in _ENDPOINTS]
    routes += [web.route("*", path, _not_allowed(transport, methods)) for path, methods in ROUTES.items()]
    transport.web.add_routes(routes)


def _refuse(transport, exc: AtpError, status: int = 0) -> web.Response:
    from .http import error_response     # http.py imports this module
    status = status or getattr(exc, "status", 0)
    transport.refused("http", exc.code, {404: "not_found", 413: "too_large"}.get(status))
    return error_response(exc, status=status)


def _not_allowed(transport, methods: str):
    async def handler(request: web.Request) -> web.Response:
        transport.refused("http", reason="method_not_allowed")
        from .http import error_response
        return error_response(bad(f"{request.method} is not allowed on {request.path}; use {methods}"),
                              status=405, headers={"Allow": methods})
    return handler


def _handler(transport, action, fn, ok_status: int, has_body: bool):
    async def handler(request: web.Request) -> web.Response:
        admin = getattr(transport.service, "admin", None)
        try:
            if admin is None:
                raise AtpError(ErrorCode.UNAUTHENTICATED, "the admin API is not available here")
            who = admin.authenticate(request.headers.get("Authorization"))
            if action is not None:
                admin.authorize(who, action)
            body = None
            if has_body:
                raw = await request.read()
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise bad(f"malformed JSON: {exc}") from None
            result = fn(admin, who, request.match_info, body)
            if inspect.isawaitable(result):
                result = await result
        except AtpError as exc:
            return _refuse(transport, exc)
        except web.HTTPRequestEntityTooLarge:
            return _refuse(transport, bad("request body too large"), 413)
        except Exception:     # a bug costs one call, with a proper error, never the server
            log.exception("http: admin %s %s failed", request.method, request.path)
            from .http import error_response
            return error_response(AtpError(ErrorCode.INTERNAL, "internal error"))
        return web.Response(status=ok_status, body=orjson.dumps(result), content_type=_JSON)
    return handler


def _param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}


_MODEL_PROPS = {"id": {"type": "string", "minLength": 1}, "provider": {"type": "string"},
                "upstream": {"type": "string", "minLength": 1},
                "price_in_per_mtok": {"type": "number", "minimum": 0},
                "price_out_per_mtok": {"type": "number", "minimum": 0},
                "context_window": {"type": "integer", "minimum": 1},
                "max_output_tokens": {"type": "integer", "minimum": 1},
                "capabilities": {"type": "array", "items": {"type": "string"}},
                "quality": {"type": "number", "minimum": 0, "maximum": 1},
                "latency_ms": {"type": "number", "minimum": 0}}
_BODIES = {
    ("POST", "/models"): {"type": "object", "required": ["id", "provider"], "properties": _MODEL_PROPS},
    ("PATCH", "/models/{model_id}"): {"type": "object", "properties": _MODEL_PROPS},
    ("POST", "/policies/validate"): {"type": "object", "required": ["toml"],
                                     "properties": {"toml": {"type": "string"}}},
    ("POST", "/policies/simulate"): {"type": "object", "description": "an `atp policy test` case",
                                     "properties": {"principal": {"type": "object"}, "request": {"type": "object"},
                                                    "time": {"type": "string"}, "transport": {"type": "string"},
                                                    "pii": {"type": "array", "items": {"type": "string"}}}},
    ("POST", "/keys"): {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 64}, "tenant": {"type": "string", "minLength": 1},
        "user": {"type": "string"}, "groups": {"type": "array", "items": {"type": "string"}},
        "models": {"type": ["array", "null"], "items": {"type": "string"}},
        "expires_days": {"type": "number", "exclusiveMinimum": 0}}},
    ("PUT", "/budgets/{name}"): {"type": "object", "properties": {
        "requests_per_min": {"type": "integer", "minimum": 0}, "tokens_per_min": {"type": "integer", "minimum": 0},
        "concurrent": {"type": "integer", "minimum": 0}, "usd_per_day": {"type": "number", "minimum": 0},
        "usd_per_month": {"type": "number", "minimum": 0}}},
}
_RESULT_KEYS = {"/whoami": ["name", "role", "may"], "/providers": ["providers"], "/models": ["models"],
                "/policies": ["rules", "default"], "/tenants": ["tenants"], "/keys": ["keys"],
                "/budgets": ["budgets"], "/budgets/spend": ["by_tenant", "by_model"]}


def _operation(method: str, path: str, action, status: int, has_body: bool) -> dict:
    keys = _RESULT_KEYS.get(path, []) if method == "GET" else (
        ["id", "key"] if path == "/keys" else ["ok"] if path.endswith("/test") else [])
    op = {"summary": f"{method} {path}" + (f" (permission {action})" if action else ""),
          "tags": ["admin"], "security": [{"adminBearer": []}],
          "responses": {str(status): {"description": "done", "content": {_JSON: {"schema": {
              "type": "object", "required": keys}}}},
              "default": {"$ref": "#/components/responses/Error400"}}}
    names = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
    if names:
        op["parameters"] = [_param(n) for n in names]
    if has_body:
        op["requestBody"] = {"required": True, "content": {_JSON: {"schema": _BODIES[method, path]}}}
    return op


# The OpenAPI 3.1 path items of /admin/v1 (openapi.py merges them into /openapi.json).
OPENAPI_PATHS: dict = {}
for _method, _path, _action, _fn, _status, _body in _ENDPOINTS:
    OPENAPI_PATHS.setdefault(PREFIX + _path, {})[_method.lower()] = _operation(
        _method, _path, _action, _status, _body)
