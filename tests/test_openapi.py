"""/openapi.json: an OpenAPI 3.1 document describing every route the HTTP port serves."""
import pytest

from atp_server.app import App
from atp_server.openapi import CORE_PATHS, document, merge_paths, path_sources
from atp_server.transport.http import HttpTransport

from .server.helpers import make_config


def served_operations(tmp_path, extra: str = "") -> set[tuple[str, str]]:
    """(path template, method) of every route aiohttp would serve, but the catch-alls."""
    web_app = HttpTransport(App(make_config(tmp_path, extra=extra)).service).web
    ops = set()
    for route in web_app.router.routes():
        path = route.resource.canonical
        if route.method in ("*", "HEAD") or path == "/{tail}":
            continue
        ops.add((path, route.method.lower()))
    return ops


def test_every_http_route_is_in_the_document(tmp_path):
    doc = document()
    described = {(p, m) for p, item in doc["paths"].items() for m in item}
    served = served_operations(tmp_path)
    assert served - described == set()
    assert described - served == set()          # nothing described that is not served
    assert {("/v1/messages", "post"), ("/api/v1/ai/select-model", "post"),
            ("/admin/v1/models/{model_id}", "patch"), ("/metrics", "get")} <= served


def test_with_the_dashboard_on_its_routes_are_in_the_document_too(tmp_path):
    doc = document(dashboard=True)
    described = {(p, m) for p, item in doc["paths"].items() for m in item}
    served = served_operations(tmp_path, "[dashboard]\nenabled = true\n")
    assert served == described and ("/dashboard", "get") in served


def test_the_document_is_openapi_3_1_and_every_ref_resolves():
    doc = document(dashboard=True)
    assert doc["openapi"].startswith("3.1")

    def refs(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    yield v
                else:
                    yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)
    for ref in refs(doc):
        target = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["responses"], (method, path)
            assert {p["name"] for p in op.get("parameters", []) if p["in"] == "path"} == {
                seg.strip("{}") for seg in path.split("/") if seg.startswith("{")}, (method, path)


@pytest.mark.parametrize("dashboard", [False, True])
def test_schemathesis_accepts_the_document(dashboard):
    import schemathesis
    doc = document(dashboard=dashboard)
    schema = schemathesis.openapi.from_dict(doc)
    assert len(list(schema.get_all_operations())) == sum(len(v) for v in doc["paths"].values())


def test_other_modules_add_their_paths_with_one_entry():
    extra = {"/dashboard": {"get": {"responses": {"200": {"description": "the page"}}}}}
    doc = document(path_sources() + [extra])
    assert "/dashboard" in doc["paths"] and "/v1/models" in doc["paths"]
    with pytest.raises(ValueError, match="GET /healthz is described twice"):
        merge_paths([CORE_PATHS, {"/healthz": {"get": {}}}])
