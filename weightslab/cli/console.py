"""A picture of a checkpoint root in the terminal, drawn with ``rich``.

``show(root)`` prints the experiments table and the lineage tree; :func:`print_summary`,
:func:`print_checkpoints` and :func:`print_tree` print one part each and take a root path or an open
:class:`CheckpointManager` (the checkpoint system passes its own). The ``weightslab`` command renders
through the same functions. Nothing here configures logging unless asked: call
:func:`enable_rich_logging` to see the library's log lines through a rich handler.

This module holds the one-experiment view and is the entry point for callers; the tables
(:mod:`~weightslab.cli.tables`), the tree (:mod:`~weightslab.cli.tree`), the consoles
(:mod:`~weightslab.cli.output`), the progress bar (:mod:`~weightslab.cli.progress_bar`), rich logging
(:mod:`~weightslab.cli.rich_logging`) and the value formats (:mod:`~weightslab.cli.formatting`) live in
modules of their own and are re-exported here.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from weightslab.cli.formatting import (
    Source,
    format_size,
    format_time,
    format_value,
    manager_of,
    new_table,
    parent_text,
    plural,
)
from weightslab.cli.output import make_console
from weightslab.cli.progress_bar import RichTracker
from weightslab.cli.rich_logging import disable_rich_logging, enable_rich_logging
from weightslab.cli.tables import checkpoints_table, experiments_table, print_checkpoints, print_summary
from weightslab.cli.tree import lineage_tree, print_tree
from weightslab.errors import ConfigFileError
from weightslab.inspect.experiments import (
    describe_policy,
    experiment_info,
    policy_from,
)
from weightslab.inspect.overview import architecture_summary


# -- one experiment ---------------------------------------------------------------------------------
def print_experiment(source: Source, exp_hash: str, *, console: Console | None = None) -> None:
    """Print one experiment: its record, checkpoints, architecture summary and configuration.

    The trainable counts are those of the newest checkpoint (a freeze does not start a new
    experiment). When the config file cannot be read, everything else is printed, with a note where
    the config would be, and then ConfigFileError (naming the file) is raised.
    """
    manager = manager_of(source)
    console = console or make_console()
    h = manager.resolve_hash(exp_hash)
    info = experiment_info(manager, h, active=manager.last_active())
    m = manager.manifest(h)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row(
        "experiment", Text(h, style="cyan") + (Text("  * active", "bold green") if info.active else "")
    )
    grid.add_row(
        "parent",
        "-" if m.parent is None else parent_text(m.parent),
    )
    grid.add_row("created", format_time(m.created))
    grid.add_row("size", f"{format_size(info.size_bytes)} in {plural(info.checkpoints, 'checkpoint')}")
    grid.add_row("retention", describe_policy(policy_from(m.retention)))
    if info.best is not None:
        grid.add_row(f"best {info.best.monitor}", f"{format_value(info.best.value)} at step {info.best.step}")
    grid.add_row("hashes", f"architecture {m.architecture_hash}, hyperparameters {m.hyperparams_hash}")
    console.print(grid)
    console.print()
    print_checkpoints(manager, h, console=console)
    console.print()
    models = architecture_summary(manager, h)
    console.print("[bold]architecture[/]" + ("" if models else ": not recorded"))
    for model in models:
        at = "" if model.trainable_step is None else f" at step {model.trainable_step}"
        console.print(
            f"model [cyan]{escape(repr(model.name))}[/]: {escape(model.class_name)}, "
            f"{plural(model.total, 'parameter')} ({model.trainable:,} trainable{at})",
            soft_wrap=True,
        )
        console.print(Text(model.text, style="dim"), soft_wrap=True)
    console.print()
    try:
        config = manager.read_config(h)
    except ConfigFileError as exc:
        console.print(f"[bold]config[/]: [red]cannot be read[/]: {escape(exc.reason)}", soft_wrap=True)
        raise
    console.print("[bold]config[/]" + ("" if config else ": none recorded"))
    if config:
        import yaml  # only here: `ls` and the tables do not need it

        console.print(
            Text(yaml.safe_dump(config, sort_keys=True, allow_unicode=True).rstrip()), soft_wrap=True
        )


def show(root: Source, exp_hash: str | None = None, *, console: Console | None = None) -> None:
    """Print a root at a glance: the experiments table and the lineage tree.

    With ``exp_hash`` (a prefix works), print that experiment in detail instead.
    """
    manager = manager_of(root)
    console = console or make_console()
    if exp_hash is not None:
        print_experiment(manager, exp_hash, console=console)
        return
    print_summary(manager, console=console)
    if manager.experiments():
        console.print()
        print_tree(manager, console=console)


__all__ = [
    "RichTracker",
    "checkpoints_table",
    "disable_rich_logging",
    "enable_rich_logging",
    "experiments_table",
    "lineage_tree",
    "make_console",
    "new_table",
    "plural",
    "print_checkpoints",
    "print_experiment",
    "print_summary",
    "print_tree",
    "show",
]
