"""When to save: small save-decision policies (in the style of Orbax's ``should_save``). No I/O here."""

from __future__ import annotations

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
