"""The files of an experiment besides its step files: hyperparameter YAML and architecture files.

They are written once, when the experiment is created (before its manifest, so a crash leaves a
folder without a manifest: a leftover), and read back by ``show``, ``diff`` and resume.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from weightslab.errors import CheckpointCorruptedError, ConfigFileError
from weightslab.format.architecture import (
    ARCHITECTURE_SUMMARY_FORMAT,
    architecture_json,
    architecture_record,
    meta_copy,
    render_architecture_text,
)
from weightslab.format.layout import ExperimentLayout
from weightslab.format.manifest import FileRecord
from weightslab.storage.base import Storage

if TYPE_CHECKING:  # imported where used: the read-only commands import this module, never torch
    import torch

log = logging.getLogger("weightslab")


def config_yaml(exp_hash: str, hyperparams: Mapping[str, Any]) -> bytes:
    """The bytes of ``hp/{hash}_config.yaml``."""
    doc = {"format": "weightslab.config/1", "exp_hash": exp_hash, "hyperparams": dict(hyperparams)}
    import yaml  # here: listing a root (weightslab ls) never reads or writes a config file

    return yaml.safe_dump(doc, sort_keys=True, allow_unicode=True).encode()


def write_architecture_summary(
    storage: Storage, exp: ExperimentLayout, models: Mapping[str, torch.nn.Module]
) -> None:
    """``model/{hash}_architecture.json`` (the record) and the ``.txt`` rendered from it, for people."""
    record = architecture_record(models)
    storage.write_bytes_atomic(exp.architecture_json, architecture_json(record))
    storage.write_bytes_atomic(exp.architecture_text, render_architecture_text(record).encode())


def read_architecture_summary(storage: Storage, exp: ExperimentLayout) -> dict[str, Any] | None:
    """The record of ``model/{hash}_architecture.json``; None when the root predates it or it is unreadable.

    Only a display reads it, so a damaged file means "not recorded" (logged), never an error.
    """
    try:
        record = json.loads(storage.read_bytes(exp.architecture_json))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("weightslab: %s cannot be read (%s); showing no architecture", exp.architecture_json, exc)
        return None
    if not isinstance(record, dict) or record.get("format") != ARCHITECTURE_SUMMARY_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        log.warning(
            "weightslab: %s is not a %s record (found %r); showing no architecture",
            exp.architecture_json,
            ARCHITECTURE_SUMMARY_FORMAT,
            found,
        )
        return None
    return record


def write_architecture_pickle(
    storage: Storage,
    exp: ExperimentLayout,
    models: Mapping[str, torch.nn.Module],
    on_failure: Callable[[Exception], None],
) -> FileRecord | None:
    """The module structure with parameters on the meta device; None (after ``on_failure``) if it cannot be pickled."""
    import torch

    try:
        skeletons = {name: meta_copy(model) for name, model in models.items()}
        buf = io.BytesIO()
        torch.save({"format": "weightslab.architecture/1", "models": skeletons}, buf)
    except Exception as exc:  # an unpicklable model loses only this convenience file
        on_failure(exc)
        return None
    written = storage.write_bytes_atomic(exp.architecture_pickle, buf.getvalue())
    return FileRecord(exp.relative(exp.architecture_pickle), written.bytes, written.xxh3_128)


def load_architecture_pickle(
    storage: Storage, exp: ExperimentLayout, record: FileRecord | None
) -> dict[str, torch.nn.Module]:
    """Unpickle the architecture file (the caller checked trust and presence), verified when recorded."""
    path = exp.architecture_pickle
    if record is not None:  # older roots did not record it
        size, digest = storage.checksum(path)
        if (size, digest) != (record.bytes, record.xxh3_128):
            raise CheckpointCorruptedError(path, record.xxh3_128, digest, "the architecture pickle changed")
    import torch

    data = torch.load(storage.local_file(path), weights_only=False, map_location="meta")
    return dict(data["models"])


def read_config(storage: Storage, exp: ExperimentLayout) -> dict[str, Any]:
    """The hyperparameters in ``hp/{hash}_config.yaml``; see :meth:`CheckpointManager.read_config`."""
    path = exp.config_yaml
    try:
        raw = storage.read_bytes(path)
    except FileNotFoundError:
        raise ConfigFileError(path, "the file is missing") from None
    except OSError as exc:
        raise ConfigFileError(path, f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(
            path, f"it is not valid UTF-8 (byte {exc.start} is {raw[exc.start]:#04x})"
        ) from None
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        raise ConfigFileError(
            path, f"it holds a YAML tag that safe loading refuses ({exc.problem}); nothing in it was run"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigFileError(path, f"it is not valid YAML ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise ConfigFileError(path, "it is nested too deeply to read") from None
    if data is None:  # an empty file
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(path, f"it holds a {type(data).__name__}, expected a mapping")
    hyperparams = data.get("hyperparams")
    if hyperparams is None:
        return {}
    if not isinstance(hyperparams, dict):
        raise ConfigFileError(
            path, f"its hyperparams are a {type(hyperparams).__name__}, expected a mapping of sets"
        )
    return dict(hyperparams)
