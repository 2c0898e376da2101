"""The talker: a small causal transformer that writes audio codes from the thinker's states.

Its sequence interleaves thinker states and audio steps by the read-R / write-W schedule (`schedule.py`). At each
audio step it predicts every codebook at once, one head per codebook, with MusicGen's delay pattern: codebook k
lags k steps, so a frame is complete K - 1 steps after its first codebook.

Ids in each codebook: `0 .. codebook_size - 1` are codes, `codebook_size` is end-of-audio (EOS) and
`codebook_size + 1` is begin/filler (BOS). Heads predict codes and EOS; BOS is only ever an input.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_layers import GradientCheckpointingLayer

from .pitch import VOICE_PITCH_FEATURES, voice_pitch_features
from .schedule import ReadWriteSchedule

IGNORE_INDEX = -100

# Frames left until the end of audio, as an audio step is told them (`duration_conditioning`): exact from 1 to 15,
# then in bins about 25% wide. Id 0: not known yet (the reply text has not all been read); id 1: none left.
COUNTDOWN_EDGES = torch.tensor(
    list(range(1, 17)) + sorted({round(16 * 1.25**i) for i in range(1, 25)} - set(range(1, 17)))
)
# Each reply token's predicted duration starts near 10 frames (200 ms at 50 Hz, about speech's pace).
DURATION_OFFSET = math.log(math.expm1(10.0))


def countdown_ids(remaining: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Frames remaining (any integer shape) and whether they are known yet -> countdown embedding ids."""
    edges = COUNTDOWN_EDGES.to(remaining.device)
    return torch.where(known, 1 + torch.bucketize(remaining, edges, right=True), 0)


def build_delay_pattern(codes: torch.Tensor, lengths: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Talker inputs and targets for a batch of frames, with the delay pattern and an end-of-audio step.

    For frames of length M = 3 and K = 3 codebooks (c = code, E = EOS, B = BOS, - = ignored target):

        targets (delayed codes)          inputs (targets shifted right by one step, fillers made explicit)
        step:  0  1  2  3  4  5           step:  0  1  2  3  4  5
        k=0:   c0 c1 c2 E  -  -           k=0:   B  c0 c1 c2 E  E
        k=1:   -  c0 c1 c2 E  -           k=1:   B  B  c0 c1 c2 E
        k=2:   -  -  c0 c1 c2 E           k=2:   B  B  B  c0 c1 c2

    Args:
        codes: `[batch, codebooks, frames]` codec codes (right padding arbitrary).
        lengths: `[batch]` number of real frames in each row.
        codebook_size: entries per codebook (EOS = codebook_size, BOS = codebook_size + 1).

    Returns:
        `inputs` `[batch, codebooks, frames + codebooks]` and `targets` of the same shape (IGNORE_INDEX where no
        loss applies). Row b has `lengths[b] + codebooks` audio steps.
    """
    batch, num_codebooks, frames = codes.shape
    eos, bos = codebook_size, codebook_size + 1
    steps = frames + num_codebooks
    column = torch.arange(steps, device=codes.device)[None, None, :]
    k = torch.arange(num_codebooks, device=codes.device)[None, :, None]
    frame = column - k  # which frame each (codebook, step) cell holds
    length = lengths.to(codes.device)[:, None, None]
    gathered = torch.gather(codes, 2, frame.clamp(0, max(frames - 1, 0)).expand(batch, -1, -1))
    filled = torch.where(frame < 0, bos, torch.where(frame < length, gathered, eos))
    targets = torch.where((frame >= 0) & (frame <= length), filled, IGNORE_INDEX)
    inputs = torch.cat([torch.full_like(filled[..., :1], bos), filled[..., :-1]], dim=-1)
    return inputs, targets


def undelay_codes(delayed: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Inverse of the delay: `[batch, codebooks, steps]` -> frames `[batch, codebooks, num_frames]`
    (codebook k of frame f sits at step f + k)."""
    num_codebooks = delayed.shape[1]
    return torch.stack([delayed[:, k, k : k + num_frames] for k in range(num_codebooks)], dim=1)


def prompt_states(hidden: torch.Tensor, embeds: torch.Tensor, ends: torch.Tensor, count: int,
                  starts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The thinker states of the last `count` prompt positions, paired as the talker reads reply tokens: for
    position p, the thinker's last hidden state at p - 1 and the input embedding at p.

    Args:
        hidden: `[batch, length, thinker_hidden]` the thinker's last hidden states.
        embeds: `[batch, length, thinker_hidden]` its input embeddings (concepts at audio slots).
        ends: `[batch]` where each row's prompt ends (its first reply position, or the length when generating).
        count: positions to take.
        starts: `[batch]` each row's first real position (left padding), default 0. A prompt shorter than `count`
            repeats its first usable position.

    Returns:
        states and embeddings, `[batch, count, thinker_hidden]` each.
    """
    starts = torch.zeros_like(ends) if starts is None else starts.to(ends.device)
    offsets = torch.arange(-count, 0, device=ends.device)
    positions = torch.maximum(ends[:, None] + offsets[None, :], starts[:, None] + 1).clamp(1, hidden.shape[1] - 1)
    width = hidden.shape[-1]
    states = torch.gather(hidden, 1, (positions - 1)[..., None].expand(-1, -1, width))
    return states, torch.gather(embeds, 1, positions[..., None].expand(-1, -1, width))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        return 1.0 / self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions `[seq]` -> cos, sin `[seq, head_dim]`."""
        angles = positions.float()[:, None] * self.inv_freq[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


class TalkerCache:
    """A preallocated key/value cache for one talker sequence (batch 1 or several in lock step).

    `keys[layer]`, `values[layer]`: `[batch, heads, max_length, head_dim]`; `length` positions are filled.
    """

    def __init__(self, num_layers: int, batch: int, heads: int, max_length: int, head_dim: int, dtype, device):
        shape = (batch, heads, max_length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.length = 0
        self.max_length = max_length


class TalkerAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.dropout = config.dropout

    def forward(self, hidden, cos, sin, cache: TalkerCache | None = None, layer: int = 0) -> torch.Tensor:
        batch, length, width = hidden.shape
        q, k, v = self.qkv_proj(hidden).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is None:
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        else:
            start = cache.length
            cache.keys[layer][:, :, start : start + length] = k
            cache.values[layer][:, :, start : start + length] = v
            keys = cache.keys[layer][:, :, : start + length]
            values = cache.values[layer][:, :, : start + length]
            if length == 1:
                out = F.scaled_dot_product_attention(q, keys, values)
            else:
                # New positions see the whole past and, among themselves, only earlier ones.
                mask = torch.ones(length, start + length, dtype=torch.bool, device=hidden.device).tril(start)
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, width))


class TalkerBlock(GradientCheckpointingLayer):
    def __init__(self, config):
        super().__init__()
        self.attention_norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.attention = TalkerAttention(config)
        self.mlp_norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden, cos, sin, cache: TalkerCache | None = None, layer: int = 0) -> torch.Tensor:
        hidden = hidden + self.dropout(self.attention(self.attention_norm(hidden), cos, sin, cache, layer))
        gate, up = self.gate_up_proj(self.mlp_norm(hidden)).chunk(2, dim=-1)
        return hidden + self.dropout(self.down_proj(F.silu(gate) * up))


class Talker(nn.Module):
    """Thinker states (+ optional style concepts and prompt states) -> audio codes.

    Its sequence is a prefix, read once before the reply (the style concepts of a reference voice and, with
    `voice_pitch`, its measured pitch; then the thinker's states of the prompt's last `prompt_states` positions),
    followed by the reply's thinker states and audio steps interleaved by the schedule. With `voice_every_step`,
    each audio step also gets the voice added to its input, as it gets the countdown.

    Args:
        config: the `TalkerConfig` (`num_codebooks` and `codebook_size` filled in from the codec).
        thinker_hidden_size: width of the thinker's hidden states and token embeddings.
    """

    def __init__(self, config, thinker_hidden_size: int):
        super().__init__()
        self.config = config
        self.num_codebooks = config.num_codebooks
        self.codebook_size = config.codebook_size
        self.eos_id = config.codebook_size
        self.bos_id = config.codebook_size + 1
        self.schedule = ReadWriteSchedule(config.read_tokens, config.write_frames)
        width = config.hidden_size
        # A thinker state is what the thinker knew when it chose a token plus the token it chose.
        self.state_proj = nn.Linear(thinker_hidden_size, width)
        self.token_proj = nn.Linear(thinker_hidden_size, width, bias=False)
        self.style_proj = nn.Linear(thinker_hidden_size, width) if config.num_style_concepts else None
        # The voice's pitch features -> one more style position (in the thinker's width, as style concepts are).
        self.pitch_proj = nn.Linear(VOICE_PITCH_FEATURES, thinker_hidden_size) if config.voice_pitch else None
        self.voice_proj = nn.Linear(thinker_hidden_size, width) if config.voice_every_step else None
        self.code_embeddings = nn.ModuleList(
            nn.Embedding(config.codebook_size + 2, width) for _ in range(config.num_codebooks)
        )
        self.kind_embedding = nn.Embedding(3, width)  # 0 style, 1 thinker state, 2 audio step
        self.rotary = RotaryEmbedding(width // config.num_attention_heads, config.rope_theta)
        self.blocks = nn.ModuleList(TalkerBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(width, eps=config.rms_norm_eps)
        # One head per codebook, stored as one weight so a step is a single batched matmul.
        self.heads = nn.Parameter(torch.empty(config.num_codebooks, config.codebook_size + 1, width))
        if config.duration_conditioning:
            self.countdown_embedding = nn.Embedding(len(COUNTDOWN_EDGES) + 2, width)
            self.duration_head = nn.Linear(2 * width, 1)  # [reply state; prefix summary] -> the token's frames
        else:
            self.countdown_embedding = self.duration_head = None

    # ---- embeddings ------------------------------------------------------------------------------------
    def embed_text(self, states: torch.Tensor, token_embeds: torch.Tensor) -> torch.Tensor:
        """Thinker states `[batch, n, thinker_hidden]` and the chosen tokens' embeddings (same shape) -> `[batch, n, width]`."""
        return self.state_proj(states) + self.token_proj(token_embeds) + self.kind_embedding.weight[1]

    def embed_audio(self, codes: torch.Tensor) -> torch.Tensor:
        """Delayed input codes `[batch, codebooks, steps]` -> `[batch, steps, width]` (sum over codebooks)."""
        embedded = sum(embedding(codes[:, k]) for k, embedding in enumerate(self.code_embeddings))
        return embedded + self.kind_embedding.weight[2]

    def embed_style(self, style: torch.Tensor) -> torch.Tensor:
        """Style concepts of a reference voice `[batch, p, thinker_hidden]` -> `[batch, p, width]`."""
        if self.style_proj is None:
            raise ValueError(
                "This talker was built without style concepts (talker_config.num_style_concepts=0): it cannot take a "
                "reference voice."
            )
        return self.style_proj(style) + self.kind_embedding.weight[0]

    def pitch_concept(self, f0_hz: torch.Tensor) -> torch.Tensor:
        """Median F0 of each reference clip `[batch]` (Hz; 0 where unvoiced) -> the style position that carries it,
        `[batch, 1, thinker_hidden]`, appended to the clip's style concepts."""
        features = voice_pitch_features(f0_hz).to(self.pitch_proj.weight)
        return self.pitch_proj(features)[:, None]

    def embed_voice_step(self, style: torch.Tensor | None) -> torch.Tensor | None:
        """What every audio step is told of the voice (`voice_every_step`): style positions
        `[batch, p, thinker_hidden]` -> `[batch, 1, width]`; None without a voice or without `voice_every_step`."""
        if style is None or self.voice_proj is None:
            return None
        return self.voice_proj(style.mean(1))[:, None]

    def embed_prefix(self, style: torch.Tensor | None = None, prompt: tuple[torch.Tensor, torch.Tensor] | None = None):
        """The part of the sequence read before the reply: style concepts `[batch, p, thinker_hidden]` and prompt
        states (states, token embeddings), `[batch, n, thinker_hidden]` each -> `[batch, p + n, width]`, or None."""
        parts = []
        if style is not None:
            parts.append(self.embed_style(style))
        if prompt is not None:
            parts.append(self.embed_text(*prompt))
        return torch.cat(parts, dim=1) if parts else None

    def embed_countdown(self, remaining: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Frames left until the end of audio `[batch, steps]` (meaningful where `known`) -> `[batch, steps, width]`."""
        return self.countdown_embedding(countdown_ids(remaining, known))

    # ---- the reply's length -------------------------------------------------------------------------------------
    @staticmethod
    def prefix_summary(prefix_embeds: torch.Tensor | None) -> torch.Tensor | None:
        """Mean of the prefix `[batch, p, width]` -> `[batch, width]` (None without one): what the duration
        predictor knows of the voice and the instruction."""
        return None if prefix_embeds is None else prefix_embeds.mean(1)

    def token_frames(self, text_embeds: torch.Tensor, summary: torch.Tensor | None) -> torch.Tensor:
        """Predicted frames of each reply token: embedded states `[batch, n, width]`, prefix summary
        `[batch, width]` (`prefix_summary`; None counts as zeros) -> `[batch, n]` (positive)."""
        if summary is None:
            summary = text_embeds.new_zeros(text_embeds.shape[0], text_embeds.shape[-1])
        features = torch.cat([text_embeds, summary[:, None].expand_as(text_embeds)], dim=-1)
        return F.softplus(self.duration_head(features).squeeze(-1) + DURATION_OFFSET)

    def predict_frames(self, text_embeds: torch.Tensor, text_lengths: torch.Tensor,
                       prefix_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """The reply's predicted length in frames, `[batch]` (float): the sum of its tokens' durations."""
        summary = self.prefix_summary(prefix_embeds)
        real = torch.arange(text_embeds.shape[1], device=text_embeds.device)[None] < text_lengths[:, None]
        return (self.token_frames(text_embeds, summary) * real).sum(-1)

    # ---- the network -----------------------------------------------------------------------------------
    def run(self, embeds: torch.Tensor, cache: TalkerCache | None = None) -> torch.Tensor:
        """Transformer over `[batch, length, width]` (continuing `cache` if given) -> normalised states, same shape."""
        start = 0 if cache is None else cache.length
        positions = torch.arange(start, start + embeds.shape[1], device=embeds.device)
        cos, sin = self.rotary(positions, embeds.dtype)
        hidden = embeds
        for index, block in enumerate(self.blocks):
            hidden = block(hidden, cos, sin, cache, index)
        if cache is not None:
            cache.length += embeds.shape[1]
        return self.norm(hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """`[batch, steps, width]` -> `[batch, steps, codebooks, codebook_size + 1]`."""
        return torch.einsum("bsd,kvd->bskv", hidden, self.heads)

    def new_cache(self, batch: int, max_length: int, dtype, device) -> TalkerCache:
        heads = self.config.num_attention_heads
        return TalkerCache(len(self.blocks), batch, heads, max_length, self.config.hidden_size // heads, dtype, device)

    # ---- training ------------------------------------------------------------------------------------------
    def forward(
        self,
        text_embeds: torch.Tensor,
        text_lengths: torch.Tensor,
        audio_inputs: torch.Tensor,
        audio_lengths: torch.Tensor,
        prefix_embeds: torch.Tensor | None = None,
        frame_lengths: torch.Tensor | None = None,
        voice_step_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced logits for every audio step.

        Args:
            text_embeds: `[batch, max_text, width]` embedded thinker states (`embed_text`), right-padded.
            text_lengths: `[batch]` thinker states per row.
            audio_inputs: `[batch, codebooks, max_steps]` delayed input codes (`build_delay_pattern`).
            audio_lengths: `[batch]` audio steps per row.
            prefix_embeds: `[batch, p, width]` what is read before the reply (`embed_prefix`), or None.
            frame_lengths: `[batch]` each reply's length in frames, counted down to its steps once the reply text
                has been read (needed with `duration_conditioning`; generation counts down the predicted length).
            voice_step_embeds: `[batch, 1, width]` added to every audio step (`embed_voice_step`), or None.

        In training, `config.history_dropout` of the audio steps have their input codes hidden (filler id).

        Returns:
            logits `[batch, max_steps, codebooks, codebook_size + 1]`.
        """
        batch, max_steps = audio_inputs.shape[0], audio_inputs.shape[-1]
        if self.training and self.config.history_dropout > 0:
            hidden_steps = torch.rand(batch, 1, max_steps, device=audio_inputs.device) < self.config.history_dropout
            audio_inputs = torch.where(hidden_steps, self.bos_id, audio_inputs)
        audio_embeds = self.embed_audio(audio_inputs)
        if self.countdown_embedding is not None:
            if frame_lengths is None:
                raise ValueError("This talker counts down to the end of audio (duration_conditioning): pass "
                                 "frame_lengths, each reply's length in frames.")
            steps = torch.arange(max_steps, device=audio_inputs.device)[None]
            known = self.schedule.text_complete(steps, text_lengths.to(steps.device)[:, None])
            audio_embeds = audio_embeds + self.embed_countdown(frame_lengths.to(steps.device)[:, None] - steps, known)
        if voice_step_embeds is not None:
            audio_embeds = audio_embeds + voice_step_embeds
        prefix = 0 if prefix_embeds is None else prefix_embeds.shape[1]
        layouts = [self.schedule.positions(int(n), int(s)) for n, s in zip(text_lengths.tolist(), audio_lengths.tolist())]
        length = prefix + max(len(t) + len(a) for t, a in layouts)
        sequence = audio_embeds.new_zeros(batch, length, audio_embeds.shape[-1])
        audio_index = torch.zeros(batch, max_steps, dtype=torch.long, device=audio_inputs.device)
        for row, (text_positions, audio_positions) in enumerate(layouts):
            text_positions = text_positions.to(sequence.device) + prefix
            audio_positions = audio_positions.to(sequence.device) + prefix
            if prefix:
                sequence[row, :prefix] = prefix_embeds[row]
            sequence[row, text_positions] = text_embeds[row, : len(text_positions)]
            sequence[row, audio_positions] = audio_embeds[row, : len(audio_positions)]
            audio_index[row, : len(audio_positions)] = audio_positions
        hidden = self.run(sequence)
        hidden = torch.gather(hidden, 1, audio_index[..., None].expand(-1, -1, hidden.shape[-1]))
        return self.logits(hidden)
