"""What the dashboard's pages show, computed from a root through the read-only queries of ``inspect``.

Plain dictionaries for the templates and the JSON endpoints; nothing here knows about HTTP. The
metric curves of an experiment are joined along its lineage: an experiment's chart starts with its
ancestors' checkpoints up to the step each child branched at, so a run that changed its learning rate
at step 100 still shows one curve from step 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from weightslab.errors import ConfigFileError, ManifestError
from weightslab.format.manifest import CheckpointEntry, Manifest
from weightslab.inspect.checkpoints import CheckpointInfo, checkpoint_infos, protection_reason
from weightslab.inspect.experiments import ExperimentInfo, experiment_info, experiment_infos, iso_time
from weightslab.inspect.lineage import lineage
from weightslab.inspect.overview import architecture_summary
from weightslab.store.manager import CheckpointManager
from weightslab.ui.lineage_graph import layout_lineage, render_svg
from weightslab.util.jsonsafe import to_jsonable

VerifyStatus = Mapping[tuple[str, int], tuple[str, str]]
"""``{(exp_hash, step): ("OK" | what is wrong, checksum verified)}`` from this dashboard's verify runs."""

_LOWER_IS_BETTER = ("loss", "err", "perplexity", "ppl", "mse", "mae", "rmse", "nll", "wer", "cer")
JOURNAL_LIMIT = 500


def overview(manager: CheckpointManager) -> dict[str, Any]:
    """The root page: every experiment's row and the lineage graph."""
    infos = experiment_infos(manager)
    rows = [experiment_row(i) for i in infos]
    graph = layout_lineage(lineage(manager, infos))
    return {
        "root": str(manager.root),
        "experiments": rows,
        "active": next((i.exp_hash for i in infos if i.active), None),
        "checkpoints": sum(i.checkpoints for i in infos),
        "size_bytes": sum(i.size_bytes for i in infos),
        "lineage_svg": render_svg(graph, href=lambda h: f"/exp/{h}"),
        "lineage": graph.to_dict(),
    }


def experiment_row(info: ExperimentInfo) -> dict[str, Any]:
    """One experiment as the tables show it (the ``weightslab ls --json`` record, plus its state)."""
    row = info.to_dict()
    state = []
    if info.active:
        state.append("active")
    if info.abandoned:
        state.append(f"{info.abandoned} abandoned")
    if info.error:
        state.append("unreadable")
    row["state"] = ", ".join(state)
    return row


def experiment_detail(manager: CheckpointManager, exp_hash: str, verified: VerifyStatus) -> dict[str, Any]:
    """The experiment page: its row, checkpoints, architecture and config (an unreadable config is a message)."""
    info = experiment_info(manager, exp_hash, active=manager.last_active())
    config: dict[str, Any] | None
    config_error = None
    try:
        config = manager.read_config(exp_hash)
    except ConfigFileError as exc:
        config, config_error = None, str(exc)
    return {
        "root": str(manager.root),
        "experiment": experiment_row(info),
        "checkpoints": checkpoint_rows(manager, exp_hash, verified),
        "architecture": [m.to_dict() for m in architecture_summary(manager, exp_hash)],
        "config": config,
        "config_error": config_error,
    }


def checkpoint_rows(
    manager: CheckpointManager, exp_hash: str, verified: VerifyStatus
) -> list[dict[str, Any]]:
    """The checkpoint table, newest first: each record, why retention keeps it, whether it can be deleted."""
    rows = []
    digests = {e.step: e.xxh3_128 for e in manager.manifest(exp_hash).checkpoints}
    for info in checkpoint_infos(manager, exp_hash):
        row = info.to_dict()
        row["protected_because"] = protection_reason(info)
        status, digest = verified.get((exp_hash, info.step), (None, None))
        row["verify"] = status if digest == digests.get(info.step) else None  # rewritten since: unverified
        rows.append(row)
    rows.sort(key=lambda r: (r["seq"], r["step"]), reverse=True)
    return rows


# -- metric curves -------------------------------------------------------------------------------------
def metric_curves(manager: CheckpointManager, exp_hash: str) -> dict[str, Any]:
    """Every metric the experiment's checkpoints logged, over steps, joined with its ancestors' curves.

    Returns ``{"segments": [{exp_hash, label, until}], "metrics": [{name, steps, series, best, mode}]}``:
    ``steps`` is the x axis; ``series`` has one value list per segment of the lineage (None where the
    segment has no point), so each experiment draws in its own colour and the curve runs on across a
    branch; ``best`` is the experiment's own best point (the recorded monitor's mode, else lower is
    better for losses and errors, higher for the rest). Abandoned checkpoints are left out.
    """
    chain = _ancestry(manager, exp_hash)
    own = manager.manifest(exp_hash)
    points: list[tuple[int, int, dict[str, float | None]]] = []  # (segment, step, metrics)
    segments = []
    for index, (h, until) in enumerate(chain):
        segments.append({"exp_hash": h, "label": h[:8], "until": until})
        for entry in _live(manager, h):
            if until is None or entry.step < until:
                points.append((index, entry.step, dict(entry.metrics)))
    names = list(dict.fromkeys(name for _, _, metrics in points for name in metrics))
    metrics = [_curve(name, points, len(chain), own) for name in names]
    return {"segments": segments, "metrics": to_jsonable(metrics)}


def _ancestry(manager: CheckpointManager, exp_hash: str) -> list[tuple[str, int | None]]:
    """``[(experiment, first step of its child in the chain)]`` from the oldest ancestor to ``exp_hash``."""
    chain: list[tuple[str, int | None]] = [(exp_hash, None)]
    seen = {exp_hash}
    parent = manager.manifest(exp_hash).parent
    while parent is not None and parent.exp_hash not in seen and manager.has_experiment(parent.exp_hash):
        child_start = parent.step if parent.step is not None else _after(parent.checkpoint)
        chain.append((parent.exp_hash, child_start))
        seen.add(parent.exp_hash)
        try:
            parent = manager.manifest(parent.exp_hash).parent
        except ManifestError:
            break
    return chain[::-1]


def _after(step: int | None) -> int | None:
    return None if step is None else step + 1


def _live(manager: CheckpointManager, exp_hash: str) -> list[CheckpointEntry]:
    try:
        return sorted(
            (e for e in manager.manifest(exp_hash).checkpoints if not e.abandoned), key=lambda e: e.step
        )
    except ManifestError:
        return []


def _curve(
    name: str, points: list[tuple[int, int, dict[str, float | None]]], n_segments: int, own: Manifest
) -> dict[str, Any]:
    steps = sorted({step for _, step, metrics in points if _finite(metrics.get(name))})
    column = {step: i for i, step in enumerate(steps)}
    series: list[list[float | None]] = [[None] * len(steps) for _ in range(n_segments)]
    last_of: dict[int, tuple[int, float]] = {}
    for segment, step, metrics in points:
        value = metrics.get(name)
        if _finite(value):
            assert value is not None
            series[segment][column[step]] = value
            if segment not in last_of or step >= last_of[segment][0]:
                last_of[segment] = (step, value)
    for segment in range(1, n_segments):  # the curve runs on: each segment starts at the last point before it
        previous = last_of.get(segment - 1)
        if previous is not None and segment in last_of:
            series[segment][column[previous[0]]] = previous[1]
    mode = _mode(name, own.retention)
    own_segment = n_segments - 1
    candidates = [(s, v) for s, v in zip(steps, series[own_segment], strict=True) if v is not None]
    if own_segment > 0 and own_segment - 1 in last_of:  # the joined point belongs to the parent
        candidates = [(s, v) for s, v in candidates if s != last_of[own_segment - 1][0]]
    best = None
    if candidates:
        step, value = (min if mode == "min" else max)(candidates, key=lambda sv: (sv[1], -sv[0]))
        best = {"step": step, "value": value}
    return {"name": name, "steps": steps, "series": series, "best": best, "mode": mode}


def _mode(name: str, retention: Mapping[str, Any]) -> str:
    if retention.get("monitor") == name and retention.get("mode") in ("min", "max"):
        return str(retention["mode"])
    lowered = name.lower()
    return "min" if any(word in lowered for word in _LOWER_IS_BETTER) else "max"


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- journal --------------------------------------------------------------------------------------------
def journal(
    manager: CheckpointManager, *, exp_hash: str | None = None, limit: int = JOURNAL_LIMIT
) -> dict[str, Any]:
    """The root's event journal, newest first (``limit`` events), optionally for one experiment."""
    events = manager.events()
    if exp_hash is not None:
        events = [e for e in events if exp_hash in (e.get("exp_hash"), e.get("previous"))]
    total = len(events)
    rows = [_journal_row(e) for e in reversed(events[-limit:])]
    return {
        "root": str(manager.root),
        "events": rows,
        "total": total,
        "shown": len(rows),
        "exp_hash": exp_hash,
    }


_ROW_FIELDS = ("time", "event", "exp_hash", "step")


def _journal_row(event: Mapping[str, Any]) -> dict[str, Any]:
    when = event.get("time")
    step = event.get("step")
    exp = event.get("exp_hash")
    return {
        "time": when if isinstance(when, (int, float)) else None,
        "time_iso": iso_time(when) if isinstance(when, (int, float)) else None,
        "event": str(event.get("event") or "?"),
        "exp_hash": exp if isinstance(exp, str) else None,
        "step": step if isinstance(step, int) else None,
        "detail": _detail(event, (k for k in event if k not in _ROW_FIELDS)),
    }


def _detail(event: Mapping[str, Any], keys: Iterable[str], width: int = 240) -> str:
    parts = []
    for key in keys:
        value = event[key]
        if value in (None, [], {}, ""):
            continue
        if isinstance(value, float):
            text = f"{value:.6g}"
        elif isinstance(value, dict):
            text = "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
        else:
            text = _short(value)
        parts.append(f"{key}={text}")
    line = "  ".join(parts)
    return line if len(line) <= width else line[: width - 1] + "…"


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


def checkpoint_names(manager: CheckpointManager) -> list[dict[str, str]]:
    """Every live checkpoint as ``<hash>@<step>`` (for the compare form), newest experiment first."""
    names = []
    for h in reversed(manager.experiments()):
        for entry in sorted(_live(manager, h), key=lambda e: e.step, reverse=True):
            names.append({"value": f"{h}@{entry.step}", "label": f"{h[:8]} @ {entry.step} ({entry.trigger})"})
    return names


__all__ = [
    "CheckpointInfo",
    "checkpoint_names",
    "checkpoint_rows",
    "experiment_detail",
    "experiment_row",
    "journal",
    "metric_curves",
    "overview",
]
