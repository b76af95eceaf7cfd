"""Learning-rate and weight-norm curves of a run, taken from the analysis module.

:func:`curves_from_analyses` turns analyses (``process_all_checkpoints``'s result, local or Hub) into
:class:`Curves`: one learning-rate series per optimizer param group and one weight-norm series per
layer group plus ``total``, each over the run's steps, with ``None`` where a checkpoint lacks that part
(a gap in the chart). :func:`experiment_curves` analyses the committed checkpoints of one experiment
of a local (or ``s3://``) root; :class:`CurveCache` does the same while remembering finished
checkpoints, so a page polled every few seconds only analyses the checkpoints that are new.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from weightslab.analysis.checkpoint import failed_analysis
from weightslab.analysis.local import LocalCheckpoint, analyze_local_checkpoint, list_local_checkpoints
from weightslab.analysis.models import CheckpointAnalysis
from weightslab.analysis.summary import sorted_analyses
from weightslab.errors import ConfigError
from weightslab.storage.open import is_remote
from weightslab.store.manager import CheckpointManager
from weightslab.util.jsonsafe import to_jsonable

Progress = Callable[[int, int], None]
"""``progress(done, total)``: checkpoints analysed so far out of those this call analyses."""

TOTAL = "total"
"""The name of the weight-norm series over every tensor of the checkpoint."""


@dataclass(frozen=True, kw_only=True)
class Series:
    """One curve: ``values[i]`` at ``steps[i]``; ``None`` where the checkpoint has no value (a gap)."""

    name: str
    steps: list[int]
    values: list[float | None]
    label: str = ""
    """What the values are (``learning rate``, ``L2 norm``): the chart's axis title."""

    def to_dict(self) -> dict[str, Any]:
        """The series as JSON types (NaN and infinities become ``None``)."""
        return cast("dict[str, Any]", to_jsonable(self))


@dataclass(frozen=True, kw_only=True)
class Curves:
    """The learning-rate and weight-norm curves of one run, and the checkpoints that could not be read."""

    lr: list[Series] = field(default_factory=list)
    """One series per optimizer param group (``optimizer · group 0``)."""
    weight_norm: list[Series] = field(default_factory=list)
    """One series per layer group (``model.layers.3``, ``lm_head``) and :data:`TOTAL`, last."""
    errors: list[str] = field(default_factory=list)
    """``<branch>: <why>`` for each checkpoint (or part of one) that failed."""
    checkpoints: int = 0
    """How many checkpoints the curves were made from (failed ones included)."""

    def to_dict(self) -> dict[str, Any]:
        """The curves as JSON types (NaN and infinities become ``None``)."""
        return cast("dict[str, Any]", to_jsonable(self))


def curves_from_analyses(analyses: Mapping[str, CheckpointAnalysis] | Iterable[CheckpointAnalysis]) -> Curves:
    """The curves of a set of analyses, sorted by step; never raises for a checkpoint that failed.

    A checkpoint without optimizer state (or without analysed weights) leaves a gap (``None``) in the
    series it would have fed. Checkpoints of several seeds (``step20-seed-default`` and
    ``step20-seed-large-aux``) get series of their own, named after the seed.
    """
    ordered = sorted_analyses(analyses)
    errors = [f"{a.branch}: {e}" for a in ordered for e in a.errors]
    lanes: dict[str | None, list[CheckpointAnalysis]] = {}
    for a in ordered:
        if a.step is not None:
            lanes.setdefault(a.seed, []).append(a)
    lr: list[Series] = []
    norms: list[Series] = []
    for seed, lane in lanes.items():
        prefix = f"seed {seed} · " if len(lanes) > 1 and seed is not None else ""
        lr.extend(_series(prefix, lane, _lr_points, "learning rate"))
        norms.extend(_series(prefix, lane, _norm_points, "L2 norm", last=TOTAL))
    return Curves(lr=lr, weight_norm=norms, errors=errors, checkpoints=len(ordered))


def _lr_points(a: CheckpointAnalysis) -> dict[str, float | None]:
    opt = a.optimizer
    if opt is None:
        return {}
    name = opt.optimizer_name or "optimizer"
    return {f"{name} · group {g.index}": g.lr for g in opt.param_groups}


def _norm_points(a: CheckpointAnalysis) -> dict[str, float | None]:
    w = a.weights
    if w is None:
        return {}
    points: dict[str, float | None] = {g.name: g.stats.norm for g in w.layer_groups}
    points[TOTAL] = w.stats.norm
    return points


def _series(
    prefix: str,
    lane: list[CheckpointAnalysis],
    points_of: Callable[[CheckpointAnalysis], dict[str, float | None]],
    label: str,
    *,
    last: str | None = None,
) -> list[Series]:
    """One series per name any checkpoint of ``lane`` has, over every step of the lane (gaps as ``None``)."""
    points = [points_of(a) for a in lane]
    names: list[str] = []
    for p in points:
        names.extend(n for n in p if n not in names)
    if last in names:  # the total goes after the layers, wherever it was first seen
        names.remove(last)
        names.append(last)
    steps = [cast("int", a.step) for a in lane]
    return [
        Series(name=prefix + n, steps=steps, values=[p.get(n) for p in points], label=label) for n in names
    ]


def experiment_curves(
    root: str | Path, exp_hash: str, *, progress: Progress | None = None, max_workers: int = 2
) -> Curves:
    """The curves of experiment ``exp_hash`` (a full hash or a unique prefix) of a local or ``s3://`` root.

    Every committed checkpoint is analysed with its weights, after its checksum is verified; a damaged
    or missing step file is listed in the result's ``errors``, it never raises.

    Raises:
        AnalysisSourceError: ``root`` is not a weightslab root.
        UnknownExperimentError: no experiment of ``root`` matches ``exp_hash`` (or it is ambiguous).
        ConfigError: ``max_workers`` is below 1.
    """
    return CurveCache(max_workers=max_workers).curves(root, exp_hash, progress=progress)


_Key = tuple[str, str, int, str | None]
"""(root, experiment hash, step, the entry's ``xxh3_128``): a checkpoint's content, wherever it is listed."""


class CurveCache:
    """:func:`experiment_curves` that re-analyses only checkpoints it has not seen; safe across threads.

    A checkpoint is remembered by its experiment, step and checksum, so a checkpoint that is rewritten
    (a rollback that reuses a step) is analysed again and one that is deleted is forgotten. A checkpoint
    that failed is tried again once ``retry_failed_s`` has passed (a damaged file may be restored), not
    on every poll: verifying reads the whole file.

    Args:
        max_workers: checkpoints analysed at the same time.
        retry_failed_s: how long a failure is remembered.

    Raises:
        ConfigError: ``max_workers`` is below 1 or ``retry_failed_s`` is negative.
    """

    def __init__(self, *, max_workers: int = 2, retry_failed_s: float = 30.0) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigError(f"max_workers must be an int >= 1, got {max_workers!r}")
        if (
            isinstance(retry_failed_s, bool)
            or not isinstance(retry_failed_s, (int, float))
            or retry_failed_s < 0
        ):
            raise ConfigError(f"retry_failed_s must be a number of seconds >= 0, got {retry_failed_s!r}")
        self._max_workers = max_workers
        self._retry_failed_s = retry_failed_s
        self._done: dict[_Key, tuple[CheckpointAnalysis, float]] = {}
        self._lock = threading.Lock()
        self._experiment_locks: dict[tuple[str, str], threading.Lock] = {}
        self.analysed = 0
        """How many checkpoint analyses this cache has run (a cached checkpoint is not counted again)."""

    def curves(self, root: str | Path, exp_hash: str, *, progress: Progress | None = None) -> Curves:
        """The curves of one experiment, analysing only the checkpoints not cached yet.

        ``progress(done, total)`` counts the checkpoints this call analyses: it is called with
        ``(0, total)`` first (``total`` is 0 when everything was cached) and after each one.

        Raises:
            AnalysisSourceError: ``root`` is not a weightslab root.
            UnknownExperimentError: no experiment of ``root`` matches ``exp_hash`` (or it is ambiguous).
        """
        listing = list_local_checkpoints(root)
        full = _resolve(root, exp_hash)
        mine = [c for c in listing.checkpoints if c.exp_hash == full]
        problems = [
            failed_analysis(root, name, why, local=True)
            for name, why in listing.problems.items()
            if full.startswith(name.rsplit("-", 1)[0])
        ]
        location = str(root)
        with self._experiment_lock(location, full):
            analyses = self._analyse(location, full, mine, progress)
        return curves_from_analyses([*analyses, *problems])

    def _experiment_lock(self, location: str, exp_hash: str) -> threading.Lock:
        # Two polls of one experiment at once: the second waits and then finds the work done.
        with self._lock:
            return self._experiment_locks.setdefault((location, exp_hash), threading.Lock())

    def _analyse(
        self, location: str, exp_hash: str, checkpoints: list[LocalCheckpoint], progress: Progress | None
    ) -> list[CheckpointAnalysis]:
        keys = {c.branch: (location, exp_hash, c.entry.step, c.entry.xxh3_128) for c in checkpoints}
        now = time.monotonic()
        with self._lock:
            for key in [k for k in self._done if k[:2] == (location, exp_hash) and k not in keys.values()]:
                del self._done[key]  # deleted or rewritten checkpoints
            cached = {b: self._done[k][0] for b, k in keys.items() if self._fresh(k, now)}
        todo = [c for c in checkpoints if c.branch not in cached]
        if progress is not None:
            progress(0, len(todo))
        if todo:
            with ThreadPoolExecutor(
                max_workers=min(self._max_workers, len(todo)), thread_name_prefix="weightslab-ui-curves"
            ) as pool:
                futures = [pool.submit(_analyse_one, c) for c in todo]
                for done, future in enumerate(as_completed(futures), start=1):
                    analysis = future.result()
                    with self._lock:
                        self._done[keys[analysis.branch]] = (analysis, time.monotonic())
                        self.analysed += 1
                        cached[analysis.branch] = analysis
                    if progress is not None:
                        progress(done, len(todo))
        return [cached[c.branch] for c in checkpoints]

    def _fresh(self, key: _Key, now: float) -> bool:
        hit = self._done.get(key)
        if hit is None:
            return False
        analysis, at = hit
        return analysis.ok or now - at < self._retry_failed_s


def _analyse_one(checkpoint: LocalCheckpoint) -> CheckpointAnalysis:
    start = time.perf_counter()
    try:
        return analyze_local_checkpoint(checkpoint, include_weights=True, verify=True)
    except Exception as exc:  # a damaged checkpoint is a line in the errors, never a failed page
        return failed_analysis(
            checkpoint.location or checkpoint.root,
            checkpoint.branch,
            exc,
            local=True,
            revision=checkpoint.entry.xxh3_128,
            elapsed_s=time.perf_counter() - start,
        )


def _resolve(root: str | Path, prefix: str) -> str:
    """The full hash of the experiment ``prefix`` names, read through a read-only manager."""
    location = root if isinstance(root, str) and is_remote(root) else Path(root).expanduser()
    return CheckpointManager(location, mode="r").resolve_hash(prefix)
