"""SIGTERM/SIGINT handling: the handler only raises a flag that the next step boundary acts on."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any

from weightslab.errors import ConfigError


class SignalTrap:
    """Installs handlers for SIGTERM and SIGINT that record the signal; restores the previous ones."""

    def __init__(self) -> None:
        self.signal: int | None = None  # read on every step: a plain attribute, no lock
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Take over SIGTERM and SIGINT; ConfigError outside the main thread (Python delivers signals there)."""
        if threading.current_thread() is not threading.main_thread():
            raise ConfigError(
                "handle_signals=True must be set from the main thread (Python delivers signals there); "
                "build the checkpoint system in the main thread or leave handle_signals off"
            )
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        """Put the previous handlers back (no-op when none were installed)."""
        for sig, previous in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):  # not the main thread, or at shutdown
                signal.signal(sig, previous)
        self._previous = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only a flag here: saving inside a signal handler could interrupt a save already running.
        if self.signal is not None:
            os._exit(128 + signum)  # a second signal: the user insists
        self.signal = signum
