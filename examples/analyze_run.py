"""Analyse the checkpoints of a local training run (the quickstart's by default) and print the summary.

    python examples/quickstart.py          # writes runs/quickstart
    python examples/analyze_run.py         # analyses it, writes runs/analysis
    python examples/analyze_run.py path/to/root --out path/to/outputs

The same functions analyse a published run: pass a Hub repo id such as
``allenai/DataDecide-dolma1_7-4M`` to ``process_all_checkpoints`` instead of a directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Analyse the checkpoints of a local training run.")
    parser.add_argument(
        "root", nargs="?", type=Path, default=Path("runs/quickstart"), help="a weightslab root"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/analysis"), help="where the CSV/JSON files go")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument(
        "--no-weights",
        action="store_true",
        help="skip the weights (they are read from the step files by default: nothing is downloaded)",
    )
    weights.add_argument("--include-weights", action="store_true", help="analyse the weights (the default)")
    args = parser.parse_args(argv)

    if not args.root.is_dir():
        print(
            f"analyze_run.py: no weightslab root at {args.root}; run examples/quickstart.py first "
            "(it writes runs/quickstart) or pass the root_log_dir of your run",
            file=sys.stderr,
        )
        return 2

    # Imported once the arguments are checked: a wrong path fails at once, without loading torch.
    from weightslab.analysis import (
        create_learning_rate_summary,
        print_summary,
        process_all_checkpoints,
        save_all_analyses_outputs,
    )
    from weightslab.analysis.report import summary_console

    analyses = process_all_checkpoints(args.root, include_weights=not args.no_weights)
    console = summary_console()
    print_summary(analyses, console, title=f"checkpoints of {args.root}")

    lr = create_learning_rate_summary(analyses)
    if not lr.empty:
        console.print("\nlearning rate by step and param group:")
        columns = ["branch", "step", "group", "lr", "initial_lr", "lr_ratio", "optimizer_step"]
        console.print(lr[columns].to_string(index=False), highlight=False)

    outputs = save_all_analyses_outputs(analyses, args.out, source=args.root)
    console.print(f"\nwrote {len(outputs.paths())} files under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
