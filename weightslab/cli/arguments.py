"""Argument types shared by the subcommands: whole numbers checked with messages argparse prints."""

from __future__ import annotations

import argparse


def non_negative(text: str) -> int:
    """An int >= 0 (a step); argparse reports anything else with the value it got."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive(text: str) -> int:
    """An int >= 1 (a retention count)."""
    value = non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
