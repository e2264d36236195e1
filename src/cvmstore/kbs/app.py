"""The KBS over HTTP: a Starlette (ASGI) application mapping routes onto `KbsService`.

Guest endpoints live under `/kbs/v0` (Trustee's paths, plus the `cvmstore` plugin for the
ledger); the admin API under `/admin/v0`, with its own Bearer tokens. Every refusal is an
RFC 7807 problem document; an unexpected failure is logged here and answered with a bare 500
problem, never a trace. docs/kbs-api.md describes each endpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from threading import Lock
from typing import TypeVar

import anyio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from cvmstore.attest._json import strict_json
from cvmstore.errors import CvmstoreError, FormatError
from cvmstore.kbs.openapi import openapi_document
from cvmstore.kbs.problems import PROBLEM_CONTENT_TYPE, Problem
from cvmstore.kbs.protocol import (
    LEDGER_KEY_MEMBER,
    LEDGER_MAC_HEADER,
    LEDGER_PATH,
    SESSION_COOKIE,
    SIGNATURE_HEADER,
)
from cvmstore.kbs.service import Credentials, KbsService, resource_path, volume_document

__all__ = ["SESSION_COOKIE", "create_app"]

BEARER_CHALLENGE = 'Bearer realm="kbs"'
_log = logging.getLogger("cvmstore.kbs")
_T = TypeVar("_T")


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kbs_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "kbs_request_seconds",
            "Request latency",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.attestations = Counter(
            "kbs_attestations", "Attestations by result", ["result"], registry=self.registry
        )
        self.ledger = Counter(
            "kbs_ledger_advances", "Ledger advances by outcome", ["outcome"], registry=self.registry
        )
        self.releases = Counter(
            "kbs_resource_releases", "Resources released", registry=self.registry
        )


class _RateLimiter:
    """A token bucket per client address (per process), for /auth.

    The table keeps the most recently seen addresses only (an LRU), so a flood of addresses
    costs bounded memory and constant time per request.
    """

    MAX_CLIENTS = 10_000

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = Lock()

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            allowed = tokens >= 1
            self._buckets[client] = (tokens - 1 if allowed else tokens, now)
            if len(self._buckets) > self.MAX_CLIENTS:
                self._buckets.popitem(last=False)
            return allowed


def create_app(service: KbsService, *, on_shutdown: Callable[[], None] | None = None) -> Starlette:
    """The ASGI application for `service`."""
    config = service.config
    metrics = _Metrics()
    limiter = _RateLimiter(config.auth_rate, config.auth_burst)
    secure_cookie = config.tls_certificate is not None

    async def call(fn: Callable[[], _T]) -> _T:
        # At the deadline the request is answered 503; the worker thread finishes on its own
        # (a thread cannot be stopped), and its result is dropped.
        with anyio.fail_after(config.request_timeout):
            return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)

    async def body_bytes(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and (
            not declared.isdigit() or int(declared) > config.max_body_bytes
        ):
            raise Problem(413, "PayloadTooLarge", f"the body exceeds {config.max_body_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_body_bytes:
                raise Problem(
                    413, "PayloadTooLarge", f"the body exceeds {config.max_body_bytes} bytes"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def json_body(request: Request) -> object:
        return parse_json(await body_bytes(request))

    def parse_json(raw: bytes) -> object:
        try:
            value = strict_json(raw, "request body")
            # JSON can escape a lone surrogate ("\\ud800"): valid JSON, but no text any
            # other reader (or our own hashing and database) can take. Refuse it here, once.
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except FormatError as exc:
            raise Problem(400, "InvalidRequest", str(exc)[:300]) from None
        except UnicodeEncodeError:
            raise Problem(400, "InvalidRequest", "the body holds a lone surrogate") from None
        return value

    def credentials(request: Request) -> Credentials:
        header = request.headers.get("authorization")
        bearer = None
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Problem(401, "TokenInvalid", "Authorization must be 'Bearer <token>'")
            bearer = value.strip()
        return Credentials(request.cookies.get(SESSION_COOKIE), bearer)

    def set_cookie(response: Response, session_id: str, max_age: float) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=max(1, math.ceil(max_age)),
            path="/",
            httponly=True,
            secure=secure_cookie,
            samesite="strict",
        )

    # ------------------------------------------------------------------ guest endpoints

    async def auth(request: Request) -> Response:
        client = request.client.host if request.client else "unknown"
        if not limiter.allow(client):
            raise Problem(429, "TooManyRequests", "too many /auth requests: slow down")
        body = await json_body(request)
        session, challenge = await call(lambda: service.auth(body))
        response = JSONResponse(challenge)
        set_cookie(response, session.session_id, config.session_lifetime)
        return response

    async def attest(request: Request) -> Response:
        body = await json_body(request)
        session_id = request.cookies.get(SESSION_COOKIE)
        try:
            token, session, ledger_key = await call(lambda: service.attest(session_id, body))
        except Problem as exc:
            metrics.attestations.labels(exc.kind).inc()
            raise
        metrics.attestations.labels("affirming").inc()
        response = JSONResponse({"token": token, LEDGER_KEY_MEMBER: ledger_key})
        set_cookie(response, session.session_id, config.token_lifetime)
        return response

    async def resource(request: Request) -> Response:
        path = resource_path(*(request.path_params[k] for k in ("repository", "type", "tag")))
        creds = credentials(request)
        jwe, signature = await call(lambda: service.resource(creds, path))
        metrics.releases.inc()
        return JSONResponse(jwe, headers={SIGNATURE_HEADER: signature})

    async def ledger(request: Request) -> Response:
        volume = request.path_params["volume"]
        creds = credentials(request)
        if request.method in ("GET", "HEAD"):
            nonce = request.query_params.get("nonce")
            answer = await call(lambda: service.ledger_read(creds, volume, nonce))
            return JSONResponse({"answer": answer})
        raw = await body_bytes(request)
        body = parse_json(raw)
        mac = request.headers.get(LEDGER_MAC_HEADER)
        status, answer = await call(
            lambda: service.ledger_advance(creds, volume, body, raw=raw, mac=mac)
        )
        metrics.ledger.labels("advanced" if status == 200 else "conflict").inc()
        if status == 409:
            raise Problem(
                409,
                "LedgerConflict",
                f"the ledger of {volume!r} moved: another copy of this volume advanced it (a fork)",
                answer=answer,
            )
        return JSONResponse({"answer": answer})

    # ------------------------------------------------------------------ admin endpoints

    def admin(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            header = request.headers.get("authorization", "")
            scheme, _, value = header.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
            await call(lambda: service.check_admin(token))
            return await handler(request)

        return guarded

    def admin_path(request: Request) -> str:
        return resource_path(*(request.path_params[k] for k in ("repository", "type", "tag")))

    async def admin_resource(request: Request) -> Response:
        path = admin_path(request)
        if request.method == "DELETE":
            await call(lambda: service.delete_resource(path))
            return Response(status_code=204)
        value = await body_bytes(request)
        await call(lambda: service.set_resource(path, value))
        return Response(status_code=204)

    async def admin_resources(request: Request) -> Response:
        return JSONResponse({"resources": await call(service.repository.list_resources)})

    async def admin_policy(request: Request) -> Response:
        if request.method == "PUT":
            text = await body_bytes(request)
            await call(lambda: service.set_policy(text))
        return JSONResponse(await call(service.policies))

    async def admin_resource_policy(request: Request) -> Response:
        path = admin_path(request)
        if request.method == "DELETE":
            await call(lambda: service.delete_resource_policy(path))
            return Response(status_code=204)
        text = await body_bytes(request)
        policy = await call(lambda: service.set_resource_policy(path, text))
        return JSONResponse({"resource": path, "policy": json.loads(policy.document())})

    async def admin_references(request: Request) -> Response:
        if request.method == "POST":
            body = await json_body(request)
            if not isinstance(body, dict):
                raise Problem(400, "InvalidRequest", 'expected {"measurement": hex}')
            added = await call(lambda: service.add_reference(body.get("measurement")))
            return JSONResponse({"added": added}, status_code=201 if added else 200)
        return JSONResponse(await call(service.policies))

    async def admin_reference(request: Request) -> Response:
        value = request.path_params["measurement"]
        await call(lambda: service.delete_reference(value))
        return Response(status_code=204)

    async def admin_volumes(request: Request) -> Response:
        if request.method == "POST":
            body = await json_body(request)
            if not isinstance(body, dict):
                raise Problem(400, "InvalidRequest", 'expected {"name", "policy"}')
            record = await call(lambda: service.create_volume(body.get("name"), body.get("policy")))
            return JSONResponse(volume_document(record, []), status_code=201)  # no audit yet
        return JSONResponse({"volumes": await call(service.repository.list_volumes)})

    async def admin_volume(request: Request) -> Response:
        name = request.path_params["name"]
        return JSONResponse(await call(lambda: service.volume_info(name)))

    async def admin_token_key(request: Request) -> Response:
        signer = service.signer
        return JSONResponse({"jwk": signer.jwk, "thumbprint": signer.thumbprint})

    # ------------------------------------------------------------------ operations

    async def healthz(request: Request) -> Response:
        try:
            await call(lambda: service.repository.get_policy("healthz"))
        except Exception:  # a database that does not answer makes the process unready
            _log.exception("health check failed")
            raise Problem(503, "Unavailable", "the database does not answer") from None
        return JSONResponse({"status": "ok", "backend": service.repository.backend})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    openapi_json = json.dumps(openapi_document()).encode()  # built once per app

    async def openapi(request: Request) -> Response:
        return Response(openapi_json, media_type="application/json")

    resource_route = "/{repository}/{type}/{tag}"
    routes = [
        Route("/kbs/v0/auth", auth, methods=["POST"], name="auth"),
        Route("/kbs/v0/attest", attest, methods=["POST"], name="attest"),
        Route("/kbs/v0/resource" + resource_route, resource, methods=["GET"], name="resource"),
        Route(LEDGER_PATH + "/{volume}", ledger, methods=["GET", "POST"], name="ledger"),
        Route("/kbs/v0/openapi.json", openapi, methods=["GET"], name="openapi"),
        Route("/healthz", healthz, methods=["GET"], name="healthz"),
        Route("/metrics", metrics_endpoint, methods=["GET"], name="metrics"),
        Route(
            "/admin/v0/resource" + resource_route,
            admin(admin_resource),
            methods=["PUT", "DELETE"],
            name="admin-resource",
        ),
        Route(
            "/admin/v0/resources", admin(admin_resources), methods=["GET"], name="admin-resources"
        ),
        Route("/admin/v0/policy", admin(admin_policy), methods=["GET", "PUT"], name="admin-policy"),
        Route(
            "/admin/v0/resource-policy" + resource_route,
            admin(admin_resource_policy),
            methods=["PUT", "DELETE"],
            name="admin-resource-policy",
        ),
        Route(
            "/admin/v0/references",
            admin(admin_references),
            methods=["GET", "POST"],
            name="admin-references",
        ),
        Route(
            "/admin/v0/references/{measurement}",
            admin(admin_reference),
            methods=["DELETE"],
            name="admin-reference",
        ),
        Route(
            "/admin/v0/volumes", admin(admin_volumes), methods=["GET", "POST"], name="admin-volumes"
        ),
        Route(
            "/admin/v0/volumes/{name}", admin(admin_volume), methods=["GET"], name="admin-volume"
        ),
        Route(
            "/admin/v0/token-key", admin(admin_token_key), methods=["GET"], name="admin-token-key"
        ),
    ]

    def problem_response(problem: Problem, extra: Mapping[str, str] | None = None) -> Response:
        headers = dict(extra or {})
        if problem.status == 429:
            headers["Retry-After"] = "1"
        if problem.status == 401:
            headers["WWW-Authenticate"] = BEARER_CHALLENGE
        return Response(
            json.dumps(problem.document()),
            status_code=problem.status,
            media_type=PROBLEM_CONTENT_TYPE,
            headers=headers,
        )

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return problem_response(exc)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HttpError")
        return problem_response(Problem(exc.status_code, kind, str(exc.detail)), exc.headers)

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, TimeoutError):
            return problem_response(Problem(503, "Timeout", "the request took too long"))
        if isinstance(exc, CvmstoreError):  # e.g. a sealed value that does not unseal
            _log.error("request failed: %s", exc)
        else:
            _log.exception("unexpected failure")
        return problem_response(Problem(500, "InternalError", "the KBS failed; see its log"))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            on_shutdown()

    app = Starlette(
        routes=routes,
        exception_handlers={Problem: on_problem, HTTPException: on_http, Exception: on_error},
        lifespan=lifespan,
    )

    async def observe(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app_inner(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await app_inner(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "name", None) or "unmatched"
            elapsed = time.perf_counter() - started
            metrics.requests.labels(endpoint, str(status[0])).inc()
            metrics.latency.labels(endpoint).observe(elapsed)
            _log.info(
                "request",
                extra={
                    "event": "request",
                    "method": scope.get("method"),
                    "endpoint": endpoint,
                    "status": status[0],
                    "ms": round(elapsed * 1000, 2),
                    "session": _session_tag(scope),
                },
            )

    app_inner = app.build_middleware_stack()
    app.middleware_stack = observe
    return app


def _session_tag(scope: Scope) -> str | None:
    """A short digest of the session cookie, to follow a session in the log.

    The cookie itself is a bearer credential: it never appears there.
    """
    for name, value in scope.get("headers", ()):
        if name == b"cookie" and SESSION_COOKIE.encode() in value:
            return hashlib.sha256(value).hexdigest()[:12]
    return None
