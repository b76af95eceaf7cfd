"""Branch names of the three published styles, and of local checkpoints, parse into step / tokens / seed."""

from __future__ import annotations

import pytest

from weightslab.analysis import parse_branch_name
from weightslab.analysis.branches import local_branch_name


@pytest.mark.parametrize(
    ("name", "step", "tokens", "label", "seed", "prefix"),
    [
        ("step143000", 143000, None, None, None, None),  # Pythia
        ("step1000-tokens4B", 1000, 4_000_000_000, "4B", None, None),  # OLMo
        ("step556000-tokens2460B", 556000, 2_460_000_000_000, "2460B", None, None),
        ("step1000-tokens4194304", 1000, 4194304, "4194304", None, None),
        ("step10-tokens2.5M", 10, 2_500_000, "2.5M", None, None),
        ("stage1-step1000-tokens5B", 1000, 5_000_000_000, "5B", None, "stage1"),  # OLMo 2
        ("step69369-seed-default", 69369, None, None, "default", None),  # DataDecide
        ("step0-seed-large-aux", 0, None, None, "large-aux", None),
        ("0123abcd-step100", 100, None, None, None, "0123abcd"),  # a local checkpoint
    ],
)
def test_checkpoint_branch_names_parse(
    name: str, step: int, tokens: int | None, label: str | None, seed: str | None, prefix: str | None
) -> None:
    parsed = parse_branch_name(name)
    assert parsed is not None
    assert (parsed.name, parsed.step, parsed.tokens, parsed.tokens_label, parsed.seed, parsed.prefix) == (
        name, step, tokens, label, seed, prefix,
    )  # fmt: skip


@pytest.mark.parametrize(
    "name", ["main", "v1.0", "step", "stepX", "step10-final", "my-step10", "step10-tokens"]
)
def test_other_branch_names_are_not_checkpoints(name: str) -> None:
    assert parse_branch_name(name) is None


def test_local_branch_name_uses_the_hash_prefix() -> None:
    assert local_branch_name("0123456789abcdef", 42) == "01234567-step42"
    assert local_branch_name("0123456789abcdef", 42, hash_chars=16) == "0123456789abcdef-step42"
    parsed = parse_branch_name(local_branch_name("0123456789abcdef", 42))
    assert parsed is not None and parsed.step == 42
