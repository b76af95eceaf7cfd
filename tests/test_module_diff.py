"""The module diff journalled with a model change reads the same signature the architecture hash covers."""

from __future__ import annotations

import torch

from weightslab.system.changes import module_diff, module_names
from weightslab.system.identity import ExperimentHashGenerator, architecture_signature


def test_the_diff_and_the_hash_see_the_same_walk() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert ExperimentHashGenerator.architecture_signature(model) == architecture_signature(model)
    before = module_names({"model": model})
    model[2] = torch.nn.Linear(4, 3)
    model.append(torch.nn.Tanh())
    model[0].half()  # a dtype change moves the hash, so the diff names the module
    diff = module_diff(before, module_names({"model": model}))
    assert diff == {"added": ["model.3"], "removed": [], "changed": ["model.0", "model.2"]}


def test_a_broken_extra_repr_does_not_break_the_diff() -> None:
    class Broken(torch.nn.Module):
        def extra_repr(self) -> str:
            raise RuntimeError("no repr")

    names = module_names({"m": torch.nn.Sequential(Broken())})
    assert module_diff(names, names) == {"added": [], "removed": [], "changed": []}
    assert "<extra_repr failed: RuntimeError>" in names["m"]["0"]
