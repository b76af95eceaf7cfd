"""``weightslab analyze REPO_OR_ROOT``: analyse every checkpoint of a Hub repository or a local root.

``weightslab.cli.main`` mounts it with :func:`add_analyze_parser` and :func:`run_analyze`;
``python -m weightslab.cli.analyze analyze ...`` runs it on its own.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from weightslab.analysis.local import is_local_source
from weightslab.analysis.process import process_all_checkpoints
from weightslab.analysis.report import print_summary, summary_console
from weightslab.analysis.summary import save_all_analyses_outputs
from weightslab.errors import CheckpointNotFoundError, ConfigError, WeightslabError

_DESCRIPTION = """\
Analyse how the learning rate, optimizer state, configuration and weights evolve across the
checkpoints of a training run, print a summary table and write summary.csv, learning_rates.csv,
summary.json and one JSON per checkpoint.

REPO_OR_ROOT is a local weightslab root when that directory exists (every committed checkpoint is
analysed), else a Hugging Face Hub repo id whose branches name checkpoints: step143000 (Pythia),
step1000-tokens4B (OLMo), step69369-seed-default (DataDecide).

Weights: a local root's are analysed by default (they are in the step files, nothing is downloaded;
--no-weights skips them). A Hub repo's are analysed only with --include-weights, which downloads them
and removes what it downloaded once analysed.
"""


def add_analyze_parser(subparsers: Any) -> None:
    """Add the ``analyze`` subcommand to an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "analyze",
        help="analyse the checkpoints of a Hugging Face Hub repository or a local weightslab root",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="REPO_OR_ROOT", help="a local weightslab root, or a Hub repo id")
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        default=None,
        help="where to write the outputs (default: ./analysis/<name of REPO_OR_ROOT>)",
    )
    parser.add_argument(
        "--workers", metavar="N", type=int, default=4, help="checkpoints analysed in parallel (default: 4)"
    )
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument(
        "--include-weights",
        action="store_true",
        help="Hub repo: also analyse the weights (per-tensor and per-layer norms), downloading them and "
        "removing what was downloaded once analysed. Local root: the default already",
    )
    weights.add_argument(
        "--no-weights",
        action="store_true",
        help="do not analyse the weights (local root: reads only the optimizer state and "
        "hyperparameters of each step file). Hub repo: the default already",
    )
    parser.add_argument(
        "--endpoint",
        metavar="URL",
        default=None,
        help="the Hub endpoint (default: $HF_ENDPOINT or huggingface.co)",
    )
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="the Hub download cache (default: $HF_HUB_CACHE)",
    )


def _looks_like_path(source: str) -> bool:
    """A source a user meant as a directory: it cannot be a repo id ``name`` or ``namespace/name``."""
    return (
        source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1 or source.endswith("/")
    )


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def default_output_dir(source: str) -> Path:
    """``./analysis/<name>``: the root's folder name, or the repo id with ``/`` as ``__``."""
    name = Path(source).expanduser().resolve().name if is_local_source(source) else source.replace("/", "__")
    return Path("analysis") / (re.sub(r"[^A-Za-z0-9._-]", "_", name) or "run")


def run_analyze(args: argparse.Namespace) -> int:
    """Run ``weightslab analyze``; 0 when done, 2 for bad input (one line on stderr), 1 when the Hub fails."""
    source: str = args.source
    if args.workers < 1:
        print(f"weightslab analyze: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 2
    if _looks_like_path(source) and not is_local_source(source):
        print(
            f"weightslab analyze: local root {source} does not exist; "
            "pass the root_log_dir of a training run or a Hub repo id (namespace/name)",
            file=sys.stderr,
        )
        return 2
    console = summary_console()
    # A local root's weights are in the step files it reads anyway; a Hub repo's must be downloaded.
    include_weights = args.include_weights or (is_local_source(source) and not args.no_weights)
    try:
        analyses = process_all_checkpoints(
            source,
            args.workers,
            include_weights=include_weights,
            delete_weights_after=True,
            endpoint=args.endpoint,
            cache_dir=args.cache_dir,
            console=console,
        )
    except (CheckpointNotFoundError, ConfigError) as exc:
        print(f"weightslab analyze: {_one_line(exc)}", file=sys.stderr)
        return 2
    except WeightslabError as exc:
        print(f"weightslab analyze: {_one_line(exc)}", file=sys.stderr)
        return 1
    if not analyses:
        print(
            f"weightslab analyze: {source} has no checkpoints to analyse (no committed checkpoint in a local "
            "root; on the Hub, no branch named like step1000, step1000-tokens4B or step1000-seed-default)",
            file=sys.stderr,
        )
        return 2
    print_summary(analyses, console, title=f"checkpoints of {source}")
    out = args.out if args.out is not None else default_output_dir(source)
    outputs = save_all_analyses_outputs(analyses, out, source=source)
    console.print(
        f"wrote {outputs.summary_csv}, {outputs.learning_rates_csv}, {outputs.summary_json} and "
        f"{len(outputs.checkpoint_jsons)} checkpoint files under {out / 'checkpoints'}",
        soft_wrap=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m weightslab.cli.analyze``."""
    parser = argparse.ArgumentParser(prog="weightslab", description="weightslab checkpoint analysis")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_analyze_parser(subparsers)
    args = parser.parse_args(argv)
    return run_analyze(args)


if __name__ == "__main__":
    sys.exit(main())
