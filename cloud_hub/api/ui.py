"""The web dashboard's static files: `/ui/` serves cloud_hub/web/static (shipped in the package),
`/` redirects there.

The page holds no data: it is public, and every call it makes to the API sends the user's token
(viewer role or higher). Both routes are mounts, not API operations: they are not in the OpenAPI
document, and the role checks and input hygiene of the API do not apply to them (the hygiene
middleware passes a path that is no documented operation straight to the router).

Every answer carries the page's security headers: a Content-Security-Policy that lets it load
only its own files (no inline script or style, no other origin, no framing), `nosniff`, no
referrer; index.html is never cached (a new hub version's page is picked up at once), the
other files are revalidated (ETag) on every use.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter
from starlette.responses import RedirectResponse, Response
from starlette.routing import Match, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

__all__ = ["CSP", "STATIC_DIR", "SECURITY_HEADERS", "router"]

UI_PATH = "/ui"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
STATIC_DIR = Path(str(files("cloud_hub").joinpath("web", "static")))


class DashboardFiles(StaticFiles):
    """StaticFiles (ETag, 304, HEAD, index.html for the folder) with the page's headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        page = response.media_type is not None and response.media_type.startswith("text/html")
        response.headers["Cache-Control"] = "no-store" if page else "no-cache"
        return response


class _Dashboard(Mount):
    """The mount at /ui that also answers `/` and `/ui` with a redirect to `/ui/` (one mount:
    no operation of the API, and no route with an empty path, which FastAPI refuses)."""

    def __init__(self) -> None:
        self.files = DashboardFiles(directory=STATIC_DIR, html=True)
        super().__init__(UI_PATH, app=self._serve, name="ui")

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and scope["path"] in ("/", UI_PATH):
            return Match.FULL, {"path_params": {}, "endpoint": self._serve}
        return super().matches(scope)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] in ("/", UI_PATH):
            response = RedirectResponse(f"{UI_PATH}/", status_code=307, headers=SECURITY_HEADERS)
            await response(scope, receive, send)
            return
        await self.files(scope, receive, send)


router = APIRouter()
router.routes.append(_Dashboard())
