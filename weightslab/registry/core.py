"""The :class:`Ledger`: registries of models, optimizers, schedulers, hyperparameters and stateful objects.

Build your own ``Ledger()`` for isolated use (tests, two runs in one process); the process-wide one
and the module-level functions are in :mod:`weightslab.registry.ledger`. All methods are thread-safe.
Listeners hear every registration, removal and hyperparameter update. A hyperparameter set loaded
from a YAML file is written back to it on ``set_hyperparam`` and, with ``watch=True``, follows its edits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

import torch

from weightslab.errors import HyperparamsError
from weightslab.registry.events import KINDS, Kind, LedgerEvent, Listener, changed_keys
from weightslab.registry.watcher import HyperparamsWatcher, write_back
from weightslab.registry.wrappers import unwrap
from weightslab.registry.yamlfile import load_yaml_mapping
from weightslab.util.canonical import canonicalize, replace_mapping, restore_like
from weightslab.util.names import validate_name

if TYPE_CHECKING:
    pass

log = logging.getLogger("weightslab")
T = TypeVar("T")


def _is_stateful(obj: object) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def _check_type(kind: Kind, obj: object) -> None:
    if kind == "model" and not isinstance(obj, torch.nn.Module):
        raise TypeError(f"register_model expects a torch.nn.Module, got {type(obj).__name__}")
    if kind == "optimizer" and not isinstance(obj, torch.optim.Optimizer):
        raise TypeError(f"register_optimizer expects a torch.optim.Optimizer, got {type(obj).__name__}")
    if kind in ("scheduler", "stateful") and not _is_stateful(obj):
        raise TypeError(
            f"register_{kind} expects an object with state_dict() and load_state_dict(), "
            f"got {type(obj).__name__}"
        )


class Ledger:
    """Registries of models, optimizers, schedulers, hyperparameters and other stateful objects."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._items: dict[Kind, dict[str, Any]] = {k: {} for k in KINDS}
        self._sources: dict[str, Path] = {}
        self._listeners: list[Listener] = []
        self._watchers: dict[str, Any] = {}
        self._version = 0

    # -- generic -------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """Increases on every registration, removal and hyperparameter update."""
        return self._version

    def register(self, kind: Kind, name: str, obj: object) -> None:
        """Register ``obj`` under ``name``; replaces an object of the same kind and name."""
        if kind not in KINDS:
            raise ValueError(f"unknown ledger kind {kind!r}; expected one of {', '.join(KINDS)}")
        validate_name(name, f"{kind} name")
        _check_type(kind, obj)
        if kind == "model":
            obj = unwrap(obj)  # type: ignore[arg-type]  # checked above: a Module
        with self._lock:
            self._items[kind][name] = obj
            self._version += 1
        self._notify(LedgerEvent(kind, name, "register"))

    def unregister(self, kind: Kind, name: str) -> None:
        with self._lock:
            if name not in self._items[kind]:
                raise KeyError(f"no {kind} named {name!r} is registered; registered: {self.list(kind)}")
            del self._items[kind][name]
            if kind == "hyperparams":
                self._sources.pop(name, None)
            self._version += 1
        if kind == "hyperparams":
            self.stop_watcher(name)
        self._notify(LedgerEvent(kind, name, "unregister"))

    def get(self, kind: Kind, name: str | None = None) -> Any:
        """The object registered under ``name``; with no name, the only one of its kind."""
        with self._lock:
            items = self._items[kind]
            if name is None:
                if len(items) == 1:
                    return next(iter(items.values()))
                if kind in items:
                    return items[kind]
                raise KeyError(
                    f"{len(items)} {kind} objects are registered ({sorted(items)}); pass the name to get"
                )
            try:
                return items[name]
            except KeyError:
                raise KeyError(
                    f"no {kind} named {name!r} is registered; registered: {sorted(items)}"
                ) from None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold every registration and hyperparameter update (from any thread) until the block ends."""
        with self._lock:
            yield

    def list(self, kind: Kind) -> list[str]:
        with self._lock:
            return sorted(self._items[kind])

    def items(self, kind: Kind) -> dict[str, Any]:
        """A snapshot ``{name: object}`` of one kind, in registration order."""
        with self._lock:
            return dict(self._items[kind])

    def clear(self) -> None:
        """Forget everything registered and stop file watchers (listeners stay)."""
        self.stop_watchers()
        with self._lock:
            for items in self._items.values():
                items.clear()
            self._sources.clear()
            self._version += 1

    # -- listeners -----------------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` on every change; returns a function that removes it."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def notify(self, event: LedgerEvent) -> None:
        """Tell the listeners about ``event`` (used by file watchers for rejected edits)."""
        self._notify(event)

    def _notify(self, event: LedgerEvent) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # a user callback must not break registration
                log.exception("weightslab: ledger listener %r failed on %s", listener, event)

    # -- typed conveniences --------------------------------------------------------------------
    def _split(self, kind: Kind, name_or_obj: Any, obj: Any) -> tuple[str, Any]:
        if obj is None:
            if isinstance(name_or_obj, str):
                raise TypeError(f"register_{kind}({name_or_obj!r}) is missing the object to register")
            return kind, name_or_obj
        return name_or_obj, obj

    def register_model(self, name_or_obj: str | torch.nn.Module, obj: torch.nn.Module | None = None) -> str:
        name, model = self._split("model", name_or_obj, obj)
        self.register("model", name, model)
        return name

    def register_optimizer(self, name_or_obj: Any, obj: Any = None) -> str:
        name, opt = self._split("optimizer", name_or_obj, obj)
        self.register("optimizer", name, opt)
        return name

    def register_scheduler(self, name_or_obj: Any, obj: Any = None) -> str:
        name, sched = self._split("scheduler", name_or_obj, obj)
        self.register("scheduler", name, sched)
        return name

    def register_stateful(self, name: str, obj: Any) -> str:
        """Register any object with ``state_dict()``/``load_state_dict()`` (saved under ``extra``)."""
        self.register("stateful", name, obj)
        return name

    @overload
    def register_hyperparams(
        self, name_or_obj: str, obj: str | os.PathLike[str], *, watch: bool = False, check_types: bool = False
    ) -> dict[str, Any]: ...
    @overload
    def register_hyperparams(
        self, name_or_obj: str, obj: T, *, watch: bool = False, check_types: bool = False
    ) -> T: ...
    @overload
    def register_hyperparams(
        self, name_or_obj: Any, obj: None = None, *, watch: bool = False, check_types: bool = False
    ) -> Any: ...

    def register_hyperparams(
        self, name_or_obj: Any, obj: Any = None, *, watch: bool = False, check_types: bool = False
    ) -> Any:
        """Register a mapping, a dataclass instance, or the path of a YAML file of hyperparameters.

        Returns the registered object: the mapping or dataclass itself (training code keeps reading
        and writing it), or for a file a new dict loaded with ``yaml.safe_load``. ``watch=True``
        (files only) applies valid edits of the file to that dict while training runs;
        ``check_types=True`` rejects edits that change a value's type.
        Raises TypeError for other types and HyperparamsError for values that cannot be serialised.
        """
        if obj is None and isinstance(name_or_obj, str) and not _looks_like_yaml(name_or_obj):
            raise TypeError(f"register_hyperparams({name_or_obj!r}) is missing the hyperparameters")
        name, hp = ("hyperparams", name_or_obj) if obj is None else (name_or_obj, obj)
        source: Path | None = None
        if isinstance(hp, (str, os.PathLike)):
            source = Path(hp)
            hp = load_yaml_mapping(source)
        elif not (isinstance(hp, Mapping) or (dataclasses.is_dataclass(hp) and not isinstance(hp, type))):
            raise TypeError(
                "register_hyperparams expects a mapping, a dataclass instance or the path of a YAML "
                f"file, got {type(hp).__name__}"
            )
        if watch and source is None:
            raise ValueError(
                "watch=True needs the path of a YAML file: register_hyperparams(name, 'train.yaml', watch=True)"
            )
        canonicalize(hp, name)  # refuse what cannot be serialised now, not at the first save
        self.stop_watcher(name)
        with self._lock:
            if source is not None:
                self._sources[name] = source.resolve()
            else:
                self._sources.pop(name, None)
        self.register("hyperparams", name, hp)
        if watch and source is not None:
            watcher = HyperparamsWatcher(self, name, source.resolve(), check_types=check_types)
            watcher.start()
            with self._lock:
                self._watchers[name] = watcher
        return hp

    def stop_watcher(self, name: str) -> None:
        """Stop watching the file of hyperparameter set ``name`` (no-op if not watched)."""
        with self._lock:
            watcher = self._watchers.pop(name, None)
        if watcher is not None:
            watcher.stop()

    def stop_watchers(self) -> None:
        """Stop every file watcher; their threads are joined before this returns."""
        with self._lock:
            names = list(self._watchers)
        for name in names:
            self.stop_watcher(name)

    def watcher(self, name: str) -> Any:
        """The :class:`~weightslab.registry.watch.HyperparamsWatcher` of set ``name``, or None."""
        with self._lock:
            return self._watchers.get(name)

    def hyperparams_source(self, name: str) -> Path | None:
        """The YAML file a hyperparameter set was loaded from, if any."""
        with self._lock:
            return self._sources.get(name)

    def set_hyperparam(self, key: str, value: Any, name: str | None = None) -> None:
        """Set a (dotted) key of a registered hyperparameter set and tell the listeners.

        ``name`` picks the set; without it, the only set, or the set named by the key's first part.
        A set loaded from a YAML file is written back to it atomically (a watcher ignores that write).
        Raises HyperparamsError when the write-back fails (the value is set in memory all the same).
        """
        with self._lock:
            sets = self._items["hyperparams"]
            if name is None:
                head = key.split(".", 1)[0]
                if len(sets) == 1:
                    name = next(iter(sets))
                elif head in sets and "." in key:
                    name, key = head, key.split(".", 1)[1]
                else:
                    raise KeyError(
                        f"set_hyperparam({key!r}) is ambiguous: hyperparameter sets {sorted(sets)} are "
                        "registered; pass name=... or prefix the key with the set name"
                    )
            hp = self.get("hyperparams", name)
            canonicalize(value, key)
            before = canonicalize(hp)
            _set_path(hp, key.split("."), value)
            keys = changed_keys(before, canonicalize(hp))
            self._version += 1
            source = self._sources.get(name)
            watcher = self._watchers.get(name)
        failure: OSError | None = None
        if source is not None:
            try:
                write_back(source, hp, watcher)
            except OSError as exc:  # the update stands; listeners still hear it, then the caller
                failure = exc
        self._notify(LedgerEvent("hyperparams", name, "update", keys or (key,)))
        if failure is not None:
            raise HyperparamsError(
                f"{name}.{key} was set to {value!r} in memory, but writing it back to {source} failed: "
                f"{failure}; fix the file's permissions or free disk space, then set it again"
            ) from failure

    def on_hyperparams_change(
        self, callback: Callable[[str, tuple[str, ...], Mapping[str, Any]], None]
    ) -> Callable[[], None]:
        """Call ``callback(name, keys, values)`` after every hyperparameter update; returns a remover.

        ``keys`` are the changed dotted key paths of set ``name`` and ``values`` the registered set
        itself (a mapping, or the dataclass instance). Updates come from file edits (on the watcher's thread),
        ``set_hyperparam`` and resume; registrations and rejected edits are not reported.
        """

        def listener(event: LedgerEvent) -> None:
            if event.kind == "hyperparams" and event.action == "update":
                with self._lock:
                    values = self._items["hyperparams"].get(event.name)
                if values is not None:
                    callback(event.name, event.keys, values)

        return self.add_listener(listener)

    def update_hyperparams(
        self, name: str, values: Mapping[str, Any], *, source: str | None = None
    ) -> tuple[str, ...]:
        """Replace the contents of a registered set in place (same object); returns changed keys.

        ``source`` names where the values came from (a watched file), for listeners and the journal.
        """
        with self._lock:
            hp = self.get("hyperparams", name)
            before = canonicalize(hp)
            if isinstance(hp, MutableMapping):
                replace_mapping(hp, values)
            else:
                restore_like(hp, values)
            keys = changed_keys(before, canonicalize(hp))
            if keys:
                self._version += 1
        if keys:
            self._notify(LedgerEvent("hyperparams", name, "update", keys, source=source))
        return keys


def _set_path(hp: Any, parts: list[str], value: Any) -> None:
    target = hp
    for i, part in enumerate(parts[:-1]):
        nxt = target.get(part) if isinstance(target, Mapping) else getattr(target, part, None)
        if nxt is None:
            if not isinstance(target, MutableMapping):
                raise KeyError(f"hyperparameter {'.'.join(parts[: i + 1])!r} does not exist")
            nxt = target[part] = {}
        target = nxt
    last = parts[-1]
    if isinstance(target, MutableMapping):
        target[last] = value
    elif dataclasses.is_dataclass(target):
        if last not in {f.name for f in dataclasses.fields(target)}:
            raise KeyError(f"hyperparameter {'.'.join(parts)!r} is not a field of {type(target).__name__}")
        setattr(target, last, value)
    else:
        raise TypeError(f"cannot set {'.'.join(parts)!r} on a {type(target).__name__}")


def _looks_like_yaml(s: str) -> bool:
    return s.endswith((".yaml", ".yml")) or os.sep in s


__all__ = ["Ledger"]
