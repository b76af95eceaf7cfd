"""Deleting a checkpoint's file without waiting for it: renamed aside at once, unlinked in the background.

Unlinking a step file of 1 GB takes about 0.2 s on a local disk (the kernel frees its page cache and
its extents), and retention deletes one on every save of a ``keep_last`` run: a save with
``async_save=False`` waited for it, and an async writer was held up by it before the next save. A
checkpoint is deleted when its manifest entry goes (the commit); the file is then only garbage. So
the :class:`Reaper` renames it to a temporary name in the same folder (microseconds: a later save of
the same step writes its own file under the real name, untouched) and a background thread unlinks
it. A crash before the unlink leaves a temporary file, which the next writer's open removes with the
other crash leftovers. :meth:`Reaper.drain` waits for the pending unlinks (the manager's ``close``).
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path

from weightslab.storage.local import LocalStorage

log = logging.getLogger("weightslab")


class Reaper:
    """Unlinks the files of deleted checkpoints on one background thread, in the order given."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[LocalStorage, Path]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def discard(self, storage: LocalStorage, path: Path) -> None:
        """Take ``path`` out of the way now (rename) and unlink it in the background."""
        try:
            aside = storage.rename_aside(path)
        except OSError:
            storage.remove(path)  # cannot be renamed (permissions, a read-only folder): as before
            return
        if aside is None:
            return
        self._jobs.put((storage, aside))
        with self._start:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="weightslab-delete", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            storage, path = self._jobs.get()
            try:
                storage.remove(path)  # unlink, then the folder fsynced when durable
            except OSError as exc:  # left for the next writer's open, which removes crash leftovers
                log.warning("weightslab: could not remove %s (%s); the next writer removes it", path, exc)
            finally:
                self._jobs.task_done()

    def drain(self) -> None:
        """Wait until every file handed over so far is unlinked."""
        self._jobs.join()


__all__ = ["Reaper"]
