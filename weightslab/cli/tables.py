"""The experiments and checkpoints tables of ``weightslab ls`` and ``weightslab show``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from weightslab.cli.formats import EXPERIMENT_COLUMNS
from weightslab.cli.formatting import (
    Source,
    format_age,
    format_metrics,
    format_parent,
    format_size,
    format_time,
    format_value,
    manager_of,
    new_table,
    plural,
    resolve_experiment,
)
from weightslab.cli.output import (
    make_console,
)
from weightslab.cli.plain_table import Column, render_plain
from weightslab.inspect.checkpoints import CheckpointInfo, checkpoint_infos
from weightslab.inspect.experiments import (
    ExperimentInfo,
    Mode,
    describe_policy,
    experiment_infos,
    policy_from,
)
from weightslab.policy.retention import RetentionPolicy


# -- experiments ------------------------------------------------------------------------------------
def experiments_cells(infos: list[ExperimentInfo]) -> tuple[list[str], list[list[str | Text]]]:
    """The headers and the rows of the experiments table, as rich prints them."""
    monitors = {i.best.monitor for i in infos if i.best is not None}
    best_header = f"best\n{monitors.pop()}" if len(monitors) == 1 else "best"
    headers = [best_header if name == "best" else name for name, _ in EXPERIMENT_COLUMNS]
    rows: list[list[str | Text]] = []
    for i in infos:
        name = Text("* ", style="bold green") if i.active else Text("  ")
        name.append(i.exp_hash, style="cyan")
        if i.error is not None:
            # the reason is long; `weightslab verify` and --json give it in full
            rows.append([name, Text("manifest unreadable", style="red"), "", "", "", "", ""])
            continue
        best = "-"
        if i.best is not None:
            best = f"{format_value(i.best.value)} @{i.best.step}"
            best += "" if best_header != "best" else f" {i.best.monitor}"
        rows.append(
            [
                name,
                format_parent(i),
                format_time(i.created),
                str(i.checkpoints),
                "-" if i.latest_step is None else str(i.latest_step),
                best,
                format_size(i.size_bytes),
            ]
        )
    return headers, rows


def experiments_table(infos: list[ExperimentInfo]) -> Table:
    """The table of ``weightslab ls``: one row per experiment, the active one marked ``*``."""
    return _experiments_table(*experiments_cells(infos))


def _experiments_table(headers: list[str], rows: Sequence[Sequence[str | Text]]) -> Table:
    table = new_table()
    for header, (_, options) in zip(headers, EXPERIMENT_COLUMNS, strict=True):
        table.add_column(header, **options)
    for row in rows:
        table.add_row(*row)
    return table


def _print_experiments(console: Console, infos: list[ExperimentInfo]) -> None:
    """The experiments table: laid out here when the output carries no style, else by rich."""
    headers, rows = experiments_cells(infos)
    columns = [Column(**options) for _, options in EXPERIMENT_COLUMNS]
    text = render_plain(console, headers, columns, rows, lambda some: _experiments_table(headers, some))
    if text is None:
        console.print(_experiments_table(headers, rows))
    else:
        console.out(text, end="", highlight=False)  # through the console: its capture, its lock


def print_summary(
    source: Source,
    *,
    active: str | None = None,
    monitor: str | None = None,
    mode: Mode | None = None,
    console: Console | None = None,
) -> None:
    """Print the experiments of a root: hash, parent and reason, created, checkpoints, latest step,
    best metric and size on disk; the active experiment is marked ``*``.

    ``active`` defaults to the experiment the journal says was active last; ``monitor``/``mode`` pick
    the best-metric column (default: the monitor each experiment's retention records).
    Raises RootError when ``source`` is not a root.
    """
    manager = manager_of(source)
    console = console or make_console()
    infos = experiment_infos(manager, active=active, monitor=monitor, mode=mode)
    total = sum(i.size_bytes for i in infos)
    console.print(
        f"[bold]{escape(str(manager.root))}[/]: {plural(len(infos), 'experiment')}, "
        f"{plural(sum(i.checkpoints for i in infos), 'checkpoint')}, {format_size(total)}",
        soft_wrap=True,
    )
    if not infos:
        console.print("no experiments yet: nothing has been saved under this root")
        return
    _print_experiments(console, infos)
    current = next((i for i in infos if i.active), None)
    if current is not None:
        console.print(f"[bold green]*[/] active: {current.exp_hash}")


# -- checkpoints ------------------------------------------------------------------------------------
def checkpoints_table(infos: list[CheckpointInfo], *, now: float | None = None) -> Table:
    """Step, trigger, metrics, size, age and why retention keeps each checkpoint."""
    table = new_table()
    table.add_column("step", justify="right", no_wrap=True)
    table.add_column("trigger", no_wrap=True)
    table.add_column("metrics", overflow="fold", ratio=1)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("age", justify="right", no_wrap=True)
    table.add_column("kept because", overflow="fold")
    for c in infos:
        kept = Text(", ".join(c.kept)) if c.kept else Text("not kept: gc removes it", style="yellow")
        table.add_row(
            str(c.step),
            Text(f"{c.trigger} (abandoned)", style="dim") if c.abandoned else c.trigger,
            format_metrics(c.metrics),
            format_size(c.bytes),
            format_age(c.created, now),
            kept,
        )
    return table


def print_checkpoints(
    source: Source,
    exp_hash: str | None = None,
    *,
    retention: RetentionPolicy | Mapping[str, Any] | None = None,
    protected: Iterable[int] = (),
    console: Console | None = None,
) -> None:
    """Print the checkpoints of one experiment (default: the one active last; a prefix works).

    ``retention`` defaults to the policy recorded in the manifest; ``protected`` steps are shown as
    kept. Raises UnknownExperimentError/AmbiguousExperimentError for a bad prefix.
    """
    manager = manager_of(source)
    console = console or make_console()
    h = resolve_experiment(manager, exp_hash)
    if h is None:
        console.print("no experiments yet: nothing has been saved under this root")
        return
    policy = policy_from(manager.manifest(h).retention) if retention is None else retention
    if isinstance(policy, Mapping):
        policy = policy_from(policy)
    infos = checkpoint_infos(manager, h, retention=policy, protected=protected)
    console.print(
        f"[bold]checkpoints of [cyan]{h}[/][/]: {len(infos)}, retention: {describe_policy(policy)}",
        soft_wrap=True,
    )
    if infos:
        console.print(checkpoints_table(infos))
    else:
        console.print("no committed checkpoint yet")


__all__ = ["checkpoints_table", "experiments_table", "print_checkpoints", "print_summary"]
