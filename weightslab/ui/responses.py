"""How the dashboard answers: a rendered template, or an error as a message (never a traceback).

Pages get an error page, polled fragments an error fragment (the page keeps polling and recovers),
the JSON API ``{"error": message}``; the HTTP status says what kind of error it was.
"""

from __future__ import annotations

import logging
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from weightslab.errors import (
    AmbiguousExperimentError,
    CheckpointNotFoundError,
    ProtectedCheckpointError,
    RootError,
    RootLockedError,
    UnknownExperimentError,
    WeightslabError,
)
from weightslab.ui.state import UiState

log = logging.getLogger("weightslab")


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page or fragment from ``templates/`` with the dashboard's common context."""
    state: UiState = request.app.state.ui
    env: jinja2.Environment = request.app.state.templates
    html = env.get_template(template).render(
        source=state.source,
        token=state.token,
        poll_ms=state.poll_ms,
        hub=state.hub_repo is not None,
        **context,
    )
    return HTMLResponse(html, status_code=status_code)


# -- errors ---------------------------------------------------------------------------------------------
def status_of(exc: BaseException) -> int:
    """The HTTP status an error is answered with."""
    if isinstance(exc, (UnknownExperimentError, CheckpointNotFoundError)) and not isinstance(
        exc, AmbiguousExperimentError
    ):
        return 404
    if isinstance(exc, (RootLockedError, ProtectedCheckpointError)):
        return 409
    if isinstance(exc, RootError):
        return 404
    if isinstance(exc, (WeightslabError, ValueError, OSError)):
        return 400
    return 500


def message_of(exc: BaseException) -> str:
    """What the page says: the error's own message, or a pointer to the log for a bug of ours."""
    if isinstance(exc, (WeightslabError, ValueError, OSError)):
        return " ".join(str(exc).split()) or type(exc).__name__
    return f"internal error ({type(exc).__name__}); the server log has the details"


def error_response(request: Request, exc: BaseException) -> Response:
    status, message = status_of(exc), message_of(exc)
    if status >= 500:
        log.error("weightslab ui: %s %s failed", request.method, request.url.path, exc_info=exc)
    path = request.url.path
    if path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status)
    template = "fragments/error.html" if path.startswith("/fragments/") else "error.html"
    return render(request, template, status_code=status, message=message)


__all__ = ["error_response", "message_of", "render", "status_of"]
