"""Live hyperparameter files: edits of a watched YAML file reach the running training.

``register_hyperparams("config", "train.yaml", watch=True)`` starts a :class:`HyperparamsWatcher`.
It watches the file's folder with a ``watchdog`` observer (inotify, FSEvents, ... never polling),
so editors that save by renaming a temporary file over the original are seen like in-place writes.
A burst of events is coalesced; then the file is parsed with ``yaml.safe_load`` and, when valid,
applied to the registered dict in place through :meth:`Ledger.update_hyperparams` (listeners hear
the changed keys, the checkpoint system records a config change at its next step). An invalid
edit changes nothing: it is logged with file, line and reason and reported to the ledger as a
``rejected`` event, which the checkpoint system journals.

:func:`write_back` writes ``set_hyperparam`` changes back to the file (atomically, keeping comments
where it can) and :func:`apply_lr_changes` is the ready-made reaction that applies a changed
learning rate to the registered optimizer.
"""

from __future__ import annotations

import atexit
import dataclasses
import enum
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from weightslab.errors import HyperparamsError
from weightslab.registry.ledger import Ledger, LedgerEvent, get_ledger
from weightslab.storage.local import LocalStorage
from weightslab.util.canonical import canonicalize

if TYPE_CHECKING:
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers.api import BaseObserver

log = logging.getLogger("weightslab")

# Events that can mean new content. Opened/closed-without-write (our own reads among them) and
# attribute changes (touch, chmod) cannot, and reacting to them would make reading loop forever.
_CONTENT_EVENTS = frozenset({"created", "modified", "moved", "deleted", "closed"})

_live: weakref.WeakSet[HyperparamsWatcher] = weakref.WeakSet()
_live_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Rejection:
    """Why an edit of a watched file was not applied; ``line`` is 1-based, None when unknown."""

    reason: str
    line: int | None = None

    def describe(self) -> str:
        return self.reason if self.line is None else f"line {self.line}: {self.reason}"


class HyperparamsWatcher:
    """Applies valid edits of one YAML file to the hyperparameter set registered from it.

    Built and started by ``Ledger.register_hyperparams(name, path, watch=True)``; stopped by
    ``Ledger.stop_watcher(name)``, ``stop_watchers()``, the checkpoint system's ``close()`` or at
    interpreter exit.

    Args:
        ledger: the ledger holding the set.
        name: the name of the hyperparameter set.
        path: the YAML file (resolved; its folder is what the observer watches).
        check_types: reject an edit that changes the type of an existing value (``lr: 1e-3``,
            which YAML reads as a string, instead of ``lr: 1.0e-3``). A key that was null takes any type.
        debounce: seconds without a new event that end a burst of events. Where the observer
            reports closes (inotify), a write in place ends with the writer's close instead.
        max_delay: seconds after a burst's first event by which the file is read whatever follows.
        settle: seconds an invalid read waits for more events before it counts as rejected (an
            editor writing in place may be caught half-way).
    """

    def __init__(
        self,
        ledger: Ledger,
        name: str,
        path: str | os.PathLike[str],
        *,
        check_types: bool = False,
        debounce: float = 0.1,
        max_delay: float = 0.5,
        settle: float = 0.3,
    ) -> None:
        for label, value in (("debounce", debounce), ("max_delay", max_delay), ("settle", settle)):
            if not 0 <= value <= 1.0:
                raise ValueError(
                    f"{label} must be between 0 and 1 second (edits must show within 2 s), got {value}"
                )
        self.ledger = ledger
        self.name = name
        self.path = Path(path)
        self.check_types = check_types
        self.debounce = debounce
        self.max_delay = max_delay
        self.settle = settle
        self.applied = 0
        self.rejected = 0
        self._target = os.path.normcase(os.path.abspath(self.path))
        self._lock = threading.RLock()  # applying an edit and writing back never interleave
        self._cond = threading.Condition(threading.Lock())  # the event flags below
        self._dirty = False
        self._first_event = 0.0
        self._last_event = 0.0
        self._stopping = False
        self._writing = False  # a write in place was seen and its close was not, yet
        self._close_events = False  # the observer reports closes (inotify): wait for them
        self._last_bytes: bytes | None = None
        self._missing = False
        self._observer: BaseObserver | None = None
        self._worker: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._worker is not None and not self._stopping

    def start(self) -> None:
        """Start watching. An edit made since the file was loaded is applied right away.

        Raises OSError when the folder cannot be watched (for example the inotify watch limit).
        """
        from watchdog.observers import Observer  # watchdog is imported only when a file is watched

        with self._cond:
            if self._worker is not None:
                raise RuntimeError(f"the watcher of {self.path} was already started")
            self._stopping = False
        observer = Observer()
        observer.name = f"weightslab-watch[{self.name}]-observer"
        try:
            observer.schedule(_make_handler(self), str(self.path.parent), recursive=False)
            observer.start()
        except OSError as exc:
            _stop_observer(observer)
            raise OSError(
                exc.errno,
                f"cannot watch {self.path.parent} for edits of {self.path.name}: {exc.strerror or exc}; "
                "on Linux raise fs.inotify.max_user_watches / max_user_instances, or register the "
                "file with watch=False",
            ) from exc
        self._observer = observer
        self._close_events = type(observer).__name__.startswith("Inotify")
        # The baseline is taken on this thread, after the observer started: a set_hyperparam right
        # after registering must not race with a first read, and an edit made since loading counts.
        data = _read(self.path)
        loaded = None if data is None else parse_edit(data)
        if not isinstance(loaded, dict) or not _same(loaded, self.ledger.get("hyperparams", self.name)):
            with self._cond:
                now = time.monotonic()
                self._dirty, self._first_event, self._last_event = True, now, now - self.debounce
        else:
            self._last_bytes = data
        worker = threading.Thread(target=self._run, name=f"weightslab-watch[{self.name}]", daemon=True)
        self._worker = worker
        worker.start()
        with _live_lock:
            _live.add(self)
        log.debug("weightslab: watching %s for hyperparameter set %r", self.path, self.name)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the observer and the worker and join their threads. Idempotent.

        Safe to call from a hyperparameter-change callback (the worker then ends when it returns).
        """
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        observer, self._observer = self._observer, None
        if observer is not None:
            _stop_observer(observer, timeout)
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)
            if worker.is_alive():
                log.warning(
                    "weightslab: the watcher thread of %s did not stop within %.0fs", self.path, timeout
                )
        with _live_lock:
            _live.discard(self)

    def write_back(self, values: Mapping[str, Any]) -> bool:
        """Write ``values`` to the watched file atomically; the watcher does not re-apply it.

        Returns False when the file already holds exactly that. Raises OSError when writing fails.
        """
        with self._lock:
            data = render_yaml(values, self.path)
            if _read(self.path) == data:
                self._last_bytes = data
                return False
            LocalStorage().write_bytes_atomic(self.path, data)
            # the events of our own rename arrive later and find this content: nothing to apply
            self._last_bytes = data
            return True

    # -- the observer's thread ------------------------------------------------------------------
    def on_fs_event(self, event: FileSystemEvent) -> None:
        """Note a file-system event in the watched folder (called on the observer's thread)."""
        if event.is_directory or event.event_type not in _CONTENT_EVENTS:
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        if not any(p and os.path.normcase(os.path.abspath(os.fsdecode(p))) == self._target for p in paths):
            return
        with self._cond:
            now = time.monotonic()
            if not self._dirty:
                self._dirty, self._first_event = True, now
            self._last_event = now
            if event.event_type == "modified":
                self._writing = True
            elif event.event_type in ("closed", "moved", "deleted"):
                self._writing = False
            self._cond.notify_all()

    # -- the worker thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while self._wait_for_burst():
            try:
                self._process()
            except Exception:  # the watcher must outlive one bad edit or one failing listener
                log.exception("weightslab: applying an edit of %s failed; still watching", self.path)

    def _wait_for_burst(self) -> bool:
        """Block until a burst of events has ended (or ``max_delay`` passed); False when stopping."""
        with self._cond:
            while not self._dirty and not self._stopping:
                self._cond.wait()
            while not self._stopping:
                now = time.monotonic()
                latest = self._first_event + self.max_delay
                # a writer that still holds the file open may pause mid-write: wait for its close
                quiet = latest if self._writing and self._close_events else self._last_event + self.debounce
                deadline = min(quiet, latest)
                if now >= deadline:
                    break
                self._cond.wait(deadline - now)
            self._dirty = False
            return not self._stopping

    def _more_events_within(self, seconds: float) -> bool:
        with self._cond:
            deadline = time.monotonic() + seconds
            while not self._dirty and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _process(self) -> None:
        bad = self._apply_current()
        if bad is None:
            return
        data, rejection = bad
        if self._more_events_within(self.settle):
            return  # the editor is still writing; the next burst reads the file again
        with self._lock:
            if _read(self.path) != data:
                return  # changed again (its events are on the way)
            self._last_bytes = data
            self.rejected += 1
            log.warning(
                "weightslab: rejected the edit of %s, %s; hyperparameter set %r keeps its values, "
                "the next valid edit is applied",
                self.path,
                rejection.describe(),
                self.name,
            )
            self.ledger.notify(
                LedgerEvent(
                    "hyperparams", self.name, "rejected", detail=rejection.describe(), source=str(self.path)
                )
            )

    def _apply_current(self) -> tuple[bytes, Rejection] | None:
        """Apply the file as it is now; return its bytes and why when it is invalid."""
        with self._lock:
            try:
                data = _read(self.path)
            except OSError as exc:
                log.warning("weightslab: cannot read %s (%s); keeping the current values", self.path, exc)
                return None
            if data is None:
                if not self._missing:
                    self._missing = True
                    log.info("weightslab: %s is gone; keeping the values until it is back", self.path)
                return None
            self._missing = False
            if data == self._last_bytes:
                return None
            result = parse_edit(data, self.ledger.get("hyperparams", self.name), check_types=self.check_types)
            if isinstance(result, Rejection):
                return data, result
            self._last_bytes = data
            keys = self.ledger.update_hyperparams(self.name, result, source=str(self.path))
            if keys:
                self.applied += 1
                log.info(
                    "weightslab: applied the edit of %s to hyperparameter set %r: %s",
                    self.path,
                    self.name,
                    ", ".join(keys),
                )
            return None


def _make_handler(watcher: HyperparamsWatcher) -> FileSystemEventHandler:
    from watchdog.events import FileSystemEventHandler

    class _Handler(FileSystemEventHandler):
        def dispatch(self, event: FileSystemEvent) -> None:
            watcher.on_fs_event(event)

    return _Handler()


def _stop_observer(observer: BaseObserver, timeout: float = 10.0) -> None:
    """Stop an observer, its emitters and its inotify reader, and join them."""
    observer.stop()  # also stops and joins the emitters and the inotify reader thread
    if observer.is_alive() and observer is not threading.current_thread():
        observer.join(timeout)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


@atexit.register
def stop_all_watchers() -> None:
    """Stop every running watcher of this process (also runs at interpreter exit)."""
    with _live_lock:
        watchers = list(_live)
    for watcher in watchers:
        try:
            watcher.stop(timeout=2.0)
        except Exception as exc:  # at exit there is nobody left to raise to
            log.error("weightslab: stopping the watcher of %s failed: %s", watcher.path, exc)


# -- parsing and checking an edit -------------------------------------------------------------------
def parse_edit(
    data: bytes | str, current: Any = None, *, check_types: bool = False
) -> dict[str, Any] | Rejection:
    """Parse the new content of a hyperparameter file, or say why it must not be applied.

    ``current`` is the set as registered now; with ``check_types`` a value whose type differs from
    its current value is refused. Valid content is a mapping (an empty file is not: it is what an
    editor leaves half-way through a save) whose values hashing and checkpoints can hold.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Rejection(
                f"not UTF-8 text ({exc.reason} at byte {exc.start})", data.count(b"\n", 0, exc.start) + 1
            )
    else:
        text = data
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        reason = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
        if "!!python" in text or "tag:yaml.org,2002:python" in str(exc):
            reason += "; Python tags are never loaded"
        return Rejection(reason, None if mark is None else mark.line + 1)
    if loaded is None:
        return Rejection("the file is empty; it must hold a mapping of keys to values")
    if not isinstance(loaded, dict):
        return Rejection(
            f"the file holds a {_kind(loaded)} ({_short(loaded)}), not a mapping of keys to values",
            _line_of(text, ()),
        )
    bad = _unserialisable(loaded, ())
    if bad is not None:
        where, problem = bad
        return Rejection(problem, _line_of(text, where))
    if check_types and current is not None:
        change = _type_change(_as_tree(current), loaded, ())
        if change is not None:
            where, old, new = change
            hint = "; write floats with a dot (1.0e-4, not 1e-4)" if _kind(old) == "float" else ""
            return Rejection(
                f"{_dotted(where)} was {_kind(old)} ({_short(old)}), the edit makes it {_kind(new)} "
                f"({_short(new)}); type checking is on{hint}",
                _line_of(text, where),
            )
    return loaded


def _as_tree(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return value


def _kind(value: Any) -> str:
    """The YAML kind of a value, the unit of type checking (tuples are lists, enums their value)."""
    if isinstance(value, enum.Enum):
        return _kind(value.value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, (str, os.PathLike)):
        return "str"
    if isinstance(value, Mapping) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        return "mapping"
    if isinstance(value, (list, tuple)):
        return "list"
    item = getattr(value, "item", None)
    if callable(item) and tuple(getattr(value, "shape", (1,))) == ():
        return _kind(item())
    return type(value).__name__


def _type_change(
    old: Any, new: Any, where: tuple[str | int, ...]
) -> tuple[tuple[str | int, ...], Any, Any] | None:
    """The first key present before and after whose kind changed (a key that was null takes any)."""
    old = _as_tree(old)
    if old is None:
        return None
    if _kind(old) != _kind(new):
        return where, old, new
    if isinstance(old, Mapping):
        for key, value in new.items():
            if key in old:
                change = _type_change(old[key], value, (*where, key))
                if change is not None:
                    return change
    return None


def _unserialisable(value: Any, where: tuple[str | int, ...]) -> tuple[tuple[str | int, ...], str] | None:
    """The first value that hashing cannot hold (YAML dates, sets, ...), with the reason."""
    if isinstance(value, dict):
        for key, item in value.items():
            bad = _unserialisable(item, (*where, key))
            if bad is not None:
                return bad
        try:
            canonicalize({k: None for k in value}, _dotted(where))
        except HyperparamsError as exc:
            return where, str(exc)
        return None
    if isinstance(value, list):
        for i, item in enumerate(value):
            bad = _unserialisable(item, (*where, i))
            if bad is not None:
                return bad
        return None
    try:
        canonicalize(value, _dotted(where))
    except HyperparamsError as exc:
        return where, f"{str(exc).split(';')[0]}; quote it to make it a string"
    return None


def _dotted(where: tuple[str | int, ...]) -> str:
    out = ""
    for part in where:
        if isinstance(part, int) and not isinstance(part, bool) and out:
            out += f"[{part}]"  # a list index
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _line_of(text: str, where: tuple[str | int, ...]) -> int | None:
    """The 1-based line where the value at key path ``where`` starts, if it can be found."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    if node is None:
        return None
    line = node.start_mark.line
    for part in where:
        if isinstance(node, yaml.MappingNode):
            match = next(
                ((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)),
                None,
            )
            if match is None:
                break
            line, node = match[0].start_mark.line, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line
        else:
            break
    return line + 1


# -- writing back ---------------------------------------------------------------------------------
def write_back(
    path: str | os.PathLike[str], values: Mapping[str, Any], watcher: HyperparamsWatcher | None = None
) -> bool:
    """Write a hyperparameter set back to the YAML file it came from, atomically.

    Only the values that changed are rewritten in the text when that is possible, so comments and
    layout stay; otherwise the file is replaced with ``yaml.safe_dump`` of ``values`` (comments
    lost). ``watcher`` (the file's, if watched) is told so that it does not apply our own write.
    Returns False when the file already held exactly that. Raises OSError when writing fails.
    """
    if watcher is not None:
        return watcher.write_back(values)
    target = Path(path)
    data = render_yaml(values, target)
    if _read(target) == data:
        return False
    LocalStorage().write_bytes_atomic(target, data)
    return True


def render_yaml(values: Mapping[str, Any], path: str | os.PathLike[str] | None = None) -> bytes:
    """The YAML text (UTF-8) to write for ``values``.

    That is the file at ``path`` with only the changed scalars replaced, when that reads back as
    ``values``; otherwise a fresh ``yaml.safe_dump`` with the keys in their order.
    """
    plain = _plain(values)
    if path is not None:
        try:
            old = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            old = None
        if old is not None:
            patched = _patch_scalars(old, plain)
            if patched is not None:
                return patched.encode("utf-8")
    return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True, default_flow_style=False).encode(
        "utf-8"
    )


def _plain(value: Any) -> Any:
    """Builtins that ``yaml.safe_dump`` writes and ``yaml.safe_load`` reads back to the same values."""
    value = _as_tree(value)
    if isinstance(value, Mapping):
        return {k if isinstance(k, (str, int)) else str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return float(value)  # nan and inf too (canonical form would make them strings)
    return canonicalize(value)


def _same(a: Any, b: Any) -> bool:
    try:
        return canonicalize(a) == canonicalize(b)
    except HyperparamsError:
        return False


def _patch_scalars(text: str, new: dict[str, Any]) -> str | None:
    """``text`` with the changed scalar values replaced in place, or None when that cannot work."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        old = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(node, yaml.MappingNode) or not isinstance(old, dict):
        return None
    edits: list[tuple[int, int, str]] = []
    if not _collect_edits(node, old, new, edits):
        return None
    for start, end, replacement in sorted(edits, reverse=True):
        if replacement and start > 0 and text[start - 1] == ":":
            replacement = " " + replacement
        text = text[:start] + replacement + text[end:]
    try:
        return text if _same(yaml.safe_load(text), new) else None
    except yaml.YAMLError:
        return None


def _collect_edits(
    node: yaml.MappingNode, old: dict[Any, Any], new: dict[Any, Any], edits: list[tuple[int, int, str]]
) -> bool:
    # the same keys in the same order, and no merge keys or duplicates (then nodes pair with items)
    if list(old) != list(new) or len(node.value) != len(old):
        return False
    for (_, value_node), key in zip(node.value, old, strict=True):
        before, after = old[key], new[key]
        if _same(before, after):
            continue
        if isinstance(value_node, yaml.MappingNode) and isinstance(before, dict) and isinstance(after, dict):
            if not _collect_edits(value_node, before, after, edits):
                return False
        elif (
            isinstance(value_node, yaml.ScalarNode)
            and value_node.style not in ("|", ">")
            and not isinstance(after, (dict, list))
        ):
            edits.append((value_node.start_mark.index, value_node.end_mark.index, _scalar_text(after)))
        else:
            return False
    return True


def _scalar_text(value: Any) -> str:
    dumped = yaml.safe_dump([value], default_flow_style=True, width=1 << 30, allow_unicode=True).strip()
    return dumped[1:-1]  # inside "[...]": the value as a flow scalar, quoted when it must be


# -- reactions ------------------------------------------------------------------------------------
def apply_lr_changes(
    key: str = "lr",
    optimizer: torch.optim.Optimizer | str | None = None,
    *,
    name: str | None = None,
    ledger: Ledger | None = None,
) -> Callable[[], None]:
    """React to changes of a learning-rate hyperparameter by setting it on an optimizer's param groups.

    So that editing ``lr`` in a watched file (or ``set_hyperparam("lr", ...)``) really changes
    training. Returns a function that removes the reaction.

    Args:
        key: dotted key of the learning rate inside its set ("lr", "optimizer.lr"); the set's name
            may lead it ("config.lr").
        optimizer: the optimizer, the name it is registered under, or None for the only registered
            optimizer (looked up at each change, so it may be registered later).
        name: react to this hyperparameter set only (default: any set with that key).
        ledger: the ledger to listen to (default: the global one).

    A value that is not a finite number >= 0 is logged and not applied. An LR scheduler that
    computes from its ``base_lrs`` (LambdaLR, OneCycleLR) overrides the new value at its next
    step; update the scheduler in your own ``on_hyperparams_change`` callback in that case.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must be a non-empty dotted key such as 'lr' or 'optimizer.lr', got {key!r}")
    if optimizer is not None and not isinstance(optimizer, (str, torch.optim.Optimizer)):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, its registered name or None, got {type(optimizer).__name__}"
        )
    led = ledger if ledger is not None else get_ledger()

    def react(set_name: str, keys: tuple[str, ...], values: Mapping[str, Any]) -> None:
        if name is not None and set_name != name:
            return
        inner = key[len(set_name) + 1 :] if key not in keys and key.startswith(set_name + ".") else key
        if inner not in keys:
            return
        found, value = _lookup(values, inner.split("."))
        if not found:
            log.warning(
                "weightslab: %s.%s was removed; the optimizer keeps its learning rate", set_name, inner
            )
            return
        lr = _as_lr(value)
        if lr is None:
            log.warning(
                "weightslab: %s.%s = %r is not a finite number >= 0; the optimizer keeps its learning rate",
                set_name,
                inner,
                value,
            )
            return
        opt = optimizer if isinstance(optimizer, torch.optim.Optimizer) else led.get("optimizer", optimizer)
        for group in opt.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)  # capturable/fused optimizers keep lr as a tensor
            else:
                group["lr"] = lr
        log.info("weightslab: learning rate set to %g from %s.%s", lr, set_name, inner)

    return led.on_hyperparams_change(react)


def _lookup(values: Any, parts: list[str]) -> tuple[bool, Any]:
    node = values
    for part in parts:
        if isinstance(node, Mapping):
            if part not in node:
                return False, None
            node = node[part]
        elif dataclasses.is_dataclass(node) and hasattr(node, part):
            node = getattr(node, part)
        else:
            return False, None
    return True, node


def _as_lr(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    try:
        lr = float(value)
    except (TypeError, ValueError):
        return None
    return lr if math.isfinite(lr) and lr >= 0 else None


__all__ = [
    "HyperparamsWatcher",
    "Rejection",
    "apply_lr_changes",
    "parse_edit",
    "render_yaml",
    "stop_all_watchers",
    "write_back",
]
