"""The lineage tree of ``weightslab tree``: how the experiments of a root branched."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from weightslab.cli.formatting import (
    Source,
    manager_of,
    plural,
)
from weightslab.cli.output import (
    make_console,
)
from weightslab.inspect.experiments import (
    experiment_infos,
)
from weightslab.inspect.lineage import LineageNode, lineage


# -- lineage ----------------------------------------------------------------------------------------
def lineage_tree(nodes: list[LineageNode], label: str) -> Tree:
    """A rich Tree: each experiment under the one it branched from, with the step and reason."""
    tree = Tree(Text(label, style="bold"), guide_style="dim")

    def add(parent: Tree, node: LineageNode) -> None:
        info = node.info
        text = Text()
        if info.parent is not None:
            at = "" if info.parent.step is None else f" at step {info.parent.step}"
            text.append(f"{info.parent.reason}{at} -> ", style="yellow")
        text.append(info.exp_hash, style="cyan")
        latest = "" if info.latest_step is None else f", latest step {info.latest_step}"
        abandoned = f", {info.abandoned} abandoned" if info.abandoned else ""
        text.append(f"  ({plural(info.checkpoints, 'checkpoint')}{latest}{abandoned})", style="dim")
        if info.error is not None:
            text.append("  manifest unreadable", style="red")
        if info.active:
            text.append("  * active", style="bold green")
        branch = parent.add(text)
        for r in node.returns:
            at = "" if r.step is None else f" at step {r.step}"
            branch.add(Text(f"returned here from {r.previous[:8]}{at} ({r.reason})", style="dim"))
        for child in node.children:
            add(branch, child)

    for node in nodes:
        add(tree, node)
    return tree


def print_tree(source: Source, *, active: str | None = None, console: Console | None = None) -> None:
    """Print how the experiments of a root branched (a rich Tree)."""
    manager = manager_of(source)
    console = console or make_console()
    nodes = lineage(manager, experiment_infos(manager, active=active))
    if not nodes:
        console.print("no experiments yet: nothing has been saved under this root")
        return
    console.print(lineage_tree(nodes, str(manager.root)))


__all__ = ["lineage_tree", "print_tree"]
