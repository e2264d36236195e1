"""The OpenAPI document: valid OpenAPI 3.0.3, equal to the app's routes, served as it is built.

The route and problem-kind comparisons go both ways, so neither the document nor the code can
change alone: a new route, method or refusal without its entry fails here, and so does an
entry for something the code no longer does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import jsonschema_rs
import pytest
import schemathesis
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.definitions import OPENAPI_30
from starlette.applications import Starlette
from starlette.routing import Route

import cvmstore.kbs
from cvmstore.kbs.app import create_app
from cvmstore.kbs.config import KbsConfig
from cvmstore.kbs.openapi import openapi_document
from cvmstore.kbs.problems import PROBLEM_CONTENT_TYPE
from cvmstore.kbs.server import build_service
from cvmstore.kbs.storage import open_repository

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
KBS_SOURCES = Path(cvmstore.kbs.__file__).parent
#: `Problem(status, "Kind"` literals, over line breaks.
PROBLEM_LITERAL = re.compile(r'Problem\(\s*(\d{3}),\s*"([A-Za-z]+)"')
#: Kinds the app's HTTPException handler makes (app.py `on_http`) that an operation can meet:
#: 404 for a path part with a `/`. 405 (MethodNotAllowed) is for methods the document does
#: not list, so it belongs to no operation (docs/kbs-api.md says so).
HTTP_KINDS = {(404, "NotFound")}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Starlette]:
    data_dir = tmp_path_factory.mktemp("kbs")
    repository = open_repository(f"sqlite:///{data_dir / 'kbs.db'}")
    service = build_service(KbsConfig(data_dir=data_dir), repository=repository)
    try:
        yield create_app(service)
    finally:
        repository.close()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def references(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                yield item
            else:
                yield from references(item)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


def test_the_document_is_valid_openapi_3_0() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.0.3"
    errors = [
        f"{'/'.join(map(str, error.instance_path))}: {error.message}"
        for error in jsonschema_rs.Draft4Validator(OPENAPI_30).iter_errors(document)
    ]
    assert errors == []
    schemathesis.openapi.from_dict(document).validate()


def test_every_reference_resolves_and_every_schema_is_used() -> None:
    document = openapi_document()
    schemas = document["components"]["schemas"]
    used = set()
    for ref in references(document):
        prefix, _, name = ref.rpartition("/")
        assert prefix == "#/components/schemas", ref
        assert name in schemas, ref
        used.add(name)
    assert used == set(schemas)


def test_security_requirements_name_declared_schemes() -> None:
    document = openapi_document()
    declared = set(document["components"]["securitySchemes"])
    for path, method, operation in operations(document):
        assert "security" in operation, f"{method} {path} says nothing about authentication"
        for requirement in operation["security"]:
            assert set(requirement) <= declared
        admin = path.startswith("/admin/v0/")
        assert (operation["security"] == [{"adminToken": []}]) == admin, (method, path)


def test_paths_and_methods_equal_the_apps_routes(app: Starlette) -> None:
    routes = {}
    for route in app.routes:
        assert isinstance(route, Route), route
        assert route.methods is not None
        # Starlette answers HEAD wherever it answers GET; the document lists GET alone.
        routes[route.path] = {m.lower() for m in route.methods} - {"head"}
    documented = {
        path: {method for method in item if method in HTTP_METHODS}
        for path, item in openapi_document()["paths"].items()
    }
    assert documented == routes


def test_path_parameters_are_exactly_the_templates_names() -> None:
    document = openapi_document()
    for path, method, operation in operations(document):
        shared = document["paths"][path].get("parameters", [])
        declared = {
            p["name"] for p in [*shared, *operation.get("parameters", [])] if p["in"] == "path"
        }
        assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)


def test_every_operation_documents_its_failures_as_problems() -> None:
    for path, method, operation in operations(openapi_document()):
        responses = operation["responses"]
        assert {"500", "503"} <= set(responses), (method, path)
        assert any(status.startswith("2") for status in responses), (method, path)
        for status, response in responses.items():
            if int(status) >= 400:
                assert list(response["content"]) == [PROBLEM_CONTENT_TYPE], (method, path, status)


def documented_kinds() -> set[tuple[int, str]]:
    kinds: set[tuple[int, str]] = set()
    for _, _, operation in operations(openapi_document()):
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            schema = response["content"][PROBLEM_CONTENT_TYPE]["schema"]
            narrowed = schema["allOf"][1]["properties"]
            assert narrowed["status"]["enum"] == [int(status)]
            kinds.update((int(status), kind) for kind in narrowed["title"]["enum"])
    return kinds


def test_problem_kinds_equal_the_codes() -> None:
    in_code = set(HTTP_KINDS)
    for source in KBS_SOURCES.glob("*.py"):
        text = source.read_text(encoding="utf-8")
        in_code.update((int(status), kind) for status, kind in PROBLEM_LITERAL.findall(text))
    assert documented_kinds() == in_code


def test_the_app_serves_the_document(app: Starlette) -> None:
    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kbs") as client:
            return await client.get("/kbs/v0/openapi.json")

    response = anyio.run(get)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == openapi_document()


def test_schemathesis_loads_the_served_document(app: Starlette) -> None:
    schema = schemathesis.openapi.from_asgi("/kbs/v0/openapi.json", app)
    schema.validate()
    loaded = list(schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in loaded)
    labels = {result.ok().label for result in loaded if isinstance(result, Ok)}
    expected = {f"{method.upper()} {path}" for path, method, _ in operations(openapi_document())}
    # from_asgi leaves out the operation that serves the document itself.
    assert expected - labels == {"GET /kbs/v0/openapi.json"}
    assert labels < expected
