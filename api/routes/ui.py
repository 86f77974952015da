"""The dashboard at /ui (docs/ui.md): static files shipped in the package (api/ui/static/), served as they are.

The page is a client of the public API only: it signs in with an API key that the browser keeps for its session and
calls the same routes as any script, so every tenant rule holds. Nothing here reads the database or takes a key.

Every URL the page uses is relative to its own location, so it works under a sub-path behind the reverse proxy
(`/tuneq/ui/` calls `/tuneq/jobs`); `/ui` redirects to `ui/`, a relative Location, for the same reason."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from common.errors import NotFound

router = APIRouter(prefix="/ui", include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "ui" / "static"
# Only plain file names of the kinds shipped: no path separators, no dot files.
ASSET = re.compile(r"[a-z0-9][a-z0-9_-]*\.(js|css|svg|png)")
MEDIA_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8", "svg": "image/svg+xml",
               "png": "image/png"}

# Everything from this origin only: no inline script or style, no CDN, no frames, and fetch() only to the API
# beside it. `blob:` images and downloads are the page's own objects (a downloaded adapter).
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                           "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@router.get("")
def ui_root() -> Response:
    """`/ui` → `ui/`: relative, so that it lands on `<prefix>/ui/` under any sub-path."""
    return RedirectResponse("ui/", status_code=307, headers=SECURITY_HEADERS)


@router.get("/")
def ui_index() -> Response:
    """The page itself; never cached, so that a new version of the assets is picked up at the next load."""
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})


@router.get("/{name}")
def ui_asset(name: str) -> Response:
    """A script, style sheet or image of the page: revalidated on every load (ETag), so no stale script lingers."""
    match = ASSET.fullmatch(name)
    path = STATIC / name
    if match is None or not path.is_file():
        raise NotFound(f"no such file of the dashboard: {name!r}")
    return FileResponse(path, media_type=MEDIA_TYPES[match.group(1)],
                        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})
