"""When to save: small save-decision policies (in the style of Orbax's ``should_save``). No I/O here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class SavePolicy(Protocol):
    """Decides, from the step alone, whether a training step is a save step."""

    def should_save(self, step: int) -> bool: ...


@dataclass(frozen=True)
class EveryNSteps:
    """Save at every positive multiple of ``n`` (step 0 is the untrained state: never a save step)."""

    n: int

    def __post_init__(self) -> None:
        if type(self.n) is not int or self.n < 1:
            raise ValueError(f"EveryNSteps needs an int n >= 1, got {self.n!r}")

    def should_save(self, step: int) -> bool:
        """True at every positive multiple of ``n``; called on every step, so kept to one expression."""
        return step > 0 and step % self.n == 0


@dataclass(frozen=True)
class EveryNEpochs:
    """Save at the end of every ``n``-th epoch; ``epoch`` is the 0-based index of the epoch that ended."""

    n: int

    def __post_init__(self) -> None:
        if type(self.n) is not int or self.n < 1:
            raise ValueError(f"EveryNEpochs needs an int n >= 1, got {self.n!r}")

    def should_save(self, epoch: int) -> bool:
        """True after epochs n-1, 2n-1, ... (the n-th, 2n-th... epoch to end), as Lightning counts them."""
        return (epoch + 1) % self.n == 0


class EveryNSeconds:
    """Due once ``seconds`` have passed since it was started or last restarted (a save of any kind).

    The clock is injected (``time.monotonic`` in the system), so the policy is tested without waiting.
    """

    def __init__(self, seconds: float, clock: Callable[[], float]) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError(f"EveryNSeconds needs a positive number of seconds, got {seconds!r}")
        self.seconds = float(seconds)
        self._clock = clock
        self._since = clock()

    def due(self) -> bool:
        """True when the interval has passed since the last restart."""
        return self._clock() - self._since >= self.seconds

    def restart(self) -> None:
        """Count the interval again from now (called after every save)."""
        self._since = self._clock()
