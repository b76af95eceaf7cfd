"""Model configurations: sizes under every alias, and parameter counts that match published models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from weightslab.analysis import analyze_config, estimate_parameter_count
from weightslab.errors import CheckpointFormatError, CheckpointNotFoundError

LLAMA_2_7B = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
    "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
    "vocab_size": 32000, "max_position_embeddings": 4096, "tie_word_embeddings": False,
    "torch_dtype": "float16",
}  # fmt: skip
PYTHIA_160M = {
    "model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "hidden_size": 768,
    "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12, "vocab_size": 50304,
    "max_position_embeddings": 2048, "tie_word_embeddings": False,
}  # fmt: skip


@pytest.mark.parametrize(
    ("config", "published"),
    [(LLAMA_2_7B, 6_738_415_616), (PYTHIA_160M, 162_322_944)],  # the counts their model cards give
)
def test_parameter_estimate_is_exact_for_llama_and_pythia(config: dict[str, object], published: int) -> None:
    assert estimate_parameter_count(config) == published


def test_grouped_query_attention_and_tied_embeddings_shrink_the_estimate() -> None:
    gqa = dict(LLAMA_2_7B, num_key_value_heads=8)
    per_layer_saving = 2 * 4096 * (4096 - 8 * 128)  # k and v projections to 8 heads of 128
    assert estimate_parameter_count(gqa) == 6_738_415_616 - 32 * per_layer_saving
    tied = dict(LLAMA_2_7B, tie_word_embeddings=True)
    assert estimate_parameter_count(tied) == 6_738_415_616 - 32000 * 4096


def test_estimate_needs_the_sizes_and_a_model_type() -> None:
    assert estimate_parameter_count({"model_type": "llama", "hidden_size": 8}) is None
    assert estimate_parameter_count({"hidden_size": 8, "num_hidden_layers": 2, "vocab_size": 10}) is None


def test_olmo_style_aliases(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({
        "model_type": "olmo", "d_model": 2048, "n_layers": 16, "n_heads": 16, "mlp_hidden_size": 16384,
        "activation_type": "swiglu", "vocab_size": 50280, "embedding_size": 50304,
        "max_sequence_length": 2048, "weight_tying": True, "layer_norm_type": "default", "rope": True,
    }))  # fmt: skip
    c = analyze_config(path)
    assert (c.model_type, c.hidden_size, c.num_layers, c.num_attention_heads) == ("olmo", 2048, 16, 16)
    assert (c.intermediate_size, c.vocab_size, c.max_position_embeddings) == (16384, 50280, 2048)
    assert c.tie_word_embeddings is True and c.source == str(path)
    assert c.values["rope"] is True
    # OLMo-1B: fused gate+up of 16384, a down projection of 8192, non-parametric LayerNorm, tied embeddings.
    assert c.estimated_parameters == 50280 * 2048 + 16 * (4 * 2048 * 2048 + 2048 * 16384 + 8192 * 2048)


def test_gpt2_aliases() -> None:
    from weightslab.analysis.config import analyze_config_dict

    gpt2 = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257}
    c = analyze_config_dict({**gpt2, "n_positions": 1024, "tie_word_embeddings": True})
    assert (c.hidden_size, c.num_layers, c.num_attention_heads, c.max_position_embeddings) == (
        768,
        12,
        12,
        1024,
    )
    assert c.estimated_parameters == 124_439_808  # GPT-2 small


def test_bad_config_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        analyze_config(tmp_path / "config.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CheckpointFormatError, match="is not valid JSON"):
        analyze_config(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(CheckpointFormatError, match="holds a JSON list, expected an object"):
        analyze_config(bad)
