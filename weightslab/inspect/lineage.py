"""The lineage of a root: each experiment under the one it branched from, and returns to it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from weightslab.inspect.experiments import ExperimentInfo, experiment_infos
from weightslab.store.manager import CheckpointManager


@dataclass(frozen=True)
class Return:
    """A run came back to an existing experiment (for example after undoing a config change)."""

    previous: str
    step: int | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"previous": self.previous, "step": self.step, "reason": self.reason}


@dataclass
class LineageNode:
    """An experiment in the lineage forest, with the experiments that branched from it."""

    info: ExperimentInfo
    children: list[LineageNode] = field(default_factory=list)
    returns: list[Return] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        parent = self.info.parent
        return {
            "exp_hash": self.info.exp_hash,
            "parent": None if parent is None else parent.exp_hash,
            "step": None if parent is None else parent.step,
            "reason": None if parent is None else parent.reason,
            "checkpoints": self.info.checkpoints,
            "abandoned": self.info.abandoned,
            "latest_step": self.info.latest_step,
            "active": self.info.active,
            "returns": [r.to_dict() for r in self.returns],
            "children": [c.to_dict() for c in self.children],
        }


# -- lineage ----------------------------------------------------------------------------------------
def lineage(manager: CheckpointManager, infos: list[ExperimentInfo] | None = None) -> list[LineageNode]:
    """The experiments as a forest: each under the experiment it branched from, oldest first.

    An experiment whose parent is not in the root (deleted, or a copied folder) is a root of the
    forest. Returns to an existing experiment are read from the journal.
    """
    if infos is None:
        infos = experiment_infos(manager)
    nodes = {i.exp_hash: LineageNode(i) for i in infos}
    for event in manager.events():
        if event.get("event") != "experiment_activated":
            continue
        node = nodes.get(str(event.get("exp_hash")))
        previous = event.get("previous")
        if node is not None and isinstance(previous, str):
            step = event.get("step")
            node.returns.append(
                Return(previous, step if isinstance(step, int) else None, str(event.get("reason") or ""))
            )
    roots: list[LineageNode] = []
    for info in infos:
        parent = info.parent
        if parent is not None and parent.exp_hash in nodes and not _creates_cycle(nodes, info.exp_hash):
            nodes[parent.exp_hash].children.append(nodes[info.exp_hash])
        else:
            roots.append(nodes[info.exp_hash])
    return roots


def _creates_cycle(nodes: Mapping[str, LineageNode], exp_hash: str) -> bool:
    """True if following parents from ``exp_hash`` comes back to it (only a hand-edited root can)."""
    seen = {exp_hash}
    parent = nodes[exp_hash].info.parent
    while parent is not None and parent.exp_hash in nodes:
        if parent.exp_hash in seen:
            return True
        seen.add(parent.exp_hash)
        parent = nodes[parent.exp_hash].info.parent
    return False


__all__ = ["LineageNode", "Return", "lineage"]
