"""The dashboard's web application: ``create_app(source)`` returns a Starlette app.

Every page and every asset is served from this package (the charts are drawn by the vendored uPlot):
a page never asks anything of another host and works offline. Requests must name this server as their
``Host`` (a DNS-rebinding page cannot read the API), and every action must carry the page's token in
``X-Weightslab-Token``. Errors are shown as a message (a page, a fragment or ``{"error": ...}`` for the
JSON API); a traceback only ever goes to the server's log.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from weightslab import __version__
from weightslab.cli.formatting import format_size, format_time, format_value
from weightslab.ui.responses import error_response, render
from weightslab.ui.routes import routes
from weightslab.ui.state import UiState

log = logging.getLogger("weightslab")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def create_app(
    source: str,
    *,
    hub_repo: str | None = None,
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
    poll_ms: int = 2000,
    hub_options: dict[str, Any] | None = None,
) -> Starlette:
    """The dashboard over ``source`` (a root folder, an ``s3://`` root, or ``hf://org/repo`` with ``hub_repo``).

    ``allowed_hosts``: the ``Host`` names requests may carry (see ``server.allowed_hosts``).
    ``poll_ms``: how often the pages look for new checkpoints.
    """
    state = UiState(source=source, hub_repo=hub_repo, poll_ms=poll_ms, hub_options=dict(hub_options or {}))
    static = resources.files("weightslab.ui") / "static"
    app = Starlette(
        routes=[*routes, Mount("/static", app=StaticFiles(directory=str(static)), name="static")],
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)),
            Middleware(_Guard, state=state),
        ],
        exception_handlers={Exception: _on_error, HTTPException: _on_http_error},
    )
    app.state.ui = state
    app.state.templates = _templates()

    return app


class _Guard(BaseHTTPMiddleware):
    """Actions need the page's token; every answer gets the security headers."""

    def __init__(self, app: ASGIApp, state: UiState) -> None:
        super().__init__(app)
        self._token = state.token

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        # a page of another site may load our URLs (an <img>, a form): browsers say so, refuse it all
        if request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            return JSONResponse(
                {"error": "requests from other web sites are refused; open the dashboard's own page"},
                status_code=403,
            )
        sent = request.headers.get("x-weightslab-token", "")
        if request.method not in ("GET", "HEAD") and not secrets.compare_digest(
            sent.encode(), self._token.encode()
        ):
            return JSONResponse(
                {
                    "error": "this action needs the token of a weightslab ui page; reload the page and try again"
                },
                status_code=403,
            )
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def _clock(timestamp: float | None) -> str:
    """Local date and time to the second (the journal's events come seconds apart)."""
    if timestamp is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("weightslab.ui", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        size=format_size, when=format_time, clock=_clock, value=format_value, short=lambda h: (h or "")[:8]
    )
    env.globals["version"] = __version__
    return env


async def _on_error(request: Request, exc: Exception) -> Response:
    return error_response(request, exc)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = "no such page" if exc.status_code == 404 else str(exc.detail)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=exc.status_code)
    return render(request, "error.html", status_code=exc.status_code, message=message)


__all__ = ["LOOPBACK_HOSTS", "create_app"]
