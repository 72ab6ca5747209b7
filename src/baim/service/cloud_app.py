"""``baim serve cloud``: the registry over HTTP.

Every endpoint but ``/healthz`` needs a bearer token issued by ``baim serve token`` (the index,
``/docs`` and ``/openapi.json`` too: the API's shape is nobody else's business). Weights
are served with their sha256 as a strong ETag, so a client can re-validate (If-None-Match →
304) or resume an interrupted download (Range requests).
"""

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from .. import __version__
from ..cloud.registry import Registry
from .http import Metrics, error, install_common


def create_cloud_app(registry: Registry) -> FastAPI:
    app = FastAPI(title="baim cloud registry", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    metrics = Metrics("baim_registry")
    install_common(app, metrics)
    app.state.registry = registry

    def client(authorization: Annotated[str | None, Header()] = None) -> str:
        scheme, _, token = (authorization or "").partition(" ")
        name = registry.client_of(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if name is None:
            raise HTTPException(
                401,
                "a valid bearer token is required (Authorization: Bearer TOKEN); issue one with "
                "`baim serve token --run RUN --name NAME`",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return name

    Client = Annotated[str, Depends(client)]
    Version = Annotated[int | None, Query(ge=1, le=2**31 - 1, description="default: the latest")]

    def find(task: str, version: int | None) -> Any:
        entry = registry.entry(task, version)
        if entry is None:
            known = registry.tasks()
            what = f"task {task!r}" if version is None or task not in known else f"{task!r} version {version}"
            return None, error(404, f"unknown {what}; known tasks: {', '.join(known) or '(none)'}", known_tasks=known)
        return entry, None

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": len(registry.entries())}

    @app.get("/metrics")
    def prometheus(_: Client) -> Response:
        return metrics.render()

    @app.get("/v1/public-key")
    def public_key(_: Client) -> dict[str, str]:
        return {"algorithm": "Ed25519", "public_key": registry.public_key.hex()}

    @app.get("/v1/models")
    def models(_: Client) -> dict[str, Any]:
        return {"models": [e.to_dict() for e in registry.entries()]}

    @app.get("/v1/models/{task}")
    def model(task: str, _: Client, version: Version = None) -> Any:
        entry, missing = find(task, version)
        if missing is not None:
            return missing
        return {**entry.to_dict(), "manifest": registry.manifest(entry), "public_key": registry.public_key.hex()}

    @app.get("/v1/models/{task}/weights")
    def weights(task: str, request: Request, _: Client, version: Version = None) -> Any:
        entry, missing = find(task, version)
        if missing is not None:
            return missing
        etag = f'"{entry.sha256}"'
        wanted = [t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")]
        if etag in wanted or "*" in wanted:
            return Response(status_code=304, headers={"ETag": etag})
        return FileResponse(
            registry.weights_path(entry),
            media_type="application/octet-stream",
            headers={"ETag": etag, "X-Baim-Model": f"{entry.task}@{entry.version}"},
        )

    @app.get("/", include_in_schema=False)
    def index(_: Client) -> JSONResponse:
        return JSONResponse({"service": "baim cloud registry", "version": __version__, "docs": "/docs"})

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(_: Client) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs(_: Client) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

    return app
