"""The thinker's LoRA adapters (peft's, injected without a `PeftModel` wrapper, so the thinker stays a plain
transformers model whose weights keep their names), and which of the thinker's weights train.

    inject_lora(thinker, r=16, alpha=32, dropout=0.05, target_modules=[...])   wrap the target projections
    set_thinker_trainable(thinker, "lora")                                      only the LoRA weights train
    merge_lora(thinker)                                                         fold them in, plain Linear layers again
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init

THINKER_TRAINING = ("lora", "base", "full", "frozen")


def is_lora_layer(module: nn.Module) -> bool:
    """A layer peft wrapped with LoRA adapters (it holds `lora_A`, `lora_B` and the `base_layer` it wraps)."""
    return hasattr(module, "lora_A") and hasattr(module, "lora_B") and hasattr(module, "base_layer")


def init_lora_layer(module: nn.Module) -> None:
    """peft's initialisation: `A` Kaiming-uniform, `B` zero, so a fresh adapter changes nothing."""
    for name in module.lora_A:
        init.kaiming_uniform_(module.lora_A[name].weight, a=5**0.5)
        init.zeros_(module.lora_B[name].weight)


def inject_lora(thinker: nn.Module, r: int, alpha: int, dropout: float, target_modules) -> None:
    """Wrap `thinker`'s `target_modules` projections in LoRA adapters of rank `r` (scale `alpha / r`), in place."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:
        raise ImportError(
            "This checkpoint's thinker has LoRA adapters (lora_r > 0), which need peft: pip install peft==0.21.2 "
            "(or load a merged checkpoint, whose config has lora_r=0)."
        ) from err
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules))
    inject_adapter_in_model(config, thinker)


def has_lora(thinker: nn.Module) -> bool:
    return any(is_lora_layer(module) for module in thinker.modules())


@torch.no_grad()
def merge_lora(thinker: nn.Module) -> None:
    """Fold every LoRA adapter into its base layer's weight and put the base layer back in its place."""
    for name, module in list(thinker.named_modules()):
        if not is_lora_layer(module):
            continue
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = thinker.get_submodule(parent_name) if parent_name else thinker
        setattr(parent, child, module.get_base_layer())


def set_thinker_trainable(thinker: nn.Module, mode: str) -> None:
    """`mode`: `"lora"` (only the LoRA weights train), `"base"` (every weight but LoRA's), `"full"` or `"frozen"`."""
    if mode not in THINKER_TRAINING:
        raise ValueError(f"thinker must be 'lora', 'base', 'full' or 'frozen', got {mode!r}.")
    for name, parameter in thinker.named_parameters():
        is_lora = "lora_" in name
        parameter.requires_grad_(mode == "full" or (mode == "lora" and is_lora) or (mode == "base" and not is_lora))
