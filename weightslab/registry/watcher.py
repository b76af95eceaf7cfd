"""Live hyperparameter files: edits of a watched YAML file reach the running training.

``register_hyperparams("config", "train.yaml", watch=True)`` starts a :class:`HyperparamsWatcher`.
It watches the file's folder with a ``watchdog`` observer (inotify, FSEvents, ... never polling),
so editors that save by renaming a temporary file over the original are seen like in-place writes.
A burst of events is coalesced; then the file is parsed with ``yaml.safe_load`` and, when valid,
applied to the registered dict in place through the ledger's ``update_hyperparams`` (listeners hear
the changed keys, the checkpoint system records a config change at its next step). An invalid
edit changes nothing: it is logged with file, line and reason and reported to the ledger as a
``rejected`` event, which the checkpoint system journals.

The watcher knows the ledger only as a :class:`HyperparamsHost`; the ledger imports this module.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from weightslab.registry.events import Kind, LedgerEvent
from weightslab.registry.yamlcheck import Rejection, parse_edit
from weightslab.registry.yamlfile import read_bytes, render_yaml, same, write_file
from weightslab.storage.local import LocalStorage

if TYPE_CHECKING:
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers.api import BaseObserver

log = logging.getLogger("weightslab")


# Events that can mean new content. Opened/closed-without-write (our own reads among them) and
# attribute changes (touch, chmod) cannot, and reacting to them would make reading loop forever.
_CONTENT_EVENTS = frozenset({"created", "modified", "moved", "deleted", "closed"})

_live: weakref.WeakSet[HyperparamsWatcher] = weakref.WeakSet()
_live_lock = threading.Lock()


class HyperparamsHost(Protocol):
    """What a watcher needs of the ledger holding its set (the ledger's own methods, by name).

    A protocol, so that this module does not import the ledger: the ledger starts watchers, and
    watchers report to it through these three calls only.
    """

    def get(self, kind: Kind, name: str | None = None) -> Any:
        """The registered set (called with ``"hyperparams"``)."""

    def update_hyperparams(
        self, name: str, values: Mapping[str, Any], *, source: str | None = None
    ) -> tuple[str, ...]:
        """Apply valid new values in place; returns the changed keys."""

    def notify(self, event: LedgerEvent) -> None:
        """Tell the ledger's listeners about a rejected edit."""


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
        ledger: HyperparamsHost,
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
        data = read_bytes(self.path)
        loaded = None if data is None else parse_edit(data)
        if not isinstance(loaded, dict) or not same(loaded, self.ledger.get("hyperparams", self.name)):
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
            if read_bytes(self.path) == data:
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
            if read_bytes(self.path) != data:
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
                data = read_bytes(self.path)
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
    return write_file(path, values)


__all__ = ["HyperparamsHost", "HyperparamsWatcher", "stop_all_watchers", "write_back"]
