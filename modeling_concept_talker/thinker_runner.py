"""Running the thinker incrementally: prefill in pieces while the user speaks, then decode token by token.

A `ThinkerRunner` owns the thinker's key/value cache for one batch of conversations. Everything the thinker reads
goes through `append`: the concepts of each completed audio window, the rest of the prompt, and each generated
token. That one path serves streaming input, prefill and decoding alike.
"""

from __future__ import annotations

import torch
from torch import nn


class ThinkerRunner:
    """Reference runner on transformers' own forward and `DynamicCache`.

    Args:
        thinker: the `Qwen2ForCausalLM` (LoRA adapters, if any, are used as they are).
        batch_size: conversations run together.
    """

    def __init__(self, thinker: nn.Module, batch_size: int = 1):
        from transformers import DynamicCache

        self.thinker = thinker
        self.batch_size = batch_size
        self.cache = DynamicCache(config=thinker.config)
        self.mask = torch.zeros(batch_size, 0, dtype=torch.long, device=thinker.device)
        self.positions = torch.zeros(batch_size, dtype=torch.long, device=thinker.device)

    @property
    def length(self) -> int:
        """Positions held in the cache (padding included)."""
        return self.mask.shape[1]

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids `[batch, n]` -> input embeddings `[batch, n, hidden]`."""
        return self.thinker.get_input_embeddings()(token_ids)

    @torch.no_grad()
    def append(self, embeds: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Read `embeds` `[batch, n, hidden]` after what the cache holds.

        Args:
            embeds: input embeddings of the new positions.
            mask: `[batch, n]`, 0 for padding positions (left padding of a batch), default all 1.

        Returns:
            logits of the last new position `[batch, vocab]` (float32) and the last hidden states of all new
            positions `[batch, n, hidden]` (after the final norm).
        """
        batch, n, _ = embeds.shape
        if mask is None:
            mask = torch.ones(batch, n, dtype=torch.long, device=embeds.device)
        position_ids = self.positions[:, None] + mask.cumsum(-1) - 1
        position_ids = position_ids.clamp(min=0)
        self.positions = self.positions + mask.sum(-1)
        self.mask = torch.cat([self.mask, mask.to(self.mask)], dim=1)
        out = self.thinker.model(
            inputs_embeds=embeds.to(self.thinker.dtype),
            attention_mask=self.mask,
            position_ids=position_ids,
            cache=self.cache,
            use_cache=True,
        )
        hidden = out.last_hidden_state
        logits = self.thinker.lm_head(hidden[:, -1]).float()
        return logits, hidden
