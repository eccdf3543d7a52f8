"""The OpenAPI 3.1 document of ATP's HTTP port (/openapi.json): the core routes here, merged with every route module's OPENAPI_PATHS."""
import copy

_JSON = "application/json"
VERSION = "0.1.0"


def _err(ref: str = "Error") -> dict:
    return {"description": "an error", "content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


_MESSAGE = {"type": "object", "required": ["role", "content"], "properties": {
    "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
    "content": {"type": "string"}}}
_ATP_EXT = {"type": "object", "description": "ATP's routing extension", "properties": {
    "tier": {"enum": ["fast", "balanced", "high"]}, "max_cost_usd": {"type": "number", "minimum": 0},
    "latency_slo_ms": {"type": "integer", "minimum": 1}}}
COMPONENTS = {
    "securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer", "description": "a tenant API key"},
        "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key",
                         "description": "the Anthropic SDK's header, same keys as bearer"},
        "adminBearer": {"type": "http", "scheme": "bearer",
                        "description": "an [[admin.keys]] key (its role decides what it may call)"}},
    "schemas": {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["message", "type", "code"], "properties": {
                "message": {"type": "string"}, "type": {"type": "string"},
                "param": {"type": ["string", "null"]}, "code": {"type": "string"},
                "atp_code": {"type": "integer"}, "retryable": {"type": "boolean"},
                "retry_after_ms": {"type": "integer"}}}}},
        "AnthropicError": {"type": "object", "required": ["type", "error"], "properties": {
            "type": {"const": "error"}, "error": {"type": "object", "required": ["type", "message"],
                                                  "properties": {"type": {"type": "string"},
                                                                 "message": {"type": "string"}}}}},
        "ChatRequest": {"type": "object", "required": ["messages"], "properties": {
            "model": {"type": "string", "description": "a model id, an alias, or auto/fast/balanced/high"},
            "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": 256},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "stream": {"type": "boolean"}, "user": {"type": "string"}, "atp": _ATP_EXT}},
        "Model": {"type": "object", "required": ["id", "object"], "properties": {
            "id": {"type": "string"}, "object": {"const": "model"}, "owned_by": {"type": "string"},
            "created": {"type": "integer"}, "atp": {"type": "object"}}}},
    "responses": {f"Error{s}": _err() for s in
                  ("400", "401", "402", "403", "404", "405", "409", "413", "422", "429", "500",
                   "502", "503", "504")},
}
_DEFAULT = {"default": _err()}
_API_KEY = [{"bearer": []}]
_CHAT_BODY = {"required": True, "content": {_JSON: {"schema": {"$ref": "#/components/schemas/ChatRequest"}}}}
# One server-sent event (schemathesis validates each event of a stream against this).
_SSE = {"text/event-stream": {"schema": {"type": "object", "properties": {
    "data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}}}}}

CORE_PATHS = {
    "/v1/chat/completions": {"post": {
        "summary": "OpenAI chat completions (JSON, or SSE with stream: true)", "tags": ["openai"],
        "security": _API_KEY, "requestBody": _CHAT_BODY,
        "responses": {"200": {"description": "a chat.completion, or its chunks as SSE", "content": {
            _JSON: {"schema": {"type": "object", "required": ["id", "object", "model", "choices"],
                               "properties": {"object": {"const": "chat.completion"},
                                              "choices": {"type": "array"}, "usage": {"type": "object"}}}},
            **_SSE}}, **_DEFAULT}}},
    "/v1/completions": {"post": {
        "summary": "OpenAI legacy completions", "tags": ["openai"], "security": _API_KEY,
        "requestBody": {"required": True, "content": {_JSON: {"schema": {
            "type": "object", "required": ["prompt"], "properties": {
                "model": {"type": "string"}, "prompt": {"type": "string", "minLength": 1},
                "max_tokens": {"type": "integer", "minimum": 1, "maximum": 256},
                "stream": {"type": "boolean"}}}}}},
        "responses": {"200": {"description": "a text_completion", "content": {
            _JSON: {"schema": {"type": "object", "required": ["object", "choices"], "properties": {
                "object": {"const": "text_completion"}}}}, **_SSE}}, **_DEFAULT}}},
    "/v1/embeddings": {"post": {
        "summary": "OpenAI embeddings", "tags": ["openai"], "security": _API_KEY,
        "requestBody": {"required": True, "content": {_JSON: {"schema": {
            "type": "object", "required": ["input"], "properties": {
                "model": {"type": "string"}, "input": {"type": ["string", "array"]},
                "encoding_format": {"enum": ["float", "base64"]}}}}}},
        "responses": {"200": {"description": "a list of embeddings", "content": {_JSON: {"schema": {
            "type": "object", "required": ["object", "data"], "properties": {
                "object": {"const": "list"}, "data": {"type": "array"}}}}}}, **_DEFAULT}}},
    "/v1/models": {"get": {
        "summary": "The models the caller may use", "tags": ["openai"], "security": _API_KEY,
        "responses": {"200": {"description": "the models", "content": {_JSON: {"schema": {
            "type": "object", "required": ["object", "data"], "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}}}}}},
            **_DEFAULT}}},
    "/v1/models/{model_id}": {"get": {
        "summary": "One model", "tags": ["openai"], "security": _API_KEY,
        "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "the model", "content": {_JSON: {"schema": {
            "$ref": "#/components/schemas/Model"}}}}, **_DEFAULT}}},
    "/v1/messages": {"post": {
        "summary": "Anthropic messages (JSON, or SSE with stream: true)", "tags": ["anthropic"],
        "security": [{"apiKeyHeader": []}, {"bearer": []}],
        "requestBody": {"required": True, "content": {_JSON: {"schema": {
            "type": "object", "required": ["model", "max_tokens", "messages"], "properties": {
                "model": {"type": "string"}, "max_tokens": {"type": "integer", "minimum": 1, "maximum": 256},
                "messages": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["role", "content"], "properties": {
                        "role": {"enum": ["user", "assistant"]}, "content": {"type": "string"}}}},
                "system": {"type": "string"}, "stream": {"type": "boolean"}}}}}},
        "responses": {"200": {"description": "a message, or its events as SSE", "content": {
            _JSON: {"schema": {"type": "object", "required": ["type", "content"], "properties": {
                "type": {"const": "message"}, "content": {"type": "array"}}}}, **_SSE}},
            "default": _err("AnthropicError")}}},
    "/healthz": {"get": {
        "summary": "Liveness (no credentials)", "tags": ["ops"], "security": [],
        "responses": {s: {"description": d, "content": {_JSON: {"schema": {
            "type": "object", "required": ["status"], "properties": {"status": {"enum": ["ok", "draining"]}}}}}}
            for s, d in (("200", "serving"), ("503", "draining"))}}},
    "/metrics": {"get": {
        "summary": "Prometheus metrics (Bearer [metrics] scrape_token when one is set)", "tags": ["ops"],
        "security": [],
        "responses": {"200": {"description": "Prometheus text format", "content": {
            "text/plain": {"schema": {"type": "string"}}}}, "401": {"$ref": "#/components/responses/Error401"}}}},
    "/openapi.json": {"get": {
        "summary": "This document", "tags": ["ops"], "security": [],
        "responses": {"200": {"description": "OpenAPI 3.1", "content": {_JSON: {"schema": {"type": "object"}}}}}}},
}


def path_sources(dashboard: bool = False) -> list[dict]:
    """Every served module's OPENAPI_PATHS, merged in this order (a later module adds to a path's
    methods); the dashboard's only when [dashboard] is enabled, as only then are its routes served."""
    from .transport import http_admin, http_api, http_dashboard
    return [CORE_PATHS, http_api.OPENAPI_PATHS, http_admin.OPENAPI_PATHS,
            *([http_dashboard.OPENAPI_PATHS] if dashboard else []),
            # a new route module: one line, `module.OPENAPI_PATHS,`
            ]


def merge_paths(sources) -> dict:
    """One paths object from several; the same method on the same path twice is a bug, refused."""
    paths: dict = {}
    for source in sources:
        for path, item in source.items():
            into = paths.setdefault(path, {})
            for method, op in item.items():
                if method in into:
                    raise ValueError(f"OpenAPI: {method.upper()} {path} is described twice")
                into[method] = op
    return paths


def document(sources=None, *, dashboard: bool = False) -> dict:
    """The whole OpenAPI 3.1 document (a fresh copy: callers may change it)."""
    return copy.deepcopy({
        "openapi": "3.1.0",
        "info": {"title": "ATP — AI request control plane", "version": VERSION,
                 "description": "OpenAI- and Anthropic-compatible inference, the REST API "
                                "(/api/v1) and the admin API (/admin/v1) on ATP's HTTP port."},
        "paths": merge_paths(path_sources(dashboard) if sources is None else sources),
        "components": COMPONENTS,
        "security": _API_KEY})
