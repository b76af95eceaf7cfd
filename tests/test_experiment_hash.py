"""The experiment hash: stable across processes, moved by architecture and hyperparameters only."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import torch
import torch.nn.utils.prune as prune

from weightslab.components import ExperimentHashGenerator
from weightslab.system.identity import ExperimentIdentity

from .conftest import mlp

HP = {"lr": 1e-3, "batch_size": 32, "optimizer": {"betas": (0.9, 0.999), "name": "adamw"}}


def ident(model: torch.nn.Module, hp: dict[str, object] | None = None, **kw: object) -> ExperimentIdentity:
    return ExperimentHashGenerator(**kw).identity({"model": model}, {"config": HP if hp is None else hp})  # type: ignore[arg-type]


def test_hash_is_16_lowercase_hex() -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", ident(mlp()).exp_hash)


def test_same_model_and_config_in_a_new_process_gives_the_same_hash() -> None:
    code = textwrap.dedent(
        """
        import torch
        from weightslab.components import ExperimentHashGenerator
        torch.manual_seed(1234)  # other weights, same architecture
        m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        hp = {"optimizer": {"name": "adamw", "betas": [0.9, 0.999]}, "batch_size": 32, "lr": 1e-3}
        print(ExperimentHashGenerator().generate({"model": m}, {"config": hp}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ident(mlp()).exp_hash


def test_weights_do_not_change_the_hash() -> None:
    a, b = mlp(seed=0), mlp(seed=1)
    assert not torch.equal(a[0].weight, b[0].weight)
    assert ident(a) == ident(b)
    with torch.no_grad():
        a[0].weight.add_(1.0)
    assert ident(a) == ident(b)


def test_freezing_does_not_change_the_hash() -> None:
    m = mlp()
    before = ident(m)
    for p in m[0].parameters():
        p.requires_grad_(False)
    assert ident(m) == before


def test_pruned_layer_gives_a_new_hash() -> None:
    m = mlp((8, 16, 4))
    before = ident(m)
    m[0] = torch.nn.Linear(8, 12)
    m[2] = torch.nn.Linear(12, 4)
    after = ident(m)
    assert after.exp_hash != before.exp_hash and after.architecture_hash != before.architecture_hash
    assert after.hyperparams_hash == before.hyperparams_hash


def test_shrinking_a_parameter_in_place_gives_a_new_hash() -> None:
    m = mlp((8, 16, 4))
    before = ident(m).exp_hash
    with torch.no_grad():
        m[0].weight.data = m[0].weight.data[:12].clone()
    assert ident(m).exp_hash != before


def test_torch_prune_reparametrisation_gives_a_new_hash() -> None:
    m = mlp()
    before = ident(m).exp_hash
    prune.l1_unstructured(m[0], name="weight", amount=0.5)
    assert ident(m).exp_hash != before


def test_added_layer_gives_a_new_hash() -> None:
    m = mlp()
    before = ident(m).exp_hash
    m.append(torch.nn.Linear(4, 4))
    assert ident(m).exp_hash != before


def test_changed_hyperparameter_gives_a_new_hash_and_returning_restores_it() -> None:
    m = mlp()
    base = ident(m).exp_hash
    changed = ident(m, {**HP, "lr": 1e-4})
    assert changed.exp_hash != base and changed.architecture_hash == ident(m).architecture_hash
    assert ident(m, dict(HP)).exp_hash == base


def test_key_order_tuples_and_lists_are_canonical() -> None:
    m = mlp()
    reordered = {"optimizer": {"name": "adamw", "betas": [0.9, 0.999]}, "batch_size": 32, "lr": 1e-3}
    assert ident(m, reordered) == ident(m)


def test_exclude_hyperparams() -> None:
    m = mlp()
    noisy = {**HP, "log_every": 10}
    other = {**HP, "log_every": 50}
    assert ident(m, noisy).exp_hash != ident(m, other).exp_hash
    assert ident(m, noisy, exclude_hyperparams=["log_every"]) == ident(
        m, other, exclude_hyperparams=["log_every"]
    )
    assert (
        ident(m, noisy, exclude_hyperparams=["config.log_every"]).exp_hash
        == ident(m, other, exclude_hyperparams=["config.log_every"]).exp_hash
    )
    nested = {**HP, "optimizer": {"betas": (0.9, 0.999), "name": "sgd"}}
    assert (
        ident(m, nested, exclude_hyperparams=["optimizer.name"]).exp_hash
        == ident(m, exclude_hyperparams=["optimizer.name"]).exp_hash
    )


def test_dtype_and_buffers_count() -> None:
    a = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    b = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4, track_running_stats=False))
    assert ident(a).exp_hash != ident(b).exp_hash
    assert (
        ident(a.double()).exp_hash
        != ident(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))).exp_hash
    )


def test_multiple_models_and_sets_are_named() -> None:
    gen = ExperimentHashGenerator()
    enc, dec = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    h1 = gen.generate({"encoder": enc, "decoder": dec}, {"a": {"x": 1}})
    h2 = gen.generate({"encoder": dec, "decoder": enc}, {"a": {"x": 1}})
    h3 = gen.generate({"enc": enc, "decoder": dec}, {"a": {"x": 1}})
    assert h1 == h2 and h1 != h3


def test_one_generator_reused_sees_every_change_that_no_torch_hook_reports() -> None:
    """The generator keeps its last result; a change made without any registration hook (an
    attribute in extra_repr, a module deleted, a same-size reshape, a dtype swap) still moves the hash,
    and undoing it gives the first hash back."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Dropout(0.1), torch.nn.ReLU(), torch.nn.Linear(16, 4)
    )
    gen = ExperimentHashGenerator()

    def now() -> str:
        return gen.identity({"model": model}, {"config": HP}).exp_hash

    first = now()
    assert now() == first  # the kept result
    model[1].p = 0.3  # only extra_repr() shows it
    dropout = now()
    assert dropout != first
    model[1].p = 0.1
    assert now() == first
    relu = model[2]
    del model[2]  # Sequential.__delitem__: no registration hook runs
    assert now() not in (first, dropout)
    model.insert(2, relu)
    assert now() == first
    weight = model[0].weight
    weight.data = weight.data.reshape(8, 16)  # same bytes, another shape
    assert now() != first
    weight.data = weight.data.reshape(16, 8)
    assert now() == first
    weight.data = weight.data.to(torch.float16)
    assert now() != first
    assert ExperimentHashGenerator().identity({"model": model}, {"config": HP}).exp_hash == now()


class _HidesBias(torch.nn.Linear):
    """A module that lists its tensors through overrides (as some library modules do)."""

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):  # type: ignore[no-untyped-def,override]
        return ((n, p) for n, p in super().named_parameters(prefix, recurse, remove_duplicate) if n != "bias")

    def named_buffers(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):  # type: ignore[no-untyped-def,override]
        yield "scale", torch.ones(2)


def test_a_type_that_overrides_named_parameters_is_asked_through_its_override() -> None:
    from weightslab.system.identity import architecture_signature

    (record,) = architecture_signature(_HidesBias(3, 2))
    assert record["params"] == [["weight", [2, 3], "float32"]]
    assert record["buffers"] == [["scale", [2], "float32"]]
    (plain,) = architecture_signature(torch.nn.Linear(3, 2))
    assert plain["params"] == [["weight", [2, 3], "float32"], ["bias", [2], "float32"]]


def test_per_type_cache_does_not_keep_classes_alive() -> None:
    import gc
    import weakref

    from weightslab.system import identity

    def traced_like() -> type:
        class PerInstance(torch.nn.Module):  # torch.fx and parametrize make a class per instance
            pass

        return PerInstance

    cls = traced_like()
    ident(cls())
    ref = weakref.ref(cls)
    assert cls in identity._TYPES
    del cls
    gc.collect()
    assert ref() is None
