"""The web page: ``/`` serves ``service/web/index.html``, ``/ui/…`` its scripts and styles, and
``/docs`` the API's Swagger UI from the swagger-ui-bundle package's own copy (``/ui-swagger/…``).
Plain ES modules, no build step and nothing fetched from elsewhere; the page talks to the API
only."""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
SWAGGER_DIR = Path(swagger_ui_bundle.swagger_ui_path)
router = APIRouter(include_in_schema=False)
static_files = StaticFiles(directory=WEB_DIR)
swagger_files = StaticFiles(directory=SWAGGER_DIR)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    """Swagger UI of /openapi.json, its scripts and styles served from this server."""
    return get_swagger_ui_html(
        openapi_url="/docs/openapi.json",
        title="Explainer API",
        swagger_js_url="/ui-swagger/swagger-ui-bundle.js",
        swagger_css_url="/ui-swagger/swagger-ui.css",
        swagger_favicon_url="/ui-swagger/favicon-32x32.png",
    )


@router.get("/docs/openapi.json")
def swagger_document(request: Request) -> JSONResponse:
    """/openapi.json labelled OpenAPI 3.0.3 for the packaged Swagger UI (4.15.5), which refuses to
    render a document that says 3.1.0; the schemas it shows are the same."""
    return JSONResponse(request.app.openapi() | {"openapi": "3.0.3"})
