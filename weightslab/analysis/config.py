"""Analysis of a model configuration (``config.json``): sizes, and an estimated parameter count.

The field names differ between model families (``hidden_size`` / ``n_embd`` / ``d_model``, ...); every
known alias is read. Nothing in the file is executed: it is parsed with ``json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weightslab.analysis.models import ConfigAnalysis
from weightslab.errors import CheckpointFormatError, CheckpointNotFoundError

_ALIASES: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim", "embed_dim"),
    "num_layers": ("num_hidden_layers", "n_layer", "n_layers", "num_layers"),
    "num_attention_heads": ("num_attention_heads", "n_head", "n_heads", "num_heads"),
    "num_key_value_heads": ("num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num"),
    "intermediate_size": ("intermediate_size", "n_inner", "mlp_hidden_size", "ffn_dim", "ffn_hidden_size"),
    "vocab_size": ("vocab_size", "embedding_size", "padded_vocab_size"),
    "max_position_embeddings": ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx"),
}

# Families whose MLP is gated (SwiGLU: gate, up and down projections) rather than up + down.
_GATED_MLP = frozenset(
    {"llama", "mistral", "mixtral", "qwen2", "qwen3", "olmo", "olmo2", "olmo3", "gemma", "gemma2", "phi3"}
)
# Families with biases on every linear layer and LayerNorm (weight + bias) rather than RMSNorm.
_BIASED = frozenset({"gpt2", "gpt_neox", "gpt_neo", "gptj", "opt", "bert", "roberta", "phi"})
# Families with learned absolute position embeddings.
_LEARNED_POSITIONS = frozenset({"gpt2", "gpt_neo", "opt", "bert", "roberta"})


def analyze_config(path: str | Path) -> ConfigAnalysis:
    """Analyse a ``config.json`` file.

    Raises:
        CheckpointNotFoundError: ``path`` is not a file.
        CheckpointFormatError: the file is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"config file {path} does not exist or is not a file; check the path")
    try:
        raw = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(
            f"config file {path} is not valid JSON ({exc}); download it again or fix the file"
        ) from exc
    if not isinstance(raw, Mapping):
        raise CheckpointFormatError(
            f"config file {path} holds a JSON {type(raw).__name__}, expected an object"
        )
    return analyze_config_dict(raw, source=str(path))


def analyze_config_dict(config: Mapping[str, Any], *, source: str = "") -> ConfigAnalysis:
    """Analyse a configuration already parsed into a mapping (``config.json`` or a hyperparameter set)."""
    sizes = {field: _first_int(config, names) for field, names in _ALIASES.items()}
    model_type = config.get("model_type")
    architectures = config.get("architectures")
    tie = config.get("tie_word_embeddings", config.get("weight_tying"))
    dtype = config.get("torch_dtype", config.get("dtype"))
    return ConfigAnalysis(
        available=True,
        source=source,
        model_type=str(model_type) if model_type is not None else None,
        architectures=tuple(str(a) for a in architectures) if isinstance(architectures, list) else (),
        hidden_size=sizes["hidden_size"],
        num_layers=sizes["num_layers"],
        num_attention_heads=sizes["num_attention_heads"],
        num_key_value_heads=sizes["num_key_value_heads"],
        intermediate_size=sizes["intermediate_size"],
        vocab_size=sizes["vocab_size"],
        max_position_embeddings=sizes["max_position_embeddings"],
        tie_word_embeddings=tie if isinstance(tie, bool) else None,
        torch_dtype=str(dtype) if dtype is not None else None,
        estimated_parameters=estimate_parameter_count(config),
        values={str(k): v for k, v in config.items() if v is None or isinstance(v, (bool, int, float, str))},
    )


def estimate_parameter_count(config: Mapping[str, Any]) -> int | None:
    """Estimate a decoder transformer's parameter count from its configuration; ``None`` without the sizes.

    Counts token embeddings (and an untied output projection), attention with grouped key/value heads,
    the MLP (gated for the Llama/OLMo families, plain otherwise), norms, and for the GPT-2/NeoX
    families the biases and learned position embeddings. Exact for Llama and GPT-NeoX (Pythia)
    checkpoints; an estimate for other families. A configuration without ``model_type`` (one that
    does not describe a transformer, such as a run's own hyperparameters) gets ``None``.
    """
    hidden = _first_int(config, _ALIASES["hidden_size"])
    layers = _first_int(config, _ALIASES["num_layers"])
    vocab = _first_int(config, _ALIASES["vocab_size"])
    model_type = str(config.get("model_type") or "").lower()
    if not hidden or not layers or not vocab or not model_type:
        return None
    heads = _first_int(config, _ALIASES["num_attention_heads"]) or 1
    kv_heads = _first_int(config, _ALIASES["num_key_value_heads"]) or heads
    head_dim = _first_int(config, ("head_dim",)) or hidden // heads
    kv_dim = kv_heads * head_dim
    biased = model_type in _BIASED

    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_dim
    if biased:
        attention += heads * head_dim + 2 * kv_dim + hidden

    mlp_ratio = _first_int(config, ("mlp_ratio",))
    inner = _first_int(config, _ALIASES["intermediate_size"]) or (mlp_ratio or 4) * hidden
    activation = str(config.get("activation_type") or config.get("hidden_act") or "").lower()
    if "mlp_hidden_size" in config and activation == "swiglu":
        # OLMo (hf_olmo) stores the fused gate+up width; the down projection takes half of it.
        mlp = hidden * inner + (inner // 2) * hidden
    elif model_type in _GATED_MLP or activation == "swiglu":
        mlp = 3 * hidden * inner
    else:
        mlp = 2 * hidden * inner
        if biased:
            mlp += inner + hidden

    norm = 2 * hidden if biased else hidden
    if str(config.get("layer_norm_type") or "").lower() == "default" and "d_model" in config:
        norm = 0  # OLMo 1's non-parametric LayerNorm
    per_layer = attention + mlp + 2 * norm

    tied = config.get("tie_word_embeddings", config.get("weight_tying", False)) is True
    embeddings = vocab * hidden * (1 if tied else 2)
    if model_type in _LEARNED_POSITIONS:
        embeddings += (_first_int(config, _ALIASES["max_position_embeddings"]) or 0) * hidden
    return embeddings + layers * per_layer + norm


def _first_int(config: Mapping[str, Any], names: tuple[str, ...]) -> int | None:
    for name in names:
        value = config.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
