"""The web page: ``/`` serves ``service/web/index.html``, ``/ui/…`` its scripts and styles. Plain
ES modules, no build step and nothing fetched from elsewhere; the page talks to the API only."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
router = APIRouter(include_in_schema=False)
static_files = StaticFiles(directory=WEB_DIR)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})
