"""A rich table of analyses for people: one row per checkpoint, the numbers that show how a run evolves."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from weightslab.analysis.models import CheckpointAnalysis
from weightslab.analysis.summary import Analyses, sorted_analyses


def _num(value: float | int | None, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def _count(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return str(value)


def _first_moment_norm(a: CheckpointAnalysis) -> str:
    """The norm of Adam's ``exp_avg`` or SGD's ``momentum_buffer``, else of the first state entry."""
    if a.optimizer is None:
        return "-"
    for name in ("exp_avg", "momentum_buffer"):
        c = a.optimizer.component(name)
        if c is not None:
            return f"{c.stats.norm:.3g}"
    first = a.optimizer.components[0] if a.optimizer.components else None
    return f"{first.stats.norm:.3g}" if first is not None else "-"


def summary_table(analyses: Analyses, *, title: str | None = None) -> Table:
    """The summary of ``analyses`` as a rich Table, sorted by step.

    Columns: the branch, its step, tokens or seed, the optimizer type, the first group's learning rate
    and its ratio to the initial one, the norm of the first moment (Adam ``exp_avg``, SGD momentum),
    the parameter count (``~`` when estimated from the config), the weights' norm, and the status.
    """
    table = Table(
        title=title,
        header_style="bold",
        box=box.SIMPLE_HEAD,
        caption="|m|: norm of Adam exp_avg / SGD momentum",
    )
    table.add_column("branch", overflow="fold")
    table.add_column("step", justify="right")
    table.add_column("tokens/seed", overflow="fold")
    table.add_column("optim")
    table.add_column("lr", justify="right", no_wrap=True)
    table.add_column("lr/lr0", justify="right")
    table.add_column("|m|", justify="right")
    table.add_column("params", justify="right")
    table.add_column("|w|", justify="right")
    table.add_column("status")
    for a in sorted_analyses(analyses):
        opt = a.optimizer
        lr = opt.learning_rate if opt is not None else None
        params = a.weights.total_parameters if a.weights is not None else None
        if params is None and a.config is not None and a.config.estimated_parameters is not None:
            params_text = f"~{_count(a.config.estimated_parameters)}"
        else:
            params_text = _count(params)
        if a.errors:
            status = "[red]error[/red]"
        elif not a.components.has_optimizer:
            status = "[yellow]no optim[/yellow]"
        else:
            status = "[green]ok[/green]"
        table.add_row(
            a.branch,
            _num(a.step, "d"),
            a.tokens_label or a.seed or "-",
            (opt.optimizer_type if opt is not None else None) or "-",
            _num(lr.lr if lr else None, ".4g"),
            _num(lr.lr_ratio if lr else None, ".3f"),
            _first_moment_norm(a),
            params_text,
            _num(a.weights.stats.norm if a.weights is not None else None),
            status,
        )
    return table


def summary_console() -> Console:
    """A console for summaries: the terminal's width, or 160 columns when writing to a pipe or a file."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def print_summary(analyses: Analyses, console: Console | None = None, *, title: str | None = None) -> None:
    """Print the summary table of ``analyses`` (see :func:`summary_table`), then every error by branch."""
    console = console if console is not None else summary_console()
    items = sorted_analyses(analyses)
    console.print(summary_table(items, title=title))
    failed = [a for a in items if not a.ok]
    console.print(f"{len(items)} checkpoints analysed, {len(failed)} with errors")
    for a in failed:
        for error in a.errors:
            console.print(f"  [red]{a.branch}[/red]: {escape(error)}", highlight=False, soft_wrap=True)
