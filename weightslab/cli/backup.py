"""``weightslab backup ROOT --to DEST``: copy the critical checkpoints to a second root, and the report.

The copy is :func:`weightslab.inspect.backup.backup_root`; this module adds the subcommand's
arguments, its handler and the rich table of what was copied.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # loaded by the command itself: mounting its parser costs every command's start
    from rich.console import Console

    from weightslab.inspect.backup import BackupResult

CommandFactory = Callable[..., argparse.ArgumentParser]


def add_backup_parser(command: CommandFactory) -> argparse.ArgumentParser:
    """Mount ``backup`` through the ``command`` helper of :func:`weightslab.cli.main.build_parser`."""
    p = command(
        "backup",
        "copy the best and the newest checkpoint of each experiment to a second root",
        run_backup,
        json_help="print what was (or would be) copied as JSON",
    )
    p.add_argument(
        "--to",
        required=True,
        metavar="DEST",
        help="the backup root: a folder (created if missing) or s3://bucket/prefix (AWS_* variables)",
    )
    p.add_argument(
        "--all", action="store_true", help="copy every committed checkpoint, not only the critical ones"
    )
    p.add_argument(
        "--experiment",
        action="append",
        metavar="HASH",
        help="only this experiment (hash or unique prefix); repeat for several (default: all)",
    )
    p.add_argument(
        "--tagged",
        metavar="TAG",
        help="also copy every checkpoint carrying this tag (and never prune a copy that carries it)",
    )
    p.add_argument(
        "--prune",
        action="store_true",
        help="delete the backup's copies (of the experiments backed up) that are no longer chosen",
    )
    p.add_argument(
        "--monitor", metavar="METRIC", help="metric of the best checkpoint (default: the recorded monitor)"
    )
    p.add_argument("--mode", choices=("min", "max"), help="whether lower or higher --monitor is better")
    p.add_argument("--dry-run", action="store_true", help="print what would be copied; write nothing")
    p.add_argument(
        "--verify-existing",
        action="store_true",
        help="re-read the copies already in DEST and copy again any whose bytes do not match "
        "(default: trust a copy whose manifest checksum and size match)",
    )
    p.epilog = (
        "Each file is checked against the source's manifest, copied, read back and checked again; the "
        "destination's manifest entries are committed last, so an interrupted backup leaves a root that "
        "verifies, and running the command again completes it (identical copies are skipped). The "
        "backup is a weightslab root: restore by opening it (root_log_dir=DEST). Holds the destination's "
        "writer lock; the source is only read. --prune never removes a checkpoint a child experiment "
        "continued from, and prunes nothing when a copy failed. Exit status: 0 done, 1 a checkpoint "
        "could not be copied (a corrupt source file, or one deleted meanwhile), 2 error."
    )
    return p


def run_backup(args: argparse.Namespace) -> int:
    """The handler: 0 when everything chosen is in the backup, 1 when a checkpoint could not be copied."""
    from weightslab.cli.progress_bar import RichTracker
    from weightslab.inspect import open_root
    from weightslab.inspect.backup import backup_root
    from weightslab.util.jsonsafe import to_jsonable

    manager = open_root(args.root)
    with RichTracker() as tracker:
        result = backup_root(
            manager,
            args.to,
            experiments=args.experiment,
            all_checkpoints=args.all,
            tagged=args.tagged,
            prune=args.prune,
            monitor=args.monitor,
            mode=args.mode,
            dry_run=args.dry_run,
            verify_existing=args.verify_existing,
            tracker=tracker,
        )
    if args.json:
        sys.stdout.write(
            json.dumps(to_jsonable(result.to_dict()), indent=2, allow_nan=False, default=str) + "\n"
        )
    else:
        print_backup(result)
    return 1 if result.failed else 0


def print_backup(result: BackupResult, *, console: Console | None = None) -> None:
    """Print each checkpoint the backup looked at, then one summary line."""
    from rich.markup import escape

    from weightslab.cli.formatting import format_size, new_table, plural
    from weightslab.cli.output import make_console

    console = console or make_console()
    if result.items:
        table = new_table()
        table.add_column("action", no_wrap=True)
        table.add_column("experiment", style="cyan", no_wrap=True)
        table.add_column("step", justify="right", no_wrap=True)
        table.add_column("why", no_wrap=True)
        table.add_column("size", justify="right", no_wrap=True)
        table.add_column("detail", overflow="fold")
        for i in result.items:
            style = {"failed": "red", "copied": "green", "pruned": "yellow"}.get(i.action, "")
            action = f"[{style}]{i.action}[/]" if style else i.action
            table.add_row(
                action,
                i.exp_hash[:8],
                str(i.step),
                ", ".join(i.reasons) or "-",
                format_size(i.bytes),
                escape(i.detail),
            )
        console.print(table)
    copied = result.count("copied", "would copy")
    verb = "would copy" if result.dry_run else "copied"
    line = (
        f"{verb} {plural(copied, 'checkpoint')} ({format_size(result.copied_bytes)}) to "
        f"{escape(result.destination)}; {result.count('skipped')} already there"
    )
    pruned = result.count("pruned", "would prune")
    if pruned:
        line += f", {pruned} {'would be pruned' if result.dry_run else 'pruned'}"
    if result.failed:
        line += f"; [bold red]{len(result.failed)} failed[/]"
    console.print(line, soft_wrap=True)
    for note in result.notes:
        console.print(f"[yellow]note[/]: {escape(note)}", soft_wrap=True)
    if result.dry_run:
        console.print("dry run: nothing was written")


__all__ = ["add_backup_parser", "print_backup", "run_backup"]
