"""Weights analysis of safetensors shards and pytorch_model.bin files: per tensor, per layer, in total."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from weightslab.analysis import analyze_weight_files
from weightslab.analysis.weights import layer_group, select_weight_files
from weightslab.errors import CheckpointFormatError, CheckpointNotFoundError


def _model_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model.embed_tokens.weight": torch.randn(50, 8, generator=g),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8, generator=g),
        "model.layers.0.mlp.up_proj.weight": torch.randn(16, 8, generator=g).to(torch.bfloat16),
        "model.layers.1.self_attn.q_proj.weight": torch.randn(8, 8, generator=g),
        "model.layers.1.mlp.up_proj.weight": torch.randn(16, 8, generator=g),
        "model.norm.weight": torch.ones(8),
        "lm_head.weight": torch.randn(50, 8, generator=g),
        "step_counter": torch.tensor(7),
    }


def _norm(tensors: list[torch.Tensor]) -> float:
    return float(torch.cat([t.double().reshape(-1) for t in tensors]).norm())


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "bin"])
def test_statistics_per_tensor_group_and_total(tmp_path: Path, layout: str) -> None:
    state = _model_state()
    names = list(state)
    if layout == "safetensors":
        files = [tmp_path / "model.safetensors"]
        save_file(state, str(files[0]))
    elif layout == "sharded":
        files = [tmp_path / "model-00001-of-00002.safetensors", tmp_path / "model-00002-of-00002.safetensors"]
        save_file({n: state[n] for n in names[:3]}, str(files[0]))
        save_file({n: state[n] for n in names[3:]}, str(files[1]))
    else:
        files = [tmp_path / "pytorch_model.bin"]
        torch.save(state, files[0])

    w = analyze_weight_files(files, chunk_elements=50)  # small chunks: several slices per tensor
    assert w.files == tuple(str(f) for f in files)
    assert w.file_bytes == sum(f.stat().st_size for f in files)
    assert w.num_tensors == len(state)
    assert w.total_parameters == sum(t.numel() for t in state.values()) == 1193
    assert w.stats.norm == pytest.approx(_norm(list(state.values())), rel=1e-9)

    by_name = {t.name: t for t in w.tensors}
    embed = by_name["model.embed_tokens.weight"]
    assert embed.shape == (50, 8) and embed.dtype == "float32"
    assert embed.stats.norm == pytest.approx(
        float(state["model.embed_tokens.weight"].double().norm()), rel=1e-9
    )
    assert embed.stats.std == pytest.approx(
        float(state["model.embed_tokens.weight"].double().std(unbiased=False))
    )
    assert by_name["model.layers.0.mlp.up_proj.weight"].dtype == "bfloat16"
    assert by_name["step_counter"].shape == () and by_name["step_counter"].stats.mean == 7.0

    groups = {g.name: g for g in w.layer_groups}
    assert set(groups) == {
        "model.embed_tokens",
        "model.layers.0",
        "model.layers.1",
        "model.norm",
        "lm_head",
        "step_counter",
    }
    layer0 = [state[n] for n in names if n.startswith("model.layers.0.")]
    assert groups["model.layers.0"].num_tensors == 2
    assert groups["model.layers.0"].stats.norm == pytest.approx(_norm(layer0), rel=1e-9)
    assert groups["model.norm"].stats.mean == 1.0 and groups["model.norm"].stats.std == 0.0


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("model.layers.3.mlp.up_proj.weight", "model.layers.3"),
        ("gpt_neox.layers.10.attention.dense.bias", "gpt_neox.layers.10"),
        ("transformer.h.5.attn.c_attn.weight", "transformer.h.5"),
        ("0.weight", "0"),
        ("lm_head.weight", "lm_head"),
        ("model.embed_tokens.weight", "model.embed_tokens"),
        ("scale", "scale"),
    ],
)
def test_layer_groups(name: str, group: str) -> None:
    assert layer_group(name) == group


def test_weight_file_selection_prefers_safetensors() -> None:
    files = ["config.json", "pytorch_model.bin", "model.safetensors", "training/optim.pt", "README.md"]
    assert select_weight_files(files) == ["model.safetensors"]
    assert select_weight_files(["pytorch_model-00002-of-00002.bin", "pytorch_model-00001-of-00002.bin"]) == [
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
    ]
    assert select_weight_files(["config.json", "training/optim.pt"]) == []


def test_bad_weight_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        analyze_weight_files([tmp_path / "model.safetensors"])
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00" * 4)
    with pytest.raises(CheckpointFormatError, match="not a valid safetensors file"):
        analyze_weight_files([bad])
    not_a_dict = tmp_path / "pytorch_model.bin"
    torch.save([torch.ones(2)], not_a_dict)
    with pytest.raises(CheckpointFormatError, match="holds a list, expected a state dict"):
        analyze_weight_files([not_a_dict])
