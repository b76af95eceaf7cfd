"""The older import path of live hyperparameter files; the code lives in modules named after it.

:mod:`~weightslab.registry.watcher` (the watchdog watcher and write-back), :mod:`~weightslab.registry.yamlcheck`
(checking an edit), :mod:`~weightslab.registry.yamlfile` (reading and rendering the YAML) and
:mod:`~weightslab.registry.reactions` (:func:`apply_lr_changes`). Kept because the package's
``__init__`` and user code import these names from here.
"""

from __future__ import annotations

from weightslab.registry.reactions import apply_lr_changes
from weightslab.registry.watcher import HyperparamsWatcher, stop_all_watchers, write_back
from weightslab.registry.yamlcheck import Rejection, parse_edit
from weightslab.registry.yamlfile import render_yaml

__all__ = [
    "HyperparamsWatcher",
    "Rejection",
    "apply_lr_changes",
    "parse_edit",
    "render_yaml",
    "stop_all_watchers",
    "write_back",
]
