"""How the ``weightslab`` command prints the results of verify, diff, gc and export.

The pictures shared with Python users (experiments, checkpoints, lineage) live in
:mod:`weightslab.cli.console`; these are the command's own reports, in the same style.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from weightslab.cli.formatting import format_size, format_value, new_table, plural
from weightslab.cli.output import make_console
from weightslab.inspect.diff import ExperimentDiff, LayerChange
from weightslab.inspect.gc import GcResult
from weightslab.store.verify import VerifyReport

if TYPE_CHECKING:  # export imports torch and safetensors: only `weightslab export` loads it
    from weightslab.inspect.export import ExportResult


def print_verify(report: VerifyReport, root: Path, *, console: Console | None = None) -> None:
    """Print a verify report: one line when all is well, else a table of what is wrong."""
    console = console or make_console()
    if report.healthy:
        console.print(
            f"[bold green]OK[/]: {plural(report.checked, 'checkpoint')} verified, no problems", soft_wrap=True
        )
        return
    table = new_table()
    table.add_column("problem", style="red", no_wrap=True)
    table.add_column("experiment", style="cyan", no_wrap=True)
    table.add_column("step", justify="right", no_wrap=True)
    table.add_column("file", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for p in report.problems:
        table.add_row(
            p.kind, p.exp_hash[:8], "-" if p.step is None else str(p.step), Path(p.path).name, p.detail
        )
    console.print(table)
    counts: dict[str, int] = {}
    for p in report.problems:
        counts[p.kind] = counts.get(p.kind, 0) + 1
    listed = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    verb = "verifies" if report.checked == 1 else "verify"
    console.print(
        f"[bold red]{plural(len(report.problems), 'problem')}[/] ({listed}); "
        f"{report.ok} of {plural(report.checked, 'checkpoint')} {verb}",
        soft_wrap=True,
    )


def print_diff(diff: ExperimentDiff, *, console: Console | None = None) -> None:
    """Print the hyperparameter and architecture differences between two experiments."""
    console = console or make_console()
    console.print(f"[cyan]{diff.a}[/] -> [cyan]{diff.b}[/]")
    if diff.identical:
        console.print("no differences in hyperparameters or architecture")
        return
    if diff.hyperparams:
        table = new_table(title="hyperparameters", title_justify="left", title_style="bold")
        table.add_column("key", overflow="fold")
        table.add_column("old", overflow="fold")
        table.add_column("new", overflow="fold")
        for c in diff.hyperparams:
            old = (
                Text("(absent)", style="dim")
                if c.change == "added"
                else Text(format_value(c.old), style="red")
            )
            new = (
                Text("(absent)", style="dim")
                if c.change == "removed"
                else Text(format_value(c.new), style="green")
            )
            table.add_row(c.key, old, new)
        console.print(table)
    elif diff.config_errors:  # each names its file; the command prints them as its error
        console.print("hyperparameters: [red]not compared[/], a config file cannot be read")
    else:
        console.print("hyperparameters: no changes")
    if diff.architecture:
        table = new_table(
            title=f"architecture (from {diff.architecture_source})", title_justify="left", title_style="bold"
        )
        table.add_column("layer", style="cyan", overflow="fold")
        table.add_column("change", no_wrap=True)
        table.add_column("old", overflow="fold")
        table.add_column("new", overflow="fold")
        for layer in diff.architecture:
            table.add_row(
                layer.qualified, layer.change, _tensors_text(layer, "old"), _tensors_text(layer, "new")
            )
        console.print(table)
    else:
        console.print("architecture: no changes")


def _tensors_text(layer: LayerChange, side: str) -> str:
    tensors = layer.old if side == "old" else layer.new
    if not tensors:
        return "-"
    if layer.change != "retyped":  # the dtype matters only when it is what changed
        return ", ".join(f"{name} {desc.split(' ')[0]}" for name, desc in tensors.items())
    return ", ".join(f"{name} {desc}" for name, desc in tensors.items())


def print_gc(result: GcResult, *, console: Console | None = None) -> None:
    """Print what gc removed (or, for a dry run, would remove) and the space freed."""
    console = console or make_console()
    verb = "would remove" if result.dry_run else "removed"
    if result.items:
        table = new_table()
        table.add_column("kind", no_wrap=True)
        table.add_column("experiment", style="cyan", no_wrap=True)
        table.add_column("step", justify="right", no_wrap=True)
        table.add_column("file", no_wrap=True)
        table.add_column("size", justify="right", no_wrap=True)
        table.add_column("why", overflow="fold")
        for i in result.items:
            step = "-" if i.step is None else str(i.step)
            table.add_row(i.kind, i.exp_hash[:8], step, Path(i.path).name, format_size(i.bytes), i.reason)
        console.print(table)
    pruned: dict[str, list[str]] = {}
    for h in dict.fromkeys(i.exp_hash for i in result.items if i.kind == "checkpoint"):
        pruned.setdefault(result.policies.get(h, "?"), []).append(h[:8])
    for policy, hashes in pruned.items():
        console.print(f"retention of {', '.join(hashes)}: {policy}", soft_wrap=True)
    checkpoints = sum(1 for i in result.items if i.kind == "checkpoint")
    leftovers = len(result.items) - checkpoints
    freed = "would free" if result.dry_run else "freed"
    if result.items:
        console.print(
            f"{verb} {plural(checkpoints, 'checkpoint')} and {plural(leftovers, 'leftover')}: "
            f"{freed} {format_size(result.freed_bytes)}",
            soft_wrap=True,
        )
    else:
        console.print("nothing to remove: every checkpoint is kept by its retention policy, no leftovers")
    for h in result.rebuilt:  # its manifest was lost or unreadable
        verb_rebuild = "would rebuild" if result.dry_run else "rebuilt"
        console.print(
            f"[yellow]{verb_rebuild}[/] the manifest of {h} from its step files that verify", soft_wrap=True
        )
    for note in result.skipped:
        console.print(f"[yellow]skipped[/] {escape(note)}", soft_wrap=True)
    for note in result.refused:  # never deleted: the manifest entry names something else
        console.print(f"[bold red]refused[/] {escape(note)}", soft_wrap=True)
    if result.dry_run:
        console.print("dry run: nothing was removed")


def print_export(result: ExportResult, *, console: Console | None = None) -> None:
    """Print what export wrote."""
    console = console or make_console()
    console.print(
        f"exported [cyan]{result.exp_hash}[/] step {result.step} ({result.format}) to {escape(str(result.directory))}",
        soft_wrap=True,
    )
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column(justify="right", style="dim", no_wrap=True)
    for p in result.files:
        grid.add_row(f"  {p.name}", format_size(p.stat().st_size))
    console.print(grid)
    for model, aliases in result.tied.items():
        pairs = ", ".join(f"{alias} = {orig}" for alias, orig in aliases.items())
        console.print(f"  tied weights in {escape(model)} written as copies: {escape(pairs)}")
    for model, names in result.pruned.items():
        console.print(
            f"  pruned weights in {escape(model)} written as <name> = <name>_orig * <name>_mask: "
            f"{escape(', '.join(names))}",
            soft_wrap=True,
        )
    for note in result.notes:
        console.print(f"  [yellow]note[/]: {escape(note)}", soft_wrap=True)


__all__ = ["print_diff", "print_export", "print_gc", "print_verify"]
