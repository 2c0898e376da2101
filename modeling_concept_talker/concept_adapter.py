"""The concept adapter (`ConceptTalkerAdapterModel`): a Perceiver that compresses the ear's frames into a few concept
vectors per window.

    the ear's frames [clips, frames, feature_size]       (Whisper's encoder: 50 frames/s, 512 wide for base)
      -> split into windows of `window_frames`            [clips * windows, window_frames, width]
      -> `concepts_per_window` queries read each window (cross-attention, self-attention, MLP) x layers; query i
         starts from the frames of the i-th stretch of the window, pooled, plus a learnt vector
      -> concepts [clips, windows * concepts_per_window, thinker_hidden]   (e.g. 6 concepts/s)

Concept i of a window stands for the tokens spoken in the i-th stretch of it: training gives each concept the thinker's
embedding of the token spoken there, or of a blank token where none was (`concept_labels`), so the thinker reads the
concepts as the words of the question, in order, with blanks between them.

With `readout: sound` the adapter also holds a fixed table of how each token sounds (`token_sounds`
`[sound tokens, thinker_hidden]`, from `phonemes.token_sound_table`, and the tokens' ids, `sound_tokens`): a concept is
then read as the token whose sound it is nearest, and the thinker is given that token's embedding.

Windows never look at each other, so a window's concepts are final as soon as its frames exist: the adapter
streams, and feeding audio in pieces gives the same concepts as feeding it whole.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration_concept_talker import ConceptAdapterConfig


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


class ConceptTalkerAdapterModel(PreTrainedModel):
    """The ear's frames -> concept vectors in the thinker's embedding space; a reference voice's codec latents ->
    style concepts in the same space.

    Built by `ConceptTalkerForConditionalGeneration` from `config.adapter_config`, or alone from a
    `ConceptAdapterConfig`.

    Args:
        config: the `ConceptAdapterConfig`, its sizes from the other parts filled in (`feature_size`,
            `window_frames` and `thinker_hidden_size`; `num_style_concepts`, `voice_feature_size` and
            `voice_window_frames` where a voice is read; a `ConceptTalkerConfig` fills them in).
    """

    config_class = ConceptAdapterConfig
    config: ConceptAdapterConfig
    base_model_prefix = "concept_adapter"
    main_input_name = "latents"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["PerceiverBlock"]

    def __init__(self, config: ConceptAdapterConfig):
        super().__init__(config)
        if config.feature_size is None or config.window_frames is None or config.thinker_hidden_size is None:
            raise ValueError("The adapter's feature_size, window_frames and thinker_hidden_size come from the ear and "
                             "the thinker: build it from a ConceptTalkerConfig's adapter_config.")
        width = config.hidden_size
        # Ears' frames come at very different scales (and a random codec's are tiny): normalise each frame.
        self.latent_norm = nn.LayerNorm(config.feature_size, eps=config.layer_norm_eps)
        self.frame_proj = nn.Linear(config.feature_size, width)
        self.frame_position = nn.Parameter(torch.zeros(config.window_frames, width))
        if config.voice_feature_size:
            if config.voice_window_frames is None:
                raise ValueError("A voice input of its own (voice_feature_size) needs voice_window_frames, the "
                                 "codec's frames per window.")
            self.voice_norm = nn.LayerNorm(config.voice_feature_size, eps=config.layer_norm_eps)
            self.voice_frame_proj = nn.Linear(config.voice_feature_size, width)
            self.voice_frame_position = nn.Parameter(torch.zeros(config.voice_window_frames, width))
        else:
            self.voice_norm = self.voice_frame_proj = self.voice_frame_position = None
        self.queries = nn.Parameter(torch.zeros(config.concepts_per_window, width))
        # A voice is read by queries of its own: the content queries learn to drop what the thinker does not need
        # (pitch, timbre), which is exactly what the talker needs from a reference clip.
        self.style_queries = (nn.Parameter(torch.zeros(config.num_style_concepts, width))
                              if config.num_style_concepts else None)
        self.blocks = nn.ModuleList(PerceiverBlock(config) for _ in range(config.num_layers))
        self.out_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        # Into the thinker's embedding space: concepts are read there as if they were words.
        output_size = config.thinker_hidden_size
        self.projection = nn.Sequential(nn.Linear(width, output_size), nn.GELU(), nn.Linear(output_size, output_size))
        if config.readout == "sound":
            self.register_buffer("token_sounds", torch.zeros(config.sound_vocabulary_size, output_size))
            self.register_buffer("sound_tokens", torch.zeros(config.sound_vocabulary_size, dtype=torch.long))
        else:
            self.token_sounds = self.sound_tokens = None
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)  # linear layers N(0, 0.02), layer norms 1
        if isinstance(module, ConceptTalkerAdapterModel):
            init.normal_(module.queries, std=0.02)
            if module.style_queries is not None:
                init.normal_(module.style_queries, std=0.02)
            init.normal_(module.frame_position, std=0.02)
            if module.voice_frame_position is not None:
                init.normal_(module.voice_frame_position, std=0.02)

    def set_token_sounds(self, token_ids: torch.Tensor, table: torch.Tensor) -> None:
        """Hold `table` `[tokens, thinker_hidden]` (unit rows, `phonemes.token_sound_table`) as how the tokens
        `token_ids` `[tokens]` sound: the tokens a concept can be read as (`readout: sound`)."""
        if self.config.readout != "sound":
            raise ValueError("This adapter reads concepts through the thinker's embeddings (readout='thinker'): "
                             "set adapter_config.readout='sound' to read them by sound.")
        if table.shape != (len(token_ids), self.config.thinker_hidden_size):
            raise ValueError(f"The sound table has shape {tuple(table.shape)}; it needs one "
                             f"{self.config.thinker_hidden_size}-wide row per token ({len(token_ids)}).")
        device, dtype = self.projection[0].weight.device, self.projection[0].weight.dtype
        for name, value in (("token_sounds", table.to(device, dtype)), ("sound_tokens", token_ids.to(device, torch.long))):
            if name in self._buffers:
                setattr(self, name, value)
            else:  # an adapter switched to the sound readout after it was built
                self.__dict__.pop(name, None)
                self.register_buffer(name, value)
        self.config.sound_vocabulary_size = len(token_ids)

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
        window_frames = self.config.voice_window_frames if own_input else self.config.window_frames
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
            latents: `[clips, frames, feature_size]` the ear's frames.
            frame_mask: `[clips, frames]` bool, True for real frames (clips are right-padded).

        Returns:
            concepts `[clips, windows * concepts_per_window, thinker_hidden_size]` and their mask
            `[clips, windows * concepts_per_window]`.
        """
        read, window_real = self.read_windows(latents, frame_mask, self.queries)
        clips, windows = window_real.shape
        concepts = self.projection(self.out_norm(read)).reshape(clips, windows * self.config.concepts_per_window, -1)
        return concepts, window_real.repeat_interleave(self.config.concepts_per_window, dim=1)

    def style(self, latents: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Style concepts of reference clips: every window read by the style queries, averaged over the clip's real
        windows, so a clip of any length gives the same number of vectors.

        Args:
            latents: `[clips, frames, voice_feature_size]` a reference voice's codec latents (`[clips, frames,
                feature_size]` where the voice is read through the speech input); frame_mask: `[clips, frames]`
                (True = real frame).

        Returns:
            `[clips, num_style_concepts, thinker_hidden_size]`.
        """
        if self.style_queries is None:
            raise ValueError("This concept adapter has no style queries (adapter_config.num_style_concepts=0).")
        read, window_real = self.read_windows(latents, frame_mask, self.style_queries, voice=True)
        weights = window_real.to(read.dtype)[:, :, None, None]
        pooled = (read * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.projection(self.out_norm(pooled))
