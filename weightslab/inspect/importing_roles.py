"""What ``weightslab import`` reads: the source formats, and the keys each role has in a torch.save dict.

Names only, apart from the readers (:mod:`.importing_formats`), so that the command's parser can list
them without loading the storage layer.
"""

from __future__ import annotations

from typing import Literal

ImportFormat = Literal["auto", "torch", "lightning", "hf", "safetensors"]
FORMATS: tuple[str, ...] = ("auto", "torch", "lightning", "hf", "safetensors")
FORMATS_HELP = (
    "a torch.save file (a state_dict, or a dict holding one), a Lightning .ckpt file, a Hugging Face "
    "Trainer checkpoint-N/ folder, or a .safetensors file"
)

# Key names of the common torch.save layouts, most specific first; ``keys=`` overrides each role.
ROLE_KEYS: dict[str, tuple[str, ...]] = {
    "model": ("model_state_dict", "model_state", "model", "state_dict", "net", "network", "module"),
    "optimizer": ("optimizer_state_dict", "optimizer_state", "optimizer", "optim", "opt"),
    "scheduler": ("scheduler_state_dict", "lr_scheduler_state_dict", "scheduler", "lr_scheduler"),
    "step": ("global_step", "step", "iteration"),
    "epoch": ("epoch",),
    "metrics": ("metrics",),
    "loss": ("loss",),
}

__all__ = ["FORMATS", "FORMATS_HELP", "ROLE_KEYS", "ImportFormat"]
