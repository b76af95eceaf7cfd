"""``Checkpointer``: a rolling "latest", numbered and best checkpoints of one run, on the automatic system.

``checkpoint_dir = registry_path/run_id`` is a weightslab root, written by an
:class:`~weightslab.system.automatic.AutomaticCheckpointSystem` on its own :class:`Ledger` (never the
process-wide system or ledger). A ``train_state`` is any tree of dicts, lists and tuples; each save
maps it onto the ledger:

- a ``torch.nn.Module`` is registered as a model, an ``Optimizer`` as an optimizer, an LR scheduler
  as a scheduler, any other object with ``state_dict()``/``load_state_dict()`` as a stateful object,
  each named by its key path (``"model"``, ``"nets.encoder"``, ``"opts.0"``);
- the rest (tensors, numbers, strings, the tree's shape) is one stateful object, ``checkpointer.tree``,
  stored under the step file's ``extra``

(that mapping is :mod:`weightslab.integrations.train_state`; finding and loading checkpoints is
:mod:`weightslab.integrations.lookup`).

So the experiment hash is that of the models (a pruned model opens a new experiment, as in any
weightslab run). Roles are manifest tags: a checkpoint is ``latest``, ``numbered`` and/or ``best``;
one step is one file whatever its roles (a save at a step already saved adds its roles to that
checkpoint and merges its metrics into the manifest entry). Loads return the train_state with every
object replaced by its state dict, verified against the manifest's checksum.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from weightslab.errors import CheckpointNotFoundError, ConfigError, InvalidNameError, UnsafePathError
from weightslab.integrations.lookup import Found, all_entries, find_entry, load_newest
from weightslab.integrations.train_state import (
    SECTIONS,
    TREE_NAME,
    TreeState,
    rebuild_train_state,
    split_train_state,
    step_of,
)
from weightslab.policy.save import EveryNSteps
from weightslab.registry.events import Kind
from weightslab.registry.ledger import Ledger
from weightslab.system.automatic import AutomaticCheckpointSystem
from weightslab.system.config import CheckpointConfig, OnError
from weightslab.system.resume import latest_candidates
from weightslab.system.validation import check_step
from weightslab.util.names import validate_name

log = logging.getLogger("weightslab")

ROLES = ("numbered", "best", "latest")  # also the order in which a step's trigger is chosen

__all__ = ["Checkpointer"]


class Checkpointer:
    """Saves a train_state as a rolling "latest", numbered checkpoints and a best one, in one run.

    Every ``save_every`` steps a "latest" checkpoint replaces the previous latest-only one; every
    ``checkpoint_every`` steps a numbered one is kept (the newest ``max_to_keep``; None or ``inf``
    keeps all); with ``keep_best``, :meth:`maybe_save_checkpoints` keeps the checkpoint with the best
    ``metric_name``. A checkpoint with several roles is one file, kept while any role keeps it; the
    newest checkpoint and the one a later experiment branched from are never deleted. ``prepare_fn``
    turns the train_state into what is saved. ``on_error`` (keyword-only, an addition): "warn"
    makes a failed save warn and return None, "raise" raises CheckpointSaveError. Saves are
    synchronous: a returned path is committed. Raises ConfigError for invalid arguments and
    RootLockedError when another writer holds ``checkpoint_dir``.
    """

    def __init__(
        self,
        registry_path: str,
        run_id: str,
        save_every: int = 300,
        checkpoint_every: int = 5000,
        max_to_keep: int | float | None = None,
        keep_best: bool = False,
        metric_name: str = "val/loss",
        minimize_metric: bool = True,
        prepare_fn: Callable[[Any], Any] | None = None,
        *,
        on_error: OnError = "warn",
    ) -> None:
        _check_arguments(registry_path, run_id, save_every, checkpoint_every, max_to_keep, prepare_fn)
        for name, flag in (("keep_best", keep_best), ("minimize_metric", minimize_metric)):
            _require(isinstance(flag, bool), f"{name} must be True or False, got {flag!r}")
        _require(
            isinstance(metric_name, str) and bool(metric_name),
            f"metric_name must be a non-empty metric name such as 'val/loss', got {metric_name!r}",
        )
        self.registry_path = str(Path(registry_path).expanduser().resolve())
        self.run_id = run_id
        self.checkpoint_dir = str(Path(self.registry_path) / run_id)
        self.save_every = save_every
        self.checkpoint_every = checkpoint_every
        self.max_to_keep = max_to_keep
        self.keep_best = keep_best
        self.metric_name = metric_name
        self.minimize_metric = minimize_metric
        self.prepare_fn = prepare_fn
        self._latest_policy = EveryNSteps(save_every)
        self._numbered_policy = EveryNSteps(checkpoint_every)
        self._ledger = Ledger()
        self._tree = TreeState()
        self._ledger.register_stateful(TREE_NAME, self._tree)
        config = CheckpointConfig(
            root_log_dir=self.checkpoint_dir,
            checkpoint_frequency=save_every,  # recorded only: this class decides when to save
            async_save=False,  # a returned path must name a committed file
            save_last=False,
            on_error=on_error,
        )
        self.system = AutomaticCheckpointSystem(config, ledger=self._ledger)
        best = self._best()
        recorded = None if best is None else best[1].metric(metric_name)
        self.best_metric_value: float = (
            recorded if recorded is not None else (math.inf if minimize_metric else -math.inf)
        )

    # -- deciding --------------------------------------------------------------------------------
    def should_save_latest(self, step: int) -> bool:
        """Whether ``step`` is a positive multiple of ``save_every``."""
        return self._latest_policy.should_save(check_step(step))

    def should_save_numbered(self, step: int) -> bool:
        """Whether ``step`` is a positive multiple of ``checkpoint_every``."""
        return self._numbered_policy.should_save(check_step(step))

    def _better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value < self.best_metric_value if self.minimize_metric else value > self.best_metric_value

    # -- saving ----------------------------------------------------------------------------------
    def save_checkpoint(
        self,
        train_state: Any,
        step: int | None = None,
        metrics: Mapping[str, float] | None = None,
        is_best: bool = False,
        suffix: str | None = None,
    ) -> str | None:
        """Save a numbered checkpoint (also the best with ``is_best``); returns its step file's path.

        ``step`` defaults to ``train_state["step"]`` (or its ``.step``); ``suffix`` becomes a tag of
        the checkpoint (file names are fixed: ``{hash}_step_{step:06d}.pt``). Returns None when the
        save failed with on_error="warn".
        """
        roles = ("numbered", "best") if is_best else ("numbered",)
        return self._save(train_state, step, metrics, roles, () if suffix is None else (suffix,))

    def save_latest(
        self, train_state: Any, step: int | None = None, metrics: Mapping[str, float] | None = None
    ) -> str | None:
        """Save the rolling "latest" checkpoint; returns its path (None if the save failed, on_error="warn")."""
        return self._save(train_state, step, metrics, ("latest",))

    def update_best_checkpoint(self, train_state: Any, metric_value: float, step: int | None = None) -> bool:
        """Save ``train_state`` as the best checkpoint if ``metric_value`` beats ``best_metric_value``.

        Returns True when a new best was saved; the previous best-only checkpoint is then deleted.
        """
        value = float(metric_value)
        if not self._better(value):
            return False
        return self._save(train_state, step, {self.metric_name: value}, ("best",)) is not None

    def maybe_save_checkpoints(
        self, train_state: Any, step: int, metrics: Mapping[str, float] | None = None
    ) -> dict[str, str]:
        """Save what ``step`` calls for (latest, numbered, and best with ``keep_best``), as one file.

        Returns ``{role: path}`` for each role saved (all the same path), ``{}`` when nothing was due
        or the save failed with on_error="warn".
        """
        roles = []
        if self.should_save_numbered(step):
            roles.append("numbered")
        value = None if not (self.keep_best and metrics) else metrics.get(self.metric_name)
        if value is not None and self._better(float(value)):
            roles.append("best")
        if self.should_save_latest(step):
            roles.append("latest")
        if not roles:
            return {}
        path = self._save(train_state, step, metrics, tuple(roles))
        return {} if path is None else dict.fromkeys(roles, path)

    def _save(
        self,
        train_state: Any,
        step: int | None,
        metrics: Mapping[str, Any] | None,
        roles: tuple[str, ...],
        extra_tags: tuple[str, ...] = (),
    ) -> str | None:
        state = self.prepare_fn(train_state) if self.prepare_fn is not None else train_state
        step = check_step(step_of(train_state, state) if step is None else step)
        tree, objects = split_train_state(state)
        self._register(objects)
        self._tree.tree = tree
        failures = self.system.failures
        manager = self.system.manager
        trigger = next(r for r in ROLES if r in roles)
        exp_hash = self.system.save(step, dict(metrics or {}), trigger=trigger, tags=[*roles, *extra_tags])
        entry = manager.manifest(exp_hash).entry(step)
        if self.system.failures > failures or entry is None:
            if entry is None and self.system.failures == failures:
                log.warning(
                    "weightslab: step %d of %s was saved and deleted earlier in this session; a step is "
                    "never saved twice, so nothing was saved",
                    step,
                    exp_hash,
                )
            return None
        # A step already saved (under another role) is not saved again: its one file takes the new
        # roles, and the metrics it lacks are merged into its entry (where best values are read).
        missing = [t for t in (*roles, *extra_tags) if t not in entry.tags]
        late = _unrecorded(entry.metrics, metrics or {})
        if missing or late:
            self.system.tag(step, *missing, exp_hash=exp_hash, metrics=late)
        if "best" in roles:
            recorded = entry.metric(self.metric_name)
            value = (metrics or {}).get(self.metric_name, recorded)
            if value is not None and not math.isnan(float(value)):
                self.best_metric_value = float(value)
        self._retain()
        return str(manager.experiment(exp_hash).resolve(entry.file))

    def _register(self, objects: Mapping[tuple[Kind, str], Any]) -> None:
        """Make the ledger hold exactly ``objects`` (and the tree); registers only what changed."""
        for kind in SECTIONS:
            for name, obj in self._ledger.items(kind).items():
                if obj is not self._tree and objects.get((kind, name)) is not obj:
                    self._ledger.unregister(kind, name)
        for (kind, name), obj in objects.items():
            if self._ledger.items(kind).get(name) is not obj:
                self._ledger.register(kind, name, obj)

    # -- retention -------------------------------------------------------------------------------
    def _best(self) -> Found | None:
        """The checkpoint marked best most recently (every later best was strictly better)."""
        marked = [(h, e) for h, e in all_entries(self.system.manager) if "best" in e.tags]
        return marked[-1] if marked else None

    def _retain(self) -> None:
        """Delete the checkpoints none of whose roles keeps them any more."""
        manager = self.system.manager
        found = all_entries(manager)
        keep: set[tuple[str, int]] = set()
        for h in manager.experiments():
            newest = manager.manifest(h).latest()
            keep |= {(h, s) for s in manager.branch_points(h)}
            if newest is not None:
                keep.add((h, newest.step))
        numbered = [(h, e.step) for h, e in found if "numbered" in e.tags]
        if self.max_to_keep is None or self.max_to_keep == math.inf:
            keep |= set(numbered)
        else:
            keep |= set(numbered[max(0, len(numbered) - int(self.max_to_keep)) :])
        best = self._best()
        if best is not None:
            keep.add((best[0], best[1].step))
        for h, entry in found:
            if set(entry.tags) & set(ROLES) and (h, entry.step) not in keep:
                try:
                    manager.delete(h, entry.step, reason="checkpointer")
                except UnsafePathError as exc:  # an edited manifest: keep it, say so, go on
                    log.error("weightslab: %s", exc)

    # -- loading ---------------------------------------------------------------------------------
    def _catalog(self) -> dict[str, Found]:
        """Every live checkpoint by name: ``latest``, ``best``, and ``step_{step}`` for each one."""
        manager = self.system.manager
        names: dict[str, Found] = {}
        newest = manager.last_active()
        candidates = latest_candidates(manager, newest) if newest is not None else []
        if candidates:
            names["latest"] = candidates[0]
        best = self._best()
        if best is not None:
            names["best"] = best
        for h, entry in sorted(all_entries(manager), key=lambda he: he[1].step):
            if not entry.abandoned:
                key = f"step_{entry.step}"
                names[key if key not in names else f"{key}@{h[:8]}"] = (h, entry)
        return names

    def list_available_checkpoints(self) -> dict[str, str]:
        """``{name: step file path}``: "latest", "best" (if marked) and "step_{step}" per checkpoint."""
        manager = self.system.manager
        return {k: str(manager.experiment(h).resolve(e.file)) for k, (h, e) in self._catalog().items()}

    def load_checkpoint(self, path_or_index: str | int) -> dict[str, Any]:
        """Load one checkpoint, verified: an int is a step, a str a name of
        :meth:`list_available_checkpoints` or the path of a step file of this run.

        Returns the train_state as saved, each object replaced by its state dict, plus "step" and
        "metrics" when the train_state has no such key. Raises CheckpointNotFoundError,
        CheckpointCorruptedError naming the file when its checksum does not match.
        """
        manager = self.system.manager
        catalog = self._catalog()
        if isinstance(path_or_index, str) and path_or_index in catalog:
            found = catalog[path_or_index]
        elif (
            isinstance(path_or_index, str) and not path_or_index.endswith(".pt") and "/" not in path_or_index
        ):
            raise CheckpointNotFoundError(
                f"{self.checkpoint_dir} has no checkpoint named {path_or_index!r}; available: "
                f"{', '.join(catalog) or 'none yet'} (or pass a step number or a step file's path)"
            )
        else:
            found = find_entry(manager, path_or_index)
        return self._as_train_state(manager.load_entry(*found), found)

    def load_latest(self) -> dict[str, Any] | None:
        """The newest checkpoint that verifies, as :meth:`load_checkpoint` returns it; None when there is none.

        A corrupt newest file is skipped for the one before it, as ``resume()`` does (logged and
        journalled as ``checkpoint_unreadable``); CheckpointNotFoundError when none verifies.
        """
        loaded = load_newest(self.system.manager)
        return None if loaded is None else self._as_train_state(*loaded)

    def load_best(self) -> dict[str, Any] | None:
        """The best checkpoint, verified; None when none was marked. Raises CheckpointCorruptedError."""
        best = self._best()
        return None if best is None else self._as_train_state(self.system.manager.load_entry(*best), best)

    def _as_train_state(self, data: Mapping[str, Any], found: Found) -> dict[str, Any]:
        saved = data.get("extra", {}).get(TREE_NAME)
        if saved is None:  # a step file not written by a Checkpointer: every object by name
            out = {k: v for section in SECTIONS.values() for k, v in data.get(section, {}).items()}
        else:
            tree = rebuild_train_state(saved.get("tree"), data)
            out = dict(tree) if isinstance(tree, Mapping) else {"state": tree}
        out.setdefault("step", int(data.get("step", found[1].step)))
        out.setdefault("metrics", dict(found[1].metrics))
        return out

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        """Release ``checkpoint_dir`` (its writer lock); idempotent. Also done at interpreter exit."""
        self.system.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unrecorded(recorded: Mapping[str, float | None], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The ``metrics`` an entry lacks or holds another value of (the save checked that they convert)."""
    late = {}
    for name, value in metrics.items():
        number = float(value)
        if name not in recorded or recorded[name] != (number if math.isfinite(number) else None):
            late[name] = value
    return late


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_arguments(
    registry_path: Any, run_id: Any, save_every: Any, checkpoint_every: Any, max_to_keep: Any, prepare_fn: Any
) -> None:
    """The Checkpointer's checks of its paths, intervals and retention; ConfigError naming the fix."""
    _require(
        isinstance(registry_path, (str, os.PathLike)) and bool(os.fspath(registry_path)),
        f"registry_path must be a non-empty folder path, got {registry_path!r}",
    )
    try:
        validate_name(run_id, "run_id")
    except InvalidNameError as exc:
        raise ConfigError(f"{exc} (run_id is a folder name under registry_path)") from None
    for name, value in (("save_every", save_every), ("checkpoint_every", checkpoint_every)):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        _require(ok, f"{name} must be an int >= 1 (steps between saves), got {value!r}")
    count = isinstance(max_to_keep, int) and not isinstance(max_to_keep, bool) and max_to_keep >= 1
    _require(
        max_to_keep is None or count or max_to_keep == math.inf,
        f"max_to_keep must be an int >= 1, or None / float('inf') to keep every numbered checkpoint, "
        f"got {max_to_keep!r}",
    )
    _require(
        prepare_fn is None or callable(prepare_fn),
        f"prepare_fn must be a function of the train_state, got {prepare_fn!r}",
    )
