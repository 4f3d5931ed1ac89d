"""GET /docs (Swagger UI) and /redoc (ReDoc) from assets shipped in the package (service/docs_assets/).

FastAPI's own pages load their JavaScript and CSS from a CDN, so without internet they are
blank; these are the same pages with every asset served by the service at /docs/assets/.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
}
PREFIX = "/docs/assets/"
NO_ICON = "data:,"
REDOC_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; worker-src 'self' blob:"
)  # no favicon request at all (FastAPI's default is fetched from its website)


def add_docs_routes(app: FastAPI, title: str) -> None:
    """Replaces FastAPI's /docs and /redoc routes with offline ones."""
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) not in ("/docs", "/redoc")]
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title}: API",
            swagger_js_url=PREFIX + "swagger-ui-bundle.js",
            swagger_css_url=PREFIX + "swagger-ui.css",
            swagger_favicon_url=NO_ICON,
            oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url,
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title}: API",
            redoc_js_url=PREFIX + "redoc.standalone.js",
            redoc_favicon_url=NO_ICON,
            with_google_fonts=False,
        )
        # ReDoc's footer logo comes from its CDN: the browser is told to load nothing from elsewhere
        page.headers["Content-Security-Policy"] = REDOC_CSP
        return page

    @app.get(PREFIX + "{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        if name not in ASSETS:
            raise HTTPException(404, f"no such documentation asset: {name}")
        data = resources.files("mllm_audit.service").joinpath("docs_assets", name).read_bytes()
        return Response(data, media_type=ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})
