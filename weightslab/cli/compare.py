"""``weightslab compare ROOT A B [C...]``: checkpoints side by side, and how it is printed.

The records come from :func:`weightslab.inspect.compare.compare_checkpoints`; this module adds the
subcommand's arguments, its handler and the rich tables (the ``diff`` tables' style).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch, rich: loaded by the compare command itself, not by every command's start
    from rich.console import Console

    from weightslab.inspect.compare import Comparison, PairComparison
    from weightslab.inspect.distance import WeightDistance

TENSOR_ROWS = 20  # the text view shows the tensors that moved most; --json lists every one

CommandFactory = Callable[..., argparse.ArgumentParser]


def add_compare_parser(command: CommandFactory) -> argparse.ArgumentParser:
    """Mount ``compare`` through the ``command`` helper of :func:`weightslab.cli.main.build_parser`."""
    p = command(
        "compare",
        "compare checkpoints: metrics side by side, hyperparameter and layer changes, weight distance",
        run_compare,
        json_help="print the comparison as JSON (every tensor's distance included)",
    )
    p.add_argument(
        "checkpoints",
        metavar="CHECKPOINT",
        nargs="+",
        help="<hash prefix>[@<step>|@latest|@best] (default @latest; an empty prefix, @120, is the "
        "experiment active last); the first is the baseline the others are compared with",
    )
    p.epilog = (
        "Weight distance per floating-point tensor present in both with the same shape, and overall: "
        "L2 ||a-b||, relative ||a-b||/||a|| (a = the baseline), cosine similarity, max |a-b| (NaN when a "
        "checkpoint holds a NaN; null in --json). Integer tensors are compared for equality. "
        "Every step file is verified against its checksum and loaded with weights_only=True."
    )
    return p


def run_compare(args: argparse.Namespace) -> int:
    """The handler: 0 when compared, 2 (through main's error table) for a bad name or a corrupt file."""
    if len(args.checkpoints) < 2:
        sys.stderr.write("weightslab: error: compare needs at least two checkpoints, as <hash>@<step>\n")
        return 2
    from weightslab.cli.progress_bar import RichTracker
    from weightslab.inspect import open_root
    from weightslab.inspect.compare import compare_checkpoints
    from weightslab.util.jsonsafe import to_jsonable

    manager = open_root(args.root)
    with RichTracker() as tracker:
        comparison = compare_checkpoints(manager, args.checkpoints, tracker=tracker)
    if args.json:
        data = {"root": str(manager.root), **comparison.to_dict()}
        sys.stdout.write(json.dumps(to_jsonable(data), indent=2, allow_nan=False, default=str) + "\n")
    else:
        print_comparison(comparison)
    if comparison.config_errors:
        message = " ".join("; ".join(comparison.config_errors).split())
        sys.stderr.write(f"weightslab: error: {message}\n")
        return 2
    return 0


def print_comparison(comparison: Comparison, *, console: Console | None = None) -> None:
    """Print the checkpoints, their metrics side by side, then each one against the baseline."""
    from rich.markup import escape

    from weightslab.cli.formatting import format_size, format_time, format_value, new_table
    from weightslab.cli.output import make_console

    console = console or make_console()
    refs = comparison.checkpoints
    table = new_table(title="checkpoints", title_justify="left", title_style="bold")
    table.add_column("checkpoint", style="cyan", no_wrap=True)
    table.add_column("trigger", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("tags / description", overflow="fold")
    for i, ref in enumerate(refs):
        notes = ", ".join(ref.tags) + (f" - {ref.description}" if ref.description else "")
        label = ref.label + (" (baseline)" if i == 0 else "")
        table.add_row(
            label, ref.trigger, format_time(ref.created), format_size(ref.bytes), escape(notes) or "-"
        )
    console.print(table)
    if comparison.metrics:
        metrics = new_table(title="metrics", title_justify="left", title_style="bold")
        metrics.add_column("metric", overflow="fold")
        for ref in refs:
            metrics.add_column(ref.label, justify="right", no_wrap=True)
        for name, values in comparison.metrics.items():
            metrics.add_row(escape(name), *(format_value(v) for v in values))
        console.print(metrics)
    else:
        console.print("metrics: none recorded")
    for pair in comparison.pairs:
        _print_pair(pair, comparison, console)


def _print_pair(pair: PairComparison, comparison: Comparison, console: Console) -> None:
    from weightslab.cli.render import print_diff
    from weightslab.inspect.diff import ExperimentDiff

    console.print()
    as_diff = ExperimentDiff(
        pair.a,
        pair.b,
        pair.hyperparams,
        pair.architecture,
        "checkpoints",
        comparison.config_errors,
    )
    print_diff(as_diff, console=console)
    _print_weights(pair.weights, console)


def _print_weights(w: WeightDistance, console: Console) -> None:
    from rich.markup import escape
    from rich.text import Text

    from weightslab.cli.formatting import new_table, plural

    if not w.tensors:
        console.print("weights: no tensor present in both with the same shape")
    else:
        console.print(
            f"weights ({plural(len(w.tensors), 'tensor')}): L2 {_num(w.l2)}, relative {_num(w.relative)}, "
            f"cosine {_num(w.cosine)}, max |diff| {_num(w.max_abs)}"
            + (" [green](identical)[/]" if w.identical else ""),
            soft_wrap=True,
        )
        # NaN/inf tensors first (their l2 does not sort), then the ones that moved most
        moved = sorted(
            (t for t in w.tensors if not t.finite or t.max_abs > 0), key=lambda t: (t.finite, -t.l2)
        )
        if moved:
            table = new_table()
            table.add_column("tensor", style="cyan", overflow="fold")
            table.add_column("shape", no_wrap=True)
            for column in ("L2", "relative", "cosine", "max |diff|"):
                table.add_column(column, justify="right", no_wrap=True)
            for t in moved[:TENSOR_ROWS]:
                shape = "x".join(map(str, t.shape)) or "scalar"
                table.add_row(
                    escape(f"{t.model}.{t.name}"),
                    shape,
                    _num(t.l2),
                    _num(t.relative),
                    _num(t.cosine),
                    _num(t.max_abs),
                )
            console.print(table)
            if len(moved) > TENSOR_ROWS:
                console.print(f"  ... {len(moved) - TENSOR_ROWS} more tensors moved (--json lists all)")
    for label, names in (("only in the baseline", w.only_in_a), ("only in this one", w.only_in_b)):
        if names:
            console.print(Text(f"  {label}: {', '.join(names)}"), soft_wrap=True)
    if w.shape_differs:
        pairs = ", ".join(f"{n} ({s})" for n, s in w.shape_differs.items())
        console.print(Text(f"  shapes differ, not measured: {pairs}"), soft_wrap=True)
    if w.non_finite:
        console.print(Text(f"  NaN or infinite values: {', '.join(w.non_finite)}"), soft_wrap=True)
    if w.not_floating_changed:
        changed = ", ".join(w.not_floating_changed)
        console.print(Text(f"  not floating point, values changed: {changed}"), soft_wrap=True)
    same = [n for n in w.not_floating if n not in w.not_floating_changed]
    if same:
        console.print(Text(f"  not floating point, unchanged: {', '.join(same)}"), soft_wrap=True)


def _num(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}"


__all__ = ["add_compare_parser", "print_comparison", "run_compare"]
