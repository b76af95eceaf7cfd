"""``weightslab import ROOT SOURCE``: import a torch, Lightning, Hugging Face or safetensors checkpoint.

``weightslab.cli.main`` mounts it with :func:`add_import_parser`; the work is
:func:`weightslab.inspect.importing.import_checkpoint`. The command has no model to hash, so the
experiment's architecture signature comes from the state dict's tensor names, shapes and dtypes.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from weightslab.cli.arguments import non_negative
from weightslab.errors import ConfigError
from weightslab.inspect.importing_roles import FORMATS, FORMATS_HELP, ROLE_KEYS

if TYPE_CHECKING:  # torch: loaded by the import command itself
    from weightslab.inspect.importing import ImportResult

_EPILOG = (
    "The source is read completely before anything is written, with torch.load(weights_only=True) "
    "unless --trust. Importing the same source at the same step again changes nothing. Needs the "
    "root's writer lock: a running training holding it is an error. Without a model the hash comes "
    "from the tensors' names, shapes and dtypes: a run that registers the real model resumes the "
    "import and continues in a child experiment (see guides/cli.md)."
)


def add_import_parser(subparsers: Any) -> None:
    """Add the ``import`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "import",
        help="import a checkpoint made by torch.save, Lightning, the Hugging Face Trainer or safetensors",
        description="Import a checkpoint made by another tool into ROOT as a new experiment: "
        f"{FORMATS_HELP}.",
        epilog=_EPILOG,
    )
    p.add_argument("root", metavar="ROOT", help="the checkpoint root to import into (created if missing)")
    p.add_argument("source", metavar="SOURCE", help="the file or checkpoint-N/ folder to import")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="what SOURCE is (default: auto, from its bytes and keys; hf is a checkpoint-N/ folder)",
    )
    p.add_argument(
        "--step",
        type=non_negative,
        metavar="N",
        help="the step to record (default: the source's own step, else 0)",
    )
    p.add_argument(
        "--trust",
        action="store_true",
        help="load with torch.load(weights_only=False), which can run code from the file: only for "
        "files you trust (a Lightning .ckpt whose hyperparameters hold Python objects needs it)",
    )
    p.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="ROLE=KEY",
        help=f"for a torch.save dict: the key holding a role ({', '.join(ROLE_KEYS)}) where it has "
        "another name, e.g. --key model=generator (repeatable)",
    )
    p.add_argument("--tag", action="append", default=[], metavar="T", help="tag the checkpoint (repeatable)")
    p.add_argument("--description", metavar="D", help="describe the checkpoint")
    p.add_argument("--json", action="store_true", help="print what was imported as JSON")
    p.set_defaults(handler=run_import)


def run_import(args: argparse.Namespace) -> int:
    """The ``import`` command; returns the exit status (errors are raised for main to report)."""
    from weightslab.inspect.importing import import_checkpoint  # torch: this command only
    from weightslab.util.jsonsafe import to_jsonable

    result = import_checkpoint(
        args.root,
        args.source,
        format=args.format,
        step=args.step,
        trust=args.trust,
        tags=args.tag,
        description=args.description,
        keys=_keys(args.key),
    )
    if args.json:
        sys.stdout.write(json.dumps(to_jsonable(result.to_dict()), indent=2, allow_nan=False) + "\n")
    else:
        print_import(result)
    return 0


def print_import(result: ImportResult) -> None:
    """Print what an import wrote, or that it was there already."""
    from rich.markup import escape

    from weightslab.cli.output import make_console

    console = make_console()
    what = "already imported" if result.already else "imported"
    console.print(
        f"{what} {escape(str(result.source))} ({result.format}) as [cyan]{result.exp_hash}[/] step "
        f"{result.step} in {escape(str(result.root))}",
        soft_wrap=True,
    )
    parts = [f"{result.tensors} tensors of model {result.model_name!r}"]
    parts += [f"{result.optimizers} optimizer state"] if result.optimizers else []
    parts += [f"{result.schedulers} scheduler state"] if result.schedulers else []
    parts += ["RNG states"] if result.rng else []
    console.print(f"  {escape(', '.join(parts))}", soft_wrap=True)
    if result.metrics:
        shown = ", ".join(f"{k}={v:.6g}" if v is not None else f"{k}=null" for k, v in result.metrics.items())
        console.print(f"  metrics: {escape(shown)}", soft_wrap=True)
    if result.hyperparams:
        console.print(f"  hyperparameter sets: {escape(', '.join(result.hyperparams))}", soft_wrap=True)
    if result.identity == "state_dict":
        console.print(
            "  hash from the state dict (no model given): a run registering the model resumes this "
            "checkpoint and continues in a child experiment",
            soft_wrap=True,
        )
    for note in result.notes:
        console.print(f"  [yellow]note[/]: {escape(note)}", soft_wrap=True)


def _keys(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        role, sep, key = pair.partition("=")
        if not sep or not role or not key:
            raise ConfigError(f"--key takes ROLE=KEY (for example --key model=generator), got {pair!r}")
        out[role] = key
    return out


__all__ = ["add_import_parser", "print_import", "run_import"]
