"""A picture of a checkpoint root in the terminal, drawn with ``rich``.

``show(root)`` prints the experiments table and the lineage tree; :func:`print_summary`,
:func:`print_checkpoints` and :func:`print_tree` print one part each and take a root path or an open
:class:`CheckpointManager` (the checkpoint system passes its own). The ``weightslab`` command renders
through the same functions. Nothing here configures logging unless asked: call
:func:`enable_rich_logging` to see the library's log lines through a rich handler.

Output written to a pipe or a file has no colours and no progress bars, and is laid out for 100
columns (rich's own detection; ``COLUMNS`` and ``NO_COLOR`` are honoured).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import IO, Any

import yaml
from rich import box
from rich.console import Console
from rich.filesize import decimal
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from weightslab.errors import ConfigFileError
from weightslab.format.manifest import ParentRef
from weightslab.inspect import open_root
from weightslab.inspect.overview import (
    CheckpointInfo,
    ExperimentInfo,
    LineageNode,
    Mode,
    architecture_summary,
    checkpoint_infos,
    describe_policy,
    experiment_info,
    experiment_infos,
    lineage,
    policy_from,
)
from weightslab.policy.retention import RetentionPolicy
from weightslab.store.manager import CheckpointManager
from weightslab.util.names import is_hash

Source = CheckpointManager | str | os.PathLike[str]
PIPE_WIDTH = 100


# -- consoles and progress --------------------------------------------------------------------------
def make_console(file: IO[str] | None = None, *, stderr: bool = False) -> Console:
    """A console for ``file`` (default stdout, or stderr); 100 columns wide when not a terminal."""
    console = Console(file=file, stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(file=file, stderr=stderr, width=PIPE_WIDTH)
    return console


class RichTracker:
    """A :class:`weightslab.inspect.Tracker` drawn as a transient rich progress bar.

    Shows nothing when ``console`` is not a terminal (pipes, files, CI logs). Use as a context manager.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console if console is not None else make_console(stderr=True)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=not self.console.is_terminal,
        )
        self._task: TaskID | None = None

    @property
    def enabled(self) -> bool:
        return self.console.is_terminal

    def __enter__(self) -> RichTracker:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def start(self, description: str, total: float | None) -> None:
        if self._task is not None:
            self._progress.update(self._task, visible=False)
        self._task = self._progress.add_task(description, total=total)

    def advance(self, amount: float = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)


# -- logging ----------------------------------------------------------------------------------------
class _WeightslabRichHandler(RichHandler):
    """The handler :func:`enable_rich_logging` installs (a class of its own, so it can be found again)."""


def enable_rich_logging(
    level: int | str = "INFO", *, logger: str = "weightslab", console: Console | None = None
) -> logging.Handler:
    """Show weightslab's log lines (saves, changes, retention) through a rich handler on stderr.

    Opt-in: the library never calls this. It sets the level of the ``weightslab`` logger and adds one
    handler (calling it again replaces it). Records still propagate to your own handlers; set
    ``logging.getLogger("weightslab").propagate = False`` if that prints them twice.
    """
    target = logging.getLogger(logger)
    disable_rich_logging(logger=logger)
    handler = _WeightslabRichHandler(
        console=console or make_console(stderr=True), show_path=False, markup=False, rich_tracebacks=False
    )
    handler.setLevel(level)
    target.addHandler(handler)
    target.setLevel(level)
    return handler


def disable_rich_logging(*, logger: str = "weightslab") -> None:
    """Remove the handler :func:`enable_rich_logging` added (no-op when there is none)."""
    target = logging.getLogger(logger)
    for handler in list(target.handlers):
        if isinstance(handler, _WeightslabRichHandler):
            target.removeHandler(handler)


# -- formatting -------------------------------------------------------------------------------------
def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 checkpoint``, ``2 checkpoints``, ``0 checkpoints``; ``plural_form`` for nouns not taking -s."""
    return f"{count:,} {noun if count == 1 else plural_form or noun + 's'}"


def format_size(nbytes: int) -> str:
    return decimal(nbytes)


def format_time(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def format_age(timestamp: float, now: float | None = None) -> str:
    """``42s ago``, ``5m ago``, ``3h ago``, ``2d ago``."""
    seconds = max(0.0, (time.time() if now is None else now) - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip().removesuffix("...").strip()


def format_metrics(metrics: Mapping[str, float | None]) -> str:
    return "  ".join(f"{k}={format_value(v)}" for k, v in metrics.items()) or "-"


def format_parent(info: ExperimentInfo) -> str:
    parent = info.parent
    if parent is None:
        return "-"
    at = "" if parent.step is None else f"@{parent.step}"
    return f"{parent.exp_hash[:7]}{at} {parent.reason}"


def _parent_text(parent: ParentRef) -> str:
    """``<hash> at step 120 (config_change), from its checkpoint 100``."""
    at = "" if parent.step is None else f" at step {parent.step}"
    since = "" if parent.checkpoint is None else f", from its checkpoint {parent.checkpoint}"
    return f"{parent.exp_hash}{at} ({parent.reason}){since}"


def _manager(source: Source) -> CheckpointManager:
    return source if isinstance(source, CheckpointManager) else open_root(source)


def new_table(**kwargs: Any) -> Table:
    """A table in weightslab's style: a rule under the header, no borders, two spaces between columns."""
    return Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
        header_style="bold",
        **kwargs,
    )


# -- experiments ------------------------------------------------------------------------------------
def experiments_table(infos: list[ExperimentInfo]) -> Table:
    """The table of ``weightslab ls``: one row per experiment, the active one marked ``*``."""
    monitors = {i.best.monitor for i in infos if i.best is not None}
    best_header = f"best\n{monitors.pop()}" if len(monitors) == 1 else "best"
    table = new_table()
    table.add_column("  experiment", no_wrap=True)
    table.add_column("parent", overflow="fold")
    table.add_column("created", no_wrap=True)
    table.add_column("ckpts", justify="right")
    table.add_column("latest", justify="right")
    table.add_column(best_header, justify="right", overflow="fold")
    table.add_column("size", justify="right", no_wrap=True)
    for i in infos:
        name = Text("* ", style="bold green") if i.active else Text("  ")
        name.append(i.exp_hash, style="cyan")
        if i.error is not None:
            # the reason is long; `weightslab verify` and --json give it in full
            table.add_row(name, Text("manifest unreadable", style="red"), "", "", "", "", "")
            continue
        best = "-"
        if i.best is not None:
            best = f"{format_value(i.best.value)} @{i.best.step}"
            best += "" if best_header != "best" else f" {i.best.monitor}"
        table.add_row(
            name,
            format_parent(i),
            format_time(i.created),
            str(i.checkpoints),
            "-" if i.latest_step is None else str(i.latest_step),
            best,
            format_size(i.size_bytes),
        )
    return table


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
    manager = _manager(source)
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
    console.print(experiments_table(infos))
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
    manager = _manager(source)
    console = console or make_console()
    h = _resolve(manager, exp_hash)
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


def _resolve(manager: CheckpointManager, exp_hash: str | None) -> str | None:
    """The full hash for a prefix; for None, the experiment active last (None on an empty root)."""
    if exp_hash is None:
        return manager.last_active()
    return (
        exp_hash if is_hash(exp_hash) and manager.has_experiment(exp_hash) else manager.resolve_hash(exp_hash)
    )


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
    manager = _manager(source)
    console = console or make_console()
    nodes = lineage(manager, experiment_infos(manager, active=active))
    if not nodes:
        console.print("no experiments yet: nothing has been saved under this root")
        return
    console.print(lineage_tree(nodes, str(manager.root)))


# -- one experiment ---------------------------------------------------------------------------------
def print_experiment(source: Source, exp_hash: str, *, console: Console | None = None) -> None:
    """Print one experiment: its record, checkpoints, architecture summary and configuration.

    The trainable counts are those of the newest checkpoint (a freeze does not start a new
    experiment). When the config file cannot be read, everything else is printed, with a note where
    the config would be, and then ConfigFileError (naming the file) is raised.
    """
    manager = _manager(source)
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
        "-" if m.parent is None else _parent_text(m.parent),
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
        console.print(
            Text(yaml.safe_dump(config, sort_keys=True, allow_unicode=True).rstrip()), soft_wrap=True
        )


def show(root: Source, exp_hash: str | None = None, *, console: Console | None = None) -> None:
    """Print a root at a glance: the experiments table and the lineage tree.

    With ``exp_hash`` (a prefix works), print that experiment in detail instead.
    """
    manager = _manager(root)
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
