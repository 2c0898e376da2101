"""The concept adapter: a Perceiver that compresses the ear's frames into a few concept vectors per window.

    the ear's frames [clips, frames, feature_size]       (Whisper's encoder: 50 frames/s, 512 wide for base)
      -> split into windows of `window_frames`            [clips * windows, window_frames, width]
      -> `concepts_per_window` queries read each window (cross-attention, self-attention, MLP) x layers; query i
         starts from the frames of the i-th stretch of the window, pooled, plus a learnt vector
      -> concepts [clips, windows * concepts_per_window, thinker_hidden]   (e.g. 6 concepts/s)

Concept i of a window stands for the tokens spoken in the i-th stretch of it: training gives each concept the thinker's
embedding of the token spoken there, or of a blank token where none was (`concept_labels`), so the thinker reads the
concepts as the words of the question, in order, with blanks between them.

Windows never look at each other, so a window's concepts are final as soon as its frames exist: the adapter
streams, and feeding audio in pieces gives the same concepts as feeding it whole.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_layers import GradientCheckpointingLayer


class MultiHeadAttention(nn.Module):
    """Multi-head attention through `scaled_dot_product_attention` (SDPA); queries and keys may differ."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.kv_proj = nn.Linear(hidden_size, 2 * hidden_size)
        self.o_proj = nn.Linear(hidden_size, hidden_size)
        self.dropout = dropout

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """queries `[n, q, width]`, keys `[n, k, width]`, key_mask `[n, k]` (True = attend) -> `[n, q, width]`."""
        n, q_len, width = queries.shape
        q = self.q_proj(queries).view(n, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv_proj(keys).view(n, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(out.transpose(1, 2).reshape(n, q_len, width))


class PerceiverBlock(GradientCheckpointingLayer):
    """Pre-norm block: concepts read the window's frames, then each other, then an MLP."""

    def __init__(self, config):
        super().__init__()
        width, eps = config.hidden_size, config.layer_norm_eps
        self.cross_norm = nn.LayerNorm(width, eps=eps)
        self.frame_norm = nn.LayerNorm(width, eps=eps)
        self.cross_attention = MultiHeadAttention(width, config.num_attention_heads, config.dropout)
        self.self_norm = nn.LayerNorm(width, eps=eps)
        self.self_attention = MultiHeadAttention(width, config.num_attention_heads, config.dropout)
        self.mlp_norm = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential(
            nn.Linear(width, config.intermediate_size),
            nn.GELU(),
            nn.Linear(config.intermediate_size, width),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, concepts: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """concepts `[windows, concepts_per_window, width]`, frames `[windows, window_frames, width]`."""
        concepts = concepts + self.dropout(
            self.cross_attention(self.cross_norm(concepts), self.frame_norm(frames), frame_mask)
        )
        normed = self.self_norm(concepts)
        concepts = concepts + self.dropout(self.self_attention(normed, normed))
        return concepts + self.dropout(self.mlp(self.mlp_norm(concepts)))


class ConceptAdapter(nn.Module):
    """The ear's frames -> concept vectors in the thinker's embedding space.

    Args:
        config: the `ConceptAdapterConfig`.
        latent_dim: width of the ear's frames (Whisper base 512; a codec's quantised latent: EnCodec 128, Mimi 512,
            Lyra 64).
        window_frames: codec frames per window (window_seconds x frame rate).
        output_size: the thinker's hidden size.
        num_style_concepts: learned style queries for a reference voice (`style`); 0 for none.
        voice_latent_dim, voice_window_frames: where a reference voice comes as other frames than speech (a
            codec's latents when the ear is a speech encoder), their width and frames per window; None: the same as
            speech.
    """

    def __init__(self, config, latent_dim: int, window_frames: int, output_size: int, num_style_concepts: int = 0,
                 voice_latent_dim: int | None = None, voice_window_frames: int | None = None):
        super().__init__()
        self.window_frames = window_frames
        self.concepts_per_window = config.concepts_per_window
        width = config.hidden_size
        # Ears' frames come at very different scales (and a random codec's are tiny): normalise each frame.
        self.latent_norm = nn.LayerNorm(latent_dim, eps=config.layer_norm_eps)
        self.frame_proj = nn.Linear(latent_dim, width)
        self.frame_position = nn.Parameter(torch.zeros(window_frames, width))
        if voice_latent_dim is not None:
            self.voice_window_frames = voice_window_frames or window_frames
            self.voice_norm = nn.LayerNorm(voice_latent_dim, eps=config.layer_norm_eps)
            self.voice_frame_proj = nn.Linear(voice_latent_dim, width)
            self.voice_frame_position = nn.Parameter(torch.zeros(self.voice_window_frames, width))
        else:
            self.voice_window_frames = window_frames
            self.voice_norm = self.voice_frame_proj = self.voice_frame_position = None
        self.queries = nn.Parameter(torch.zeros(config.concepts_per_window, width))
        # A voice is read by queries of its own: the content queries learn to drop what the thinker does not need
        # (pitch, timbre), which is exactly what the talker needs from a reference clip.
        self.style_queries = nn.Parameter(torch.zeros(num_style_concepts, width)) if num_style_concepts else None
        self.blocks = nn.ModuleList(PerceiverBlock(config) for _ in range(config.num_layers))
        self.out_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        # Into the thinker's embedding space: concepts are read there as if they were words.
        self.projection = nn.Sequential(nn.Linear(width, output_size), nn.GELU(), nn.Linear(output_size, output_size))

    def read_windows(self, latents: torch.Tensor, frame_mask: torch.Tensor | None, queries: torch.Tensor,
                     voice: bool = False):
        """Each window of frames read by `queries` `[q, width]` through the Perceiver blocks (`voice`: the frames
        are a reference voice's, read through the voice's own input projection where it has one).

        Returns:
            `[clips, windows, q, width]` (before the output norm and projection) and `window_real` `[clips, windows]`
            (a window holding at least one real frame is real).
        """
        clips, frames, _ = latents.shape
        own_input = voice and self.voice_frame_proj is not None
        window_frames = self.voice_window_frames if own_input else self.window_frames
        if frame_mask is None:
            frame_mask = torch.ones(clips, frames, dtype=torch.bool, device=latents.device)
        windows = -(-frames // window_frames)
        pad = windows * window_frames - frames
        if own_input:
            hidden = self.voice_frame_proj(self.voice_norm(latents))
        else:
            hidden = self.frame_proj(self.latent_norm(latents))
        hidden = F.pad(hidden, (0, 0, 0, pad)).view(clips * windows, window_frames, -1)
        mask = F.pad(frame_mask, (0, pad)).view(clips * windows, window_frames)
        hidden = hidden + (self.voice_frame_position if own_input else self.frame_position)
        window_real = mask.any(dim=-1)
        # A window of padding only has nothing to attend to; let it see frame 0 and drop its output.
        mask = mask.clone()
        mask[:, 0] |= ~window_real
        # Query i starts from the mean of the real frames in the window's i-th stretch (so concept i is about that
        # stretch of time; padding never counts, so a clip reads the same alone as in a padded batch).
        real = mask.to(hidden.dtype)[:, :, None] * window_real[:, None, None].to(hidden.dtype)
        sums = F.adaptive_avg_pool1d((hidden * real).transpose(1, 2), queries.shape[0]).transpose(1, 2)
        counts = F.adaptive_avg_pool1d(real.transpose(1, 2), queries.shape[0]).transpose(1, 2)
        read = queries + sums / counts.clamp(min=1e-6)
        for block in self.blocks:
            read = block(read, hidden, mask)
        return read.view(clips, windows, queries.shape[0], -1), window_real.view(clips, windows)

    def forward(self, latents: torch.Tensor, frame_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Concepts for each clip.

        Args:
            latents: `[clips, frames, latent_dim]` the ear's frames.
            frame_mask: `[clips, frames]` bool, True for real frames (clips are right-padded).

        Returns:
            concepts `[clips, windows * concepts_per_window, output_size]` and their mask
            `[clips, windows * concepts_per_window]`.
        """
        read, window_real = self.read_windows(latents, frame_mask, self.queries)
        clips, windows = window_real.shape
        concepts = self.projection(self.out_norm(read)).reshape(clips, windows * self.concepts_per_window, -1)
        return concepts, window_real.repeat_interleave(self.concepts_per_window, dim=1)

    def style(self, latents: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Style concepts of reference clips: every window read by the style queries, averaged over the clip's real
        windows, so a clip of any length gives the same number of vectors.

        Args:
            latents: `[clips, frames, latent_dim]`; frame_mask: `[clips, frames]` (True = real frame).

        Returns:
            `[clips, num_style_concepts, output_size]`.
        """
        if self.style_queries is None:
            raise ValueError("This concept adapter has no style queries (built with num_style_concepts=0).")
        read, window_real = self.read_windows(latents, frame_mask, self.style_queries, voice=True)
        weights = window_real.to(read.dtype)[:, :, None, None]
        pooled = (read * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.projection(self.out_norm(pooled))
