"""The dashboard's URLs: pages, the fragments they poll, the JSON API and the actions.

Pages render whole; each live part of a page is also served alone under ``/fragments/`` and polled,
so a page follows a running training without reloading. Handlers are plain functions (Starlette runs
them on its thread pool: they read files); any error becomes a message through ``error_response``.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from weightslab.errors import ConfigError
from weightslab.inspect.compare import compare_checkpoints
from weightslab.ui import actions, queries
from weightslab.ui.responses import error_response, message_of, render, status_of
from weightslab.ui.state import UiState
from weightslab.util.jsonsafe import to_jsonable

Handler = Callable[[Request], Response]
log = logging.getLogger("weightslab")


def _ui(request: Request) -> UiState:
    state: UiState = request.app.state.ui
    return state


def handled(fn: Handler) -> Handler:
    """Answer any error of ``fn`` with a message instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(request: Request) -> Response:
        try:
            return fn(request)
        except Exception as exc:
            return error_response(request, exc)

    return wrapper


def _page(request: Request, template: str, **context: Any) -> Response:
    return render(request, template, **context)


def _json(data: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(to_jsonable(data), status_code=status_code)


def _step(request: Request) -> int:
    text = request.path_params["step"]
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise ConfigError(f"step {text[:40]!r} is not a step number; use a non-negative integer")
    return int(text)


async def _form(request: Request) -> dict[str, Any]:
    """The JSON body of an action (an empty body is ``{}``)."""
    body = await request.body()
    if not body:
        return {}
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ConfigError(f"the request body is not JSON ({exc}); send a JSON object") from exc
    if not isinstance(data, dict):
        raise ConfigError("the request body must be a JSON object")
    return data


# -- pages and their fragments ----------------------------------------------------------------------------
@handled
def home(request: Request) -> Response:
    ui = _ui(request)
    if ui.hub_repo is not None:
        return _page(request, "hub.html", repo=ui.hub_repo)
    return _page(request, "overview.html", **_overview_context(ui))


def _overview_context(ui: UiState) -> dict[str, Any]:
    try:
        return {"data": queries.overview(ui.open()), "message": None}
    except Exception as exc:  # the page still renders, polls, and shows the root once it exists
        if status_of(exc) >= 500:
            log.error("weightslab ui: the overview of %s failed", ui.source, exc_info=exc)
        return {"data": None, "message": message_of(exc)}


@handled
def overview_fragment(request: Request) -> Response:
    return _page(request, "fragments/overview.html", **_overview_context(_ui(request)))


@handled
def experiment(request: Request) -> Response:
    ui = _ui(request)
    manager = ui.open()
    h = manager.resolve_hash(request.path_params["exp"])
    return _page(request, "experiment.html", data=queries.experiment_detail(manager, h, ui.verified()))


@handled
def checkpoints_fragment(request: Request) -> Response:
    ui = _ui(request)
    manager = ui.open()
    h = manager.resolve_hash(request.path_params["exp"])
    data = queries.experiment_detail(manager, h, ui.verified())
    return _page(request, "fragments/checkpoints.html", data=data)


@handled
def compare(request: Request) -> Response:
    manager = _ui(request).open()
    a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
    names = queries.checkpoint_names(manager)
    result, error = None, None
    if a and b:
        try:
            result = compare_checkpoints(manager, [a, b]).to_dict()
        except Exception as exc:  # the form stays usable under the message
            error = message_of(exc)
        else:  # the form shows what the names resolved to
            a, b = (f"{c['exp_hash']}@{c['step']}" for c in result["checkpoints"][:2])
    return _page(request, "compare.html", names=names, a=a, b=b, result=result, error=error)


@handled
def journal_page(request: Request) -> Response:
    return _page(request, "journal.html", data=_journal(request))


@handled
def journal_fragment(request: Request) -> Response:
    return _page(request, "fragments/journal.html", data=_journal(request))


def _journal(request: Request) -> dict[str, Any]:
    manager = _ui(request).open()
    exp = request.query_params.get("exp")
    return queries.journal(manager, exp_hash=manager.resolve_hash(exp) if exp else None)


# -- JSON -----------------------------------------------------------------------------------------------
@handled
def metrics_api(request: Request) -> Response:
    manager = _ui(request).open()
    return _json(queries.metric_curves(manager, manager.resolve_hash(request.path_params["exp"])))


@handled
def analysis_api(request: Request) -> Response:
    """The learning-rate and weight-norm curves: started on the first request, polled until done."""
    ui = _ui(request)
    h = ui.open().resolve_hash(request.path_params["exp"])

    def run(tracker: Any) -> Any:
        def progress(done: int, total: int) -> None:
            tracker.set(done, total, "analysing checkpoints")

        return ui.curves.curves(ui.source, h, progress=progress).to_dict()

    key = f"analysis:{h}"
    job = ui.jobs.start("analysis", key, run)  # a new pass picks up new checkpoints; the cache keeps it cheap
    previous = ui.jobs.last_finished(key)
    if job.state == "running" and previous is not None and previous.state == "done":
        return _json({**(ui.jobs.snapshot(previous.id) or {}), "curves": previous.result, "updating": True})
    return _json({**(ui.jobs.snapshot(job.id) or {}), "curves": job.result if job.state == "done" else None})


@handled
def hub_api(request: Request) -> Response:
    return _hub(_ui(request), refresh=False)


@handled
def hub_refresh(request: Request) -> Response:
    """Analyse the repository again (a POST with the page's token: it downloads)."""
    return _hub(_ui(request), refresh=True)


def _hub(ui: UiState, *, refresh: bool) -> Response:
    if ui.hub_repo is None:
        raise ConfigError("this dashboard shows a checkpoint root, not a Hub repository")
    repo = ui.hub_repo

    def run(tracker: Any) -> Any:
        from weightslab.ui.hub import analyse_hub_run

        def progress(done: int, total: int) -> None:
            tracker.set(done, total, "analysing branches")

        return analyse_hub_run(repo, progress=progress, **ui.hub_options).to_dict()

    key = f"hub:{repo}"
    job = ui.jobs.running(key) or (None if refresh else ui.jobs.last_finished(key))
    if job is None:
        job = ui.jobs.start("hub", key, run)
    return _json({**(ui.jobs.snapshot(job.id) or {}), "run": job.result if job.state == "done" else None})


@handled
def job_api(request: Request) -> Response:
    ui = _ui(request)
    job = ui.jobs.get(request.path_params["job"])
    if job is None:
        return _json(
            {"error": f"no job {request.path_params['job']!r}: it finished long ago or never ran"}, 404
        )
    return _json(ui.jobs.snapshot(job.id, result=True))


# -- actions (POST, with the page's token) ------------------------------------------------------------------
async def verify_action(request: Request) -> Response:
    ui = _ui(request)
    try:
        exp = (await _form(request)).get("exp_hash") or None

        def run(tracker: Any) -> Any:
            result = actions.verify(ui.source, exp, tracker)
            ui.record_verify(result["statuses"], result["digests"])
            return result

        job = ui.jobs.start("verify", f"verify:{exp or '*'}", run)
    except Exception as exc:
        return error_response(request, exc)
    return _json(ui.jobs.snapshot(job.id, result=True), 202)  # a quick job may be done already


async def tag_action(request: Request) -> Response:
    ui = _ui(request)
    try:
        form = await _form(request)
        tags = actions.parse_tags(form.get("tags") or "")
        description = actions.check_description(form.get("description"))
        step = _step(request)
        result = await run_in_threadpool(
            actions.tag,
            ui.source,
            request.path_params["exp"],
            step,
            tags,
            description,
        )
    except Exception as exc:
        return error_response(request, exc)
    return _json(result)


@handled
def delete_action(request: Request) -> Response:
    ui = _ui(request)
    result = actions.delete(ui.source, request.path_params["exp"], _step(request))
    ui.forget(result["exp_hash"], result["step"])
    return _json(result)


async def gc_action(request: Request) -> Response:
    ui = _ui(request)
    try:
        dry_run = (await _form(request)).get("dry_run", True)
        if not isinstance(dry_run, bool):
            raise ConfigError(f"dry_run must be true or false, got {dry_run!r}")

        def run(tracker: Any) -> Any:
            return actions.gc(ui.source, dry_run=dry_run, tracker=tracker)

        job = ui.jobs.start("gc", "gc:dry-run" if dry_run else "gc:run", run)
    except Exception as exc:
        return error_response(request, exc)
    return _json(ui.jobs.snapshot(job.id, result=True), 202)  # a quick job may be done already


@handled
def export_check(request: Request) -> Response:
    """What an export would read: the page asks first, so that an error is a message, not a broken download."""
    return _json(actions.export_check(_ui(request).source, request.path_params["exp"], _step(request)))


@handled
def export_download(request: Request) -> Response:
    fmt = request.query_params.get("format", "safetensors")
    if fmt not in ("safetensors", "pt"):
        raise ConfigError(f"export format {fmt!r} is not one of safetensors, pt")
    archive, name = actions.export_zip(_ui(request).source, request.path_params["exp"], _step(request), fmt)  # type: ignore[arg-type]
    return FileResponse(
        archive,
        media_type="application/zip",
        filename=name,
        background=BackgroundTask(actions.remove_export, archive),
    )


routes = [
    Route("/", home),
    Route("/fragments/overview", overview_fragment),
    Route("/exp/{exp}", experiment),
    Route("/fragments/exp/{exp}/checkpoints", checkpoints_fragment),
    Route("/exp/{exp}/checkpoints/{step}/export.zip", export_download),
    Route("/compare", compare),
    Route("/journal", journal_page),
    Route("/fragments/journal", journal_fragment),
    Route("/api/exp/{exp}/metrics", metrics_api),
    Route("/api/exp/{exp}/analysis", analysis_api),
    Route("/api/hub", hub_api),
    Route("/api/hub/refresh", hub_refresh, methods=["POST"]),
    Route("/api/jobs/{job}", job_api),
    Route("/api/verify", verify_action, methods=["POST"]),
    Route("/api/exp/{exp}/checkpoints/{step}/tag", tag_action, methods=["POST"]),
    Route("/api/exp/{exp}/checkpoints/{step}/delete", delete_action, methods=["POST"]),
    Route("/api/gc", gc_action, methods=["POST"]),
    Route("/api/exp/{exp}/checkpoints/{step}/export", export_check),
]

__all__ = ["routes"]
