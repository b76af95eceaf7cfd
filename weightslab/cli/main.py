"""The ``weightslab`` command: look at, check, clean and export checkpoint roots.

::

    weightslab ls ROOT                      experiments table
    weightslab show ROOT HASH               checkpoints, architecture and config of one experiment
    weightslab tree ROOT                    how the experiments branched
    weightslab verify ROOT [HASH]           checksums and manifests (exit 1 when something is wrong)
    weightslab diff ROOT HASH_A HASH_B      hyperparameter and architecture changes
    weightslab gc ROOT [--dry-run]          apply the recorded retention, remove crash leftovers
    weightslab export ROOT HASH --to DIR    weights as safetensors (or the step file) plus config
    weightslab compare ROOT A B [C...]      checkpoints side by side: metrics, changes, weight distance
    weightslab backup ROOT --to DEST        copy the best and newest checkpoints to a second root
    weightslab import ROOT SOURCE           a torch, Lightning, Hugging Face or safetensors checkpoint
    weightslab analyze REPO_OR_ROOT         (from weightslab.analysis) analyse a run's checkpoints
    weightslab ui ROOT                      a local web dashboard (pip install 'weightslab[ui]')

Hashes may be abbreviated to any unique prefix, as in git. Every command takes ``--json`` for
scripts. Exit status: 0 success, 1 ``verify`` found problems or ``gc`` refused to delete a checkpoint
whose manifest entry is unsafe, 2 an error (one line on stderr: ``weightslab: error: ...``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from weightslab import __version__
from weightslab.cli.arguments import non_negative, positive
from weightslab.cli.backup import add_backup_parser
from weightslab.cli.compare import add_compare_parser
from weightslab.cli.importing import add_import_parser
from weightslab.cli.ui import add_ui_parser
from weightslab.errors import ConfigFileError, WeightslabError

# Each handler imports what its command needs when it runs: `ls` loads none of the modules of show,
# tree, verify, gc, diff or export (nor rich's progress bars and logging); a command's start counts.

EXIT_OK, EXIT_PROBLEMS, EXIT_ERROR = 0, 1, 2

Handler = Callable[[argparse.Namespace], int]


# -- parser -----------------------------------------------------------------------------------------
def build_parser(*, analyze: bool = False) -> argparse.ArgumentParser:
    # Long on purpose: one declarative block per subcommand, so the whole command surface reads in one place.
    """The argument parser; ``analyze=True`` mounts the real ``analyze`` subcommand (imports pandas)."""
    parser = argparse.ArgumentParser(
        prog="weightslab",
        description="Look at, check, clean and export weightslab checkpoint roots. "
        "Hashes may be abbreviated to any unique prefix.",
        epilog="Exit status: 0 success, 1 verify found problems, gc refused an unsafe entry, or backup could not copy a checkpoint, 2 error.",
    )
    parser.add_argument("--version", action="version", version=f"weightslab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, handler: Handler, *, json_help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        p.add_argument(
            "root", metavar="ROOT", help="the checkpoint root (the root_log_dir of a training run)"
        )
        p.add_argument("--json", action="store_true", help=json_help)
        p.set_defaults(handler=handler)
        return p

    p = command("ls", "list the experiments of a root", _cmd_ls, json_help="print the experiments as JSON")
    p.add_argument(
        "--monitor", metavar="METRIC", help="metric of the best column (default: the recorded monitor)"
    )
    p.add_argument("--mode", choices=("min", "max"), help="whether lower or higher --monitor is better")

    p = command(
        "show",
        "show one experiment: its checkpoints, architecture summary and config",
        _cmd_show,
        json_help="print the experiment as JSON",
    )
    p.add_argument("hash", metavar="HASH", help="experiment hash or unique prefix")

    command("tree", "show how the experiments branched", _cmd_tree, json_help="print the lineage as JSON")

    p = command(
        "verify",
        "check every checksum, and the manifests against the files",
        _cmd_verify,
        json_help="print the report as JSON (the exit status is the same)",
    )
    p.add_argument("hash", metavar="HASH", nargs="?", help="only this experiment (hash or unique prefix)")
    p.epilog = "Exit status: 0 all is well, 1 something is corrupt, missing, orphaned, unreadable or unsafe, 2 error."

    p = command(
        "diff",
        "show what changed between two experiments: hyperparameters and architecture",
        _cmd_diff,
        json_help="print the differences as JSON",
    )
    p.add_argument("hash_a", metavar="HASH_A", help="the experiment to compare from")
    p.add_argument("hash_b", metavar="HASH_B", help="the experiment to compare to")

    p = command(
        "gc",
        "apply the retention policy recorded for the root and remove crash leftovers",
        _cmd_gc,
        json_help="print what was (or would be) removed as JSON",
    )
    p.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    p.add_argument("--keep-last", type=positive, metavar="N", help="override the recorded keep_last")
    p.add_argument("--keep-best", type=positive, metavar="K", help="override the recorded keep_best")
    p.add_argument("--keep-every", type=positive, metavar="M", help="override the recorded keep_every")
    p.add_argument("--monitor", metavar="METRIC", help="override the recorded monitor (for --keep-best)")
    p.add_argument("--mode", choices=("min", "max"), help="override the recorded mode (for --keep-best)")
    p.epilog = (
        "The newest checkpoint of each experiment and every checkpoint a child experiment branched "
        "from are always kept. Needs the root's writer lock: a running training holding it is an error. "
        "Only real step files inside an experiment folder are deleted: a checkpoint whose manifest entry "
        "names anything else is kept and reported (exit status 1)."
    )

    p = command(
        "export",
        "write one checkpoint out for use elsewhere",
        _cmd_export,
        json_help="print what was written as JSON",
    )
    p.add_argument("hash", metavar="HASH", help="experiment hash or unique prefix")
    p.add_argument("--step", type=non_negative, metavar="N", help="the step to export (default: the newest)")
    p.add_argument("--to", required=True, metavar="DIR", help="the folder to write into (created if missing)")
    p.add_argument(
        "--format",
        choices=("safetensors", "pt"),
        default="safetensors",
        help="safetensors: <model name>.safetensors per model (default); pt: the whole step file as checkpoint.pt",
    )
    p.add_argument("--force", action="store_true", help="replace files that already exist in DIR")
    p.epilog = (
        "Both formats also write config.yaml (the hyperparameters) and checkpoint.json (the provenance)."
    )

    add_compare_parser(command)
    add_backup_parser(command)
    add_import_parser(sub)
    add_ui_parser(sub)
    _add_analyze(sub, real=analyze)
    return parser


def _add_analyze(sub: Any, *, real: bool) -> None:
    """Mount ``analyze`` (weightslab.analysis).

    Importing it pulls in pandas and huggingface_hub, so the real parser is built only when the
    command is ``analyze``; otherwise a placeholder lists it in ``weightslab --help``.
    """
    if real:
        from weightslab.cli.analyze import add_analyze_parser  # heavy: only for analyze

        add_analyze_parser(sub)
        return
    placeholder = sub.add_parser(
        "analyze",
        help="analyse the checkpoints of a Hugging Face Hub repository or a local root (see analyze --help)",
        add_help=False,
    )
    placeholder.add_argument("rest", nargs=argparse.REMAINDER)


# -- commands ---------------------------------------------------------------------------------------
def _cmd_ls(args: argparse.Namespace) -> int:
    with _collector_paused():
        return _ls(args)


def _ls(args: argparse.Namespace) -> int:
    from weightslab.cli.listing import quick_ls

    if quick_ls(args.root, as_json=args.json, monitor=args.monitor, mode=args.mode):
        return EXIT_OK
    from weightslab.inspect import open_root

    manager = open_root(args.root)
    if args.json:
        from weightslab.inspect.experiments import experiment_infos

        infos = experiment_infos(manager, monitor=args.monitor, mode=args.mode)
        active = next((i.exp_hash for i in infos if i.active), None)
        _print_json(
            {"root": str(manager.root), "active": active, "experiments": [i.to_dict() for i in infos]}
        )
    else:
        from weightslab.cli.tables import print_summary

        print_summary(manager, monitor=args.monitor, mode=args.mode)
    return EXIT_OK


def _cmd_show(args: argparse.Namespace) -> int:
    from weightslab.cli import console
    from weightslab.inspect import open_root
    from weightslab.inspect.checkpoints import checkpoint_infos
    from weightslab.inspect.experiments import experiment_info
    from weightslab.inspect.overview import architecture_summary

    manager = open_root(args.root)
    h = manager.resolve_hash(args.hash)
    if not args.json:
        console.print_experiment(manager, h)  # prints the rest, then raises if the config is unreadable
        return EXIT_OK
    config_error: ConfigFileError | None = None
    try:
        config: dict[str, Any] | None = manager.read_config(h)
    except ConfigFileError as exc:
        config, config_error = None, exc
    _print_json(
        {
            "root": str(manager.root),
            "experiment": experiment_info(manager, h, active=manager.last_active()).to_dict(),
            "checkpoints": [c.to_dict() for c in checkpoint_infos(manager, h)],
            "architecture": [m.to_dict() for m in architecture_summary(manager, h)],
            "config": config,
            "config_error": None if config_error is None else str(config_error),
        }
    )
    return EXIT_OK if config_error is None else _error(config_error)


def _cmd_tree(args: argparse.Namespace) -> int:
    from weightslab.inspect import open_root
    from weightslab.inspect.lineage import lineage

    manager = open_root(args.root)
    if args.json:
        _print_json({"root": str(manager.root), "lineage": [n.to_dict() for n in lineage(manager)]})
    else:
        from weightslab.cli.tree import print_tree

        print_tree(manager)
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    from weightslab.cli import render as cli_render
    from weightslab.cli.progress_bar import RichTracker
    from weightslab.inspect import open_root
    from weightslab.inspect.verify import report_dict, verify_root

    manager = open_root(args.root)
    h = manager.resolve_hash(args.hash) if args.hash else None
    with RichTracker() as tracker:
        report = verify_root(manager, h, tracker=tracker)
    if args.json:
        _print_json(report_dict(report, manager.root))
    else:
        cli_render.print_verify(report, manager.root)
    return EXIT_OK if report.healthy else EXIT_PROBLEMS


def _cmd_diff(args: argparse.Namespace) -> int:
    from weightslab.cli import render as cli_render
    from weightslab.inspect import open_root
    from weightslab.inspect.diff import diff_experiments

    manager = open_root(args.root)
    a, b = manager.resolve_hash(args.hash_a), manager.resolve_hash(args.hash_b)
    diff = diff_experiments(manager, a, b)
    if args.json:
        _print_json({"root": str(manager.root), **diff.to_dict()})
    else:
        cli_render.print_diff(diff)
    # what could be compared is printed; an unreadable config file is still an error
    return _error("; ".join(diff.config_errors)) if diff.config_errors else EXIT_OK


def _cmd_gc(args: argparse.Namespace) -> int:
    from weightslab.cli import render as cli_render
    from weightslab.cli.progress_bar import RichTracker
    from weightslab.inspect.gc import run_gc

    overrides = {
        "keep_last": args.keep_last,
        "keep_best": args.keep_best,
        "keep_every": args.keep_every,
        "monitor": args.monitor,
        "mode": args.mode,
    }
    with RichTracker() as tracker:
        result = run_gc(args.root, dry_run=args.dry_run, overrides=overrides, tracker=tracker)
    if args.json:
        _print_json(result.to_dict())
    else:
        cli_render.print_gc(result)
    return EXIT_PROBLEMS if result.refused else EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    # torch and safetensors: imported by the command that writes weights, not by ls, show or verify
    from weightslab.cli import render as cli_render
    from weightslab.cli.progress_bar import RichTracker
    from weightslab.inspect import open_root
    from weightslab.inspect.export import export_checkpoint

    manager = open_root(args.root)
    h = manager.resolve_hash(args.hash)
    with RichTracker() as tracker:
        result = export_checkpoint(
            manager, h, args.to, step=args.step, fmt=args.format, force=args.force, tracker=tracker
        )
    if args.json:
        _print_json(result.to_dict())
    else:
        cli_render.print_export(result)
    return EXIT_OK


def _cmd_analyze(args: argparse.Namespace) -> int:
    from weightslab.cli.analyze import run_analyze

    return int(run_analyze(args))


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a short read-only command (as it was again after).

    Reading a manifest of 10,000 checkpoints allocates some 100,000 dicts, lists and entries, which
    set off collections that scan them all again and again (about a third of the listing's time);
    they are garbage only when the command ends.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# -- output and errors ------------------------------------------------------------------------------
def _print_json(data: Any) -> None:
    """Plain JSON on stdout: no colour, non-finite numbers as null, anything else by str()."""
    from weightslab.util.jsonsafe import to_jsonable

    sys.stdout.write(json.dumps(to_jsonable(data), indent=2, allow_nan=False, default=str) + "\n")


def _error(message: object) -> int:
    """One line on stderr, exit status 2."""
    sys.stderr.write(f"weightslab: error: {' '.join(str(message).split())}\n")
    return EXIT_ERROR


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first argument that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    """Run the ``weightslab`` command; returns the exit status (0, 1 for verify problems, 2 errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(analyze=_command_of(argv) == "analyze")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors (argparse printed them)
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    handler: Handler = _cmd_analyze if args.command == "analyze" else args.handler
    try:
        return handler(args)
    except WeightslabError as exc:
        return _error(exc)
    except (FileExistsError, NotADirectoryError, PermissionError) as exc:
        return _error(exc)
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):  # the reader went away (| head): stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 141
        return _error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else exc)
    except KeyboardInterrupt:
        sys.stderr.write("weightslab: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
