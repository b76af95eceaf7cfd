"""Branch names that name a checkpoint, in the styles research groups publish.

- Pythia: ``step143000``
- OLMo: ``step1000-tokens4B`` (OLMo 2 adds a stage: ``stage1-step1000-tokens5B``)
- DataDecide: ``step69369-seed-default``

A local weightslab root uses ``<exp_hash[:8]>-step<step>``, which parses the same way (the hash is
the prefix).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BRANCH_RE = re.compile(
    r"^(?:(?P<prefix>stage\d+|[0-9a-f]{16}|[0-9a-f]{8})-)?"
    r"step(?P<step>\d+)"
    r"(?:-tokens(?P<tokens>\d+(?:\.\d+)?)(?P<unit>[KMBT])?)?"
    r"(?:-seed-(?P<seed>[A-Za-z0-9_.\-]+))?$"
)
_UNITS = {None: 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


@dataclass(frozen=True, kw_only=True)
class BranchName:
    """What a checkpoint branch name says: its step, and the tokens seen or the seed when present."""

    name: str
    step: int
    tokens: int | None = None
    tokens_label: str | None = None
    """The tokens as written in the name (``"4B"``)."""
    seed: str | None = None
    prefix: str | None = None
    """Text before ``-step``: an OLMo 2 stage (``stage1``), or the experiment hash of a local checkpoint."""


def parse_branch_name(name: str) -> BranchName | None:
    """Parse ``name`` if it names a checkpoint step; ``None`` for anything else (``main``, ``v1.0``, ...)."""
    m = _BRANCH_RE.match(name)
    if m is None:
        return None
    tokens: int | None = None
    label: str | None = None
    if m["tokens"] is not None:
        label = m["tokens"] + (m["unit"] or "")
        tokens = round(float(m["tokens"]) * _UNITS[m["unit"]])
    return BranchName(
        name=name, step=int(m["step"]), tokens=tokens, tokens_label=label, seed=m["seed"], prefix=m["prefix"]
    )


def local_branch_name(exp_hash: str, step: int, *, hash_chars: int = 8) -> str:
    """The branch name of a local checkpoint: ``<exp_hash[:hash_chars]>-step<step>``."""
    return f"{exp_hash[:hash_chars]}-step{step}"
