"""GET /ui: the audit viewer, plain HTML, CSS and JavaScript files shipped in the package (service/ui/).

Nothing is fetched from elsewhere: the page calls this service's JSON API (/info, /v1/explain,
/v1/reliance) and draws with the colour table of mllm_audit.explainers.colormap, served as
/ui/colormap.js so the viewer, the CLI's overlays and the HTML report use the same colours.
The pages are open (no API key): they hold no data; the viewer sends the key the user types.
"""

from __future__ import annotations

import json
from importlib import resources

from fastapi import FastAPI, HTTPException
from fastapi.responses import Response

ASSETS = {  # the files of service/ui and their types; nothing else is served
    "index.html": "text/html; charset=utf-8",
    "viewer.css": "text/css; charset=utf-8",
    "render.js": "text/javascript; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
}
# the page may load only what this service serves: no CDN, no inline script
CSP = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'"


def asset(name: str) -> bytes:
    return resources.files("mllm_audit.service").joinpath("ui", name).read_bytes()


def colormap_script() -> bytes:
    from mllm_audit.explainers.colormap import COLORMAP_HEX

    return f"window.MLLM_COLORMAP = {json.dumps(COLORMAP_HEX)};\n".encode()


def add_ui_routes(app: FastAPI) -> None:
    headers = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache"}

    @app.get("/ui", include_in_schema=False)
    async def viewer() -> Response:
        return Response(asset("index.html"), media_type=ASSETS["index.html"], headers=headers)

    @app.get("/ui/{name}", include_in_schema=False)
    async def ui_file(name: str) -> Response:
        if name == "colormap.js":
            return Response(colormap_script(), media_type=ASSETS["app.js"], headers=headers)
        if name not in ASSETS:
            raise HTTPException(404, f"no such file in the viewer: {name}")
        return Response(asset(name), media_type=ASSETS[name], headers=headers)
