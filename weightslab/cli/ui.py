"""``weightslab ui SOURCE``: the local web dashboard over a root or a Hub run."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

from weightslab.cli.arguments import non_negative
from weightslab.errors import ConfigError

UI_EXTRA_HINT = "the dashboard needs its extra: pip install 'weightslab[ui]'"


def add_ui_parser(sub: Any) -> None:
    """Mount ``ui`` on the subcommands."""
    p = sub.add_parser(
        "ui",
        help="serve a local web dashboard of a root (or of hf://org/repo) and open it in the browser",
        description="Serve a local web dashboard: experiments, lineage, metric curves, checkpoints, "
        "compare, the journal, and verify/tag/export/delete/gc behind confirmations. "
        "It follows a running training live.",
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="a checkpoint root (a folder or s3://bucket/prefix), or hf://org/repo for a Hub run",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=non_negative, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another name the browser may use for this server (a DNS name; repeatable)",
    )
    p.add_argument("--no-browser", action="store_true", help="do not open the browser")
    p.add_argument("--endpoint", metavar="URL", help="for hf://: the Hub endpoint (default $HF_ENDPOINT)")
    p.epilog = (
        "Actions that write (tag, delete, gc) are refused while a training holds the root's writer lock; "
        "verify, export and a gc dry run work beside it. Stop with Ctrl-C."
    )
    p.set_defaults(handler=run_ui)


def run_ui(args: argparse.Namespace) -> int:
    """Serve until interrupted; returns the exit status."""
    try:
        from weightslab.ui.server import serve
    except ImportError as exc:  # starlette, uvicorn or jinja2 missing
        raise ConfigError(f"{UI_EXTRA_HINT} ({exc})") from exc
    from weightslab.ui.hub import parse_hub_source

    source = str(args.source)
    hub_repo = parse_hub_source(source)
    hub_options = {"endpoint": args.endpoint} if args.endpoint else {}
    if hub_repo is None and args.endpoint:
        raise ConfigError("--endpoint is for hf://org/repo sources; a checkpoint root does not take it")
    # Ctrl-C: the server shuts down cleanly, then uvicorn re-raises the interrupt
    with contextlib.suppress(KeyboardInterrupt):
        serve(
            source,
            host=args.host,
            port=args.port,
            open_browser=not args.no_browser,
            hub_repo=hub_repo,
            hub_options=hub_options,
            allow_hosts=args.allow_host,
        )
    sys.stdout.write("weightslab: stopped\n")
    return 0


__all__ = ["add_ui_parser", "run_ui"]
