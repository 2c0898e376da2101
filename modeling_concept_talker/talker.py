"""The talker (`ConceptTalkerTalkerModel`): a small causal transformer, transformers' Llama decoder, that writes audio
codes, reading the reply's phonemes on a timeline.

Its sequence is a prefix (the reference voice's style concepts and pitch, the thinker's states of the prompt's end)
and then the reply's symbols (phonemes, spaces, punctuation; `phonemes.py`) and audio steps interleaved by the
phoneme timeline (`schedule.py`): each symbol is read just before the step where the symbol before it begins, and
each audio step is told which symbol it speaks and how far into it it is. Each symbol also carries the thinker's
state of the reply token it comes from. The alignment of text and audio therefore comes from outside the talker's
attention: from the symbols' lengths, true ones (from the voice that rendered the data) in training and predicted
ones (`ConceptTalkerTalkerModel.symbol_log_frames`, from the symbols, their thinker states and the prefix) when
generating.

At each audio step it predicts every codebook at once, one head per codebook, with MusicGen's delay pattern:
codebook k lags k steps, so a frame is complete K - 1 steps after its first codebook. The reply's length is the sum
of its symbols' lengths, so there is no end-of-audio token.

Ids in each codebook: `0 .. codebook_size - 1` are codes, `codebook_size` is begin/filler (BOS), only ever an input.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import DynamicCache, LlamaConfig, LlamaModel, PreTrainedModel
from transformers import initialization as init

from .configuration_concept_talker import TalkerConfig
from .pitch import VOICE_PITCH_FEATURES, voice_pitch_features
from .schedule import SymbolLayout, layout

IGNORE_INDEX = -100
# A symbol's predicted length starts near 4 frames (80 ms at 50 Hz, about a phoneme's), so an untrained talker
# already speaks at about the pace of speech.
SYMBOL_FRAMES_OFFSET = math.log1p(4.0)


def build_delay_pattern(codes: torch.Tensor, lengths: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Talker inputs and targets for a batch of frames, with the delay pattern.

    For frames of length M = 3 and K = 3 codebooks (c = code, B = BOS, - = ignored target):

        targets (delayed codes)       inputs (targets shifted right by one step, fillers made explicit)
        step:  0  1  2  3  4          step:  0  1  2  3  4
        k=0:   c0 c1 c2 -  -          k=0:   B  c0 c1 c2 B
        k=1:   -  c0 c1 c2 -          k=1:   B  B  c0 c1 c2
        k=2:   -  -  c0 c1 c2         k=2:   B  B  B  c0 c1

    Args:
        codes: `[batch, codebooks, frames]` codec codes (right padding arbitrary).
        lengths: `[batch]` number of real frames in each row.
        codebook_size: entries per codebook (BOS = codebook_size).

    Returns:
        `inputs` `[batch, codebooks, frames + codebooks - 1]` and `targets` of the same shape (IGNORE_INDEX where no
        loss applies). Row b has `lengths[b] + codebooks - 1` audio steps.
    """
    batch, num_codebooks, frames = codes.shape
    bos = codebook_size
    steps = frames + num_codebooks - 1
    column = torch.arange(steps, device=codes.device)[None, None, :]
    k = torch.arange(num_codebooks, device=codes.device)[None, :, None]
    frame = column - k  # which frame each (codebook, step) cell holds
    length = lengths.to(codes.device)[:, None, None]
    gathered = torch.gather(codes, 2, frame.clamp(0, max(frames - 1, 0)).expand(batch, -1, -1))
    real = (frame >= 0) & (frame < length)
    targets = torch.where(real, gathered, IGNORE_INDEX)
    filled = torch.where(real, gathered, bos)
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


def reply_states(hidden: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor, embeddings: nn.Module):
    """The thinker's states of the reply tokens, as the talker reads them.

    The state of reply token t at position p is the thinker's last hidden state at p - 1 (what it knew when it chose
    t) and t's input embedding (`embeddings`, the thinker's table). Reply tokens are the positions with a text label.

    Args:
        hidden: `[batch, length, thinker_hidden]`; input_ids, labels: `[batch, length]` (labels -100 off the reply).

    Returns:
        states `[batch, max_reply, thinker_hidden]`, token embeddings (same shape), lengths `[batch]`.
    """
    is_reply = labels[:, 1:] != IGNORE_INDEX  # token at position p + 1 is a reply token
    lengths = is_reply.sum(-1)
    max_reply = int(lengths.max()) if lengths.numel() else 0
    # Stable sort puts each row's reply positions first, in order.
    order = torch.sort((~is_reply).to(torch.int8), dim=1, stable=True).indices[:, :max_reply]
    states = torch.gather(hidden[:, :-1], 1, order[..., None].expand(-1, -1, hidden.shape[-1]))
    return states, embeddings(torch.gather(input_ids[:, 1:], 1, order)), lengths


def reply_prompt_states(hidden: torch.Tensor, embeds: torch.Tensor, labels: torch.Tensor, count: int,
                        attention_mask: torch.Tensor | None = None):
    """`prompt_states` of the `count` positions before each row's reply (its first labelled token) in a training
    batch, or None when `count` is 0. Positions the thinker did not read (`attention_mask` 0: padding, blank
    concepts) are skipped, as in generation, where they are never there."""
    if not count:
        return None
    ends = (labels != IGNORE_INDEX).int().argmax(-1)
    if attention_mask is None:
        return prompt_states(hidden, embeds, ends, count)
    rows = []
    for row in range(hidden.shape[0]):
        read = attention_mask[row, : int(ends[row])].bool().nonzero()[:, 0]
        rows.append(prompt_states(hidden[row : row + 1, read], embeds[row : row + 1, read],
                                  torch.tensor([len(read)], device=hidden.device), count))
    return tuple(torch.cat(parts) for parts in zip(*rows))


def frames_from_log(log_frames: torch.Tensor) -> torch.Tensor:
    """Predicted `log(1 + frames)` -> whole frames (>= 0), rounded so that running totals stay close to the sum
    of the unrounded lengths (a reply does not drift by each symbol's rounding). `[..., symbols]` -> same shape."""
    exact = torch.expm1(log_frames.float()).clamp(min=0).cumsum(-1)
    ends = exact.round()
    return torch.diff(ends, dim=-1, prepend=torch.zeros_like(ends[..., :1])).long()


def decoder_config(config: TalkerConfig) -> LlamaConfig:
    """The talker's decoder as transformers' Llama: full multi-head attention (as many key/value heads as heads), no
    biases, RMSNorm, RoPE, a SiLU-gated MLP, sized by the `TalkerConfig`. The talker feeds it embeddings and drops
    the token table `LlamaModel` builds, so that table is given one row."""
    return LlamaConfig(
        vocab_size=1, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads, hidden_act="silu",
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        attention_bias=False, mlp_bias=False, attention_dropout=config.dropout,
        pad_token_id=None, bos_token_id=None, eos_token_id=None, tie_word_embeddings=False,
        attn_implementation=config._attn_implementation,  # the model's choice (`attn_implementation=`), else SDPA
    )


class ConceptTalkerTalkerModel(PreTrainedModel):
    """Reply symbols on a timeline (+ optional style concepts and prompt states) -> audio codes.

    Its sequence is a prefix, read once before the reply (the style concepts of a reference voice, or the learnt
    house voice, and with `voice_pitch` the voice's measured pitch; then the thinker's states of the prompt's last
    `prompt_states` positions), followed by the reply's symbols and audio steps interleaved by the timeline
    (`schedule.layout`). With `voice_every_step`, each audio step also gets the voice added to its input.

    The talker builds every input embedding itself (`embed_*`), so its network, `decoder`, is a transformers
    `LlamaModel` fed `inputs_embeds`, its token table dropped (`decoder.embed_tokens` is None). The whole model
    rather than its decoder layers: it already derives the positions and the causal mask from its cache for each way
    the talker reads (the prefix at once, a run of symbols, one audio step after a cached past, a whole sequence in
    training), and the fast runner reads it as it reads a thinker (`fast_thinker.talker_as_causal_lm`).
    Built by `ConceptTalkerForConditionalGeneration` from `config.talker_config`, or alone from a `TalkerConfig`.

    Args:
        config: the `TalkerConfig` (`num_codebooks`, `codebook_size` and `thinker_hidden_size` filled in from the
            codec and the thinker).
    """

    config_class = TalkerConfig
    config: TalkerConfig
    base_model_prefix = "talker"
    main_input_name = "symbol_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["LlamaDecoderLayer"]

    def __init__(self, config: TalkerConfig):
        super().__init__(config)
        if config.num_codebooks is None or config.codebook_size is None or config.thinker_hidden_size is None:
            raise ValueError("The talker's num_codebooks, codebook_size and thinker_hidden_size come from the codec "
                             "and the thinker: build it from a ConceptTalkerConfig's talker_config.")
        thinker_hidden_size = config.thinker_hidden_size
        self.num_codebooks = config.num_codebooks
        self.codebook_size = config.codebook_size
        self.bos_id = config.codebook_size
        self.num_symbols = len(config.phoneme_symbols)
        self.progress_cap = config.progress_cap
        width = config.hidden_size
        # A thinker state is what the thinker knew when it chose a token plus the token it chose.
        self.state_proj = nn.Linear(thinker_hidden_size, width)
        self.token_proj = nn.Linear(thinker_hidden_size, width, bias=False)
        self.symbol_embedding = nn.Embedding(self.num_symbols, width)  # a symbol as it is read
        self.step_symbol_embedding = nn.Embedding(self.num_symbols, width)  # the symbol an audio step speaks
        self.since_embedding = nn.Embedding(config.progress_cap + 1, width)
        self.left_embedding = nn.Embedding(config.progress_cap + 1, width)
        style_positions = config.num_style_concepts + (1 if config.voice_pitch else 0)
        self.style_proj = nn.Linear(thinker_hidden_size, width) if config.num_style_concepts else None
        # The voice the talker speaks in when it is given none: learnt, in the place of a clip's style positions.
        self.house_voice = (nn.Parameter(torch.zeros(style_positions, thinker_hidden_size))
                            if config.num_style_concepts else None)
        # The voice's pitch features -> one more style position (in the thinker's width, as style concepts are).
        self.pitch_proj = nn.Linear(VOICE_PITCH_FEATURES, thinker_hidden_size) if config.voice_pitch else None
        self.voice_proj = nn.Linear(thinker_hidden_size, width) if config.voice_every_step else None
        self.code_embeddings = nn.ModuleList(
            nn.Embedding(config.codebook_size + 1, width) for _ in range(config.num_codebooks)
        )
        self.kind_embedding = nn.Embedding(3, width)  # 0 prefix, 1 symbol, 2 audio step
        self.decoder = LlamaModel(decoder_config(config))
        self.decoder.embed_tokens = None  # inputs are embeddings (`embed_*`)
        # One head per codebook, stored as one weight so a step is a single batched matmul.
        self.heads = nn.Parameter(torch.empty(config.num_codebooks, config.codebook_size, width))
        # Each symbol's length from its neighbours, its thinker state and the prefix (voice, instruction).
        self.duration_embedding = nn.Embedding(self.num_symbols, width)
        self.duration_head = nn.Sequential(nn.Linear(5 * width, width), nn.GELU(), nn.Linear(width, 1))
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)  # linear layers and embeddings N(0, 0.02), norms 1
        if isinstance(module, ConceptTalkerTalkerModel):
            init.normal_(module.heads, std=0.02)
            if module.house_voice is not None:
                init.normal_(module.house_voice, std=0.02)

    # ---- embeddings ------------------------------------------------------------------------------------
    def embed_text(self, states: torch.Tensor, token_embeds: torch.Tensor) -> torch.Tensor:
        """Thinker states `[batch, n, thinker_hidden]` and the chosen tokens' embeddings (same shape) -> `[batch, n, width]`."""
        return self.state_proj(states) + self.token_proj(token_embeds)

    def embed_symbols(self, symbol_ids: torch.Tensor, symbol_text: torch.Tensor) -> torch.Tensor:
        """Symbols as read: ids `[batch, n]` and the embedded thinker states of their tokens `[batch, n, width]`
        (`embed_text`) -> `[batch, n, width]`."""
        return self.symbol_embedding(symbol_ids) + symbol_text + self.kind_embedding.weight[1]

    def embed_steps(self, codes: torch.Tensor, step_symbols: torch.Tensor, since: torch.Tensor,
                    left: torch.Tensor) -> torch.Tensor:
        """Audio steps: delayed input codes `[batch, codebooks, steps]` (summed over codebooks) and where each step
        is on the timeline (`[batch, steps]` each: its symbol's id, frames since and left) -> `[batch, steps, width]`."""
        embedded = sum(embedding(codes[:, k]) for k, embedding in enumerate(self.code_embeddings))
        timeline = self.step_symbol_embedding(step_symbols) + self.since_embedding(since) + self.left_embedding(left)
        return embedded + timeline + self.kind_embedding.weight[2]

    def pitch_concept(self, f0_hz: torch.Tensor) -> torch.Tensor:
        """Median F0 of each reference clip `[batch]` (Hz; 0 where unvoiced) -> the style position that carries it,
        `[batch, 1, thinker_hidden]`, appended to the clip's style concepts."""
        features = voice_pitch_features(f0_hz).to(self.pitch_proj.weight)
        return self.pitch_proj(features)[:, None]

    def voice_or_house(self, style: torch.Tensor | None, given: torch.Tensor | None = None,
                       batch: int = 1) -> torch.Tensor | None:
        """The voice each row speaks in, `[batch, style positions, thinker_hidden]`: the row's reference voice where
        one is `given` (`[batch]` bool; all rows when None), else the house voice. None for a talker without a voice
        input."""
        if self.house_voice is None:
            if style is not None:
                raise ValueError(
                    "This talker was built without style concepts (talker_config.num_style_concepts=0): it cannot "
                    "take a reference voice."
                )
            return None
        if style is None:
            return self.house_voice[None].expand(batch, -1, -1)
        house = self.house_voice[None].to(style.dtype)
        if given is None:
            return style
        return torch.where(given.to(style.device)[:, None, None], style, house)

    def embed_voice_step(self, style: torch.Tensor | None) -> torch.Tensor | None:
        """What every audio step is told of the voice (`voice_every_step`): style positions
        `[batch, p, thinker_hidden]` -> `[batch, 1, width]`; None without a voice or without `voice_every_step`."""
        if style is None or self.voice_proj is None:
            return None
        return self.voice_proj(style.mean(1))[:, None]

    def embed_prefix(self, style: torch.Tensor | None = None, prompt: tuple[torch.Tensor, torch.Tensor] | None = None):
        """The part of the sequence read before the reply: style positions `[batch, p, thinker_hidden]` and prompt
        states (states, token embeddings), `[batch, n, thinker_hidden]` each -> `[batch, p + n, width]`, or None."""
        parts = []
        if style is not None:
            parts.append(self.style_proj(style) + self.kind_embedding.weight[0])
        if prompt is not None:
            parts.append(self.embed_text(*prompt) + self.kind_embedding.weight[0])
        return torch.cat(parts, dim=1) if parts else None

    # ---- the symbols' lengths -----------------------------------------------------------------------------------
    @staticmethod
    def prefix_summary(prefix_embeds: torch.Tensor | None) -> torch.Tensor | None:
        """Mean of the prefix `[batch, p, width]` -> `[batch, width]` (None without one): what the duration
        predictor knows of the voice and the instruction."""
        return None if prefix_embeds is None else prefix_embeds.mean(1)

    def symbol_log_frames(self, symbol_ids: torch.Tensor, symbol_text: torch.Tensor,
                          summary: torch.Tensor | None) -> torch.Tensor:
        """Predicted `log(1 + frames)` of each symbol: ids `[batch, n]`, embedded thinker states `[batch, n, width]`,
        prefix summary `[batch, width]` (None counts as zeros) -> `[batch, n]`.

        A symbol's length depends on it, the symbols on either side of it (zeros past the ends) and its token's
        state: it can be predicted once the next symbol is known, which is when the talker reads that symbol anyway.
        """
        embedded = self.duration_embedding(symbol_ids)
        edge = torch.zeros_like(embedded[:, :1])
        before = torch.cat([edge, embedded[:, :-1]], dim=1)
        after = torch.cat([embedded[:, 1:], edge], dim=1)
        if summary is None:
            summary = embedded.new_zeros(embedded.shape[0], embedded.shape[-1])
        features = torch.cat([before, embedded, after, symbol_text, summary[:, None].expand_as(embedded)], dim=-1)
        return self.duration_head(features).squeeze(-1) + SYMBOL_FRAMES_OFFSET

    # ---- the network -----------------------------------------------------------------------------------
    def run(self, embeds: torch.Tensor, cache: DynamicCache | None = None) -> torch.Tensor:
        """The decoder over `[batch, length, width]` (after what `cache` holds, which it extends, if given) ->
        normalised states, same shape."""
        return self.decoder(inputs_embeds=embeds, cache=cache, use_cache=cache is not None).last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """`[batch, steps, width]` -> `[batch, steps, codebooks, codebook_size]`."""
        return torch.einsum("bsd,kvd->bskv", hidden, self.heads)

    def new_cache(self) -> DynamicCache:
        """An empty key/value cache for `run`, growing as the talker reads (a `StaticCache` of the reply's length
        made each step slower: its attention reads every slot)."""
        return DynamicCache(config=self.decoder.config)

    def timeline(self, frames: torch.Tensor) -> SymbolLayout:
        """The layout of one reply whose symbols last `frames` `[symbols]` (`schedule.layout`)."""
        return layout(frames, self.num_codebooks, self.progress_cap)

    # ---- training ------------------------------------------------------------------------------------------
    def thinker_input(self, states: torch.Tensor, token_embeds: torch.Tensor | None = None):
        """Thinker tensors as the talker takes them in training: in its dtype, and cut from the thinker's graph
        with `detach_thinker_states` (so the talker's loss does not train the thinker)."""
        tensors = [t for t in (states, token_embeds) if t is not None]
        tensors = [(t.detach() if self.config.detach_thinker_states else t).to(self.heads.dtype) for t in tensors]
        return tensors[0] if token_embeds is None else tuple(tensors)

    def symbol_text(self, states: torch.Tensor, token_embeds: torch.Tensor, symbol_tokens: torch.Tensor):
        """Each symbol's embedded thinker state: the reply tokens' states and embeddings `[batch, reply tokens,
        thinker_hidden]` and each symbol's token index `[batch, symbols]` -> `[batch, symbols, width]`."""
        index = symbol_tokens.clamp(0, max(states.shape[1] - 1, 0))[..., None].expand(-1, -1, states.shape[-1])
        return self.embed_text(*self.thinker_input(torch.gather(states, 1, index), torch.gather(token_embeds, 1, index)))

    def reply_loss(self, symbol_ids: torch.Tensor, symbol_tokens: torch.Tensor, symbol_frames: torch.Tensor,
                   codes: torch.Tensor, states: torch.Tensor, token_embeds: torch.Tensor, prompt=None,
                   style: torch.Tensor | None = None, voice_given: torch.Tensor | None = None):
        """The talker's teacher-forced losses on spoken replies, every row with frames to speak.

        Args:
            symbol_ids, symbol_tokens, symbol_frames: `[batch, symbols]` the reply's symbols, each one's reply-token
                index and length in frames, padded with -100 (a row's frames add up to its reply's).
            codes: `[batch, codebooks, frames]` the reply's codec codes, `-100` after each reply ends.
            states, token_embeds: `[batch, reply tokens, thinker_hidden]` the thinker's reply states
                (`reply_states`); prompt: (states, embeddings) of the prompt's last positions, or None.
            style: `[batch, style positions, thinker_hidden]` reference voices (None: the house voice);
                voice_given: `[batch]` which rows' voices count.

        Returns:
            the mean codebook cross-entropy, each codebook's `[codebooks]`, the duration loss (squared error of
            `log(1 + frames)`), the logits `[batch, steps, codebooks, codebook_size]` and their delayed targets
            `[batch, codebooks, steps]`.
        """
        symbol_real = symbol_ids != IGNORE_INDEX
        symbol_lengths = symbol_real.sum(-1)
        symbol_ids = torch.where(symbol_real, symbol_ids, 0)
        symbol_frames = torch.where(symbol_real, symbol_frames, 0)
        frame_lengths = (codes[:, 0] != IGNORE_INDEX).sum(-1)
        if not torch.equal(symbol_frames.sum(-1), frame_lengths):
            raise ValueError(
                f"The reply symbols last {symbol_frames.sum(-1).tolist()} frames but the replies have "
                f"{frame_lengths.tolist()}: reply_symbol_frames must add up to each reply's frames (rebuild the "
                "dataset with concept-talker synth)."
            )
        text = self.symbol_text(states, token_embeds, torch.where(symbol_real, symbol_tokens, 0))
        prompt = None if prompt is None else self.thinker_input(*prompt)
        audio_inputs, audio_targets = build_delay_pattern(torch.where(codes == IGNORE_INDEX, 0, codes), frame_lengths,
                                                          self.codebook_size)
        style = self.voice_or_house(None if style is None else style.to(self.heads.dtype), voice_given,
                                    batch=codes.shape[0])
        prefix = self.embed_prefix(style, prompt)
        logits = self(symbol_ids, text, symbol_frames, symbol_lengths, audio_inputs, prefix,
                      self.embed_voice_step(style))
        predicted = self.symbol_log_frames(symbol_ids, text, self.prefix_summary(prefix)).float()
        duration_loss = F.mse_loss(predicted[symbol_real], torch.log1p(symbol_frames[symbol_real].float()))
        flat_logits = logits.float().permute(2, 0, 1, 3)  # [codebooks, batch, steps, vocab]
        flat_targets = audio_targets.permute(1, 0, 2)  # [codebooks, batch, steps]
        per_codebook = torch.stack([F.cross_entropy(flat_logits[k].reshape(-1, flat_logits.shape[-1]),
                                                    flat_targets[k].reshape(-1)) for k in range(self.num_codebooks)])
        return per_codebook.mean(), per_codebook, duration_loss, logits, audio_targets

    def forward(
        self,
        symbol_ids: torch.Tensor,
        symbol_text: torch.Tensor,
        symbol_frames: torch.Tensor,
        symbol_lengths: torch.Tensor,
        audio_inputs: torch.Tensor,
        prefix_embeds: torch.Tensor | None = None,
        voice_step_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced logits for every audio step.

        Args:
            symbol_ids: `[batch, max_symbols]` the reply's symbols (`phonemes.symbol_ids`), right-padded.
            symbol_text: `[batch, max_symbols, width]` the embedded thinker state of each symbol's token.
            symbol_frames: `[batch, max_symbols]` each symbol's length in frames (0 on padding).
            symbol_lengths: `[batch]` symbols per row.
            audio_inputs: `[batch, codebooks, max_steps]` delayed input codes (`build_delay_pattern`); row b has
                `symbol_frames[b].sum() + codebooks - 1` steps.
            prefix_embeds: `[batch, p, width]` what is read before the reply (`embed_prefix`), or None.
            voice_step_embeds: `[batch, 1, width]` added to every audio step (`embed_voice_step`), or None.

        In training, `config.history_dropout` of the audio steps have their input codes hidden (filler id).

        Returns:
            logits `[batch, max_steps, codebooks, codebook_size]`.
        """
        batch, max_steps = audio_inputs.shape[0], audio_inputs.shape[-1]
        device = audio_inputs.device
        if self.training and self.config.history_dropout > 0:
            hidden_steps = torch.rand(batch, 1, max_steps, device=device) < self.config.history_dropout
            audio_inputs = torch.where(hidden_steps, self.bos_id, audio_inputs)
        layouts = [self.timeline(symbol_frames[row, : int(n)]) for row, n in enumerate(symbol_lengths.tolist())]
        step_symbols = torch.zeros(batch, max_steps, dtype=torch.long, device=device)
        since = torch.zeros_like(step_symbols)
        left = torch.zeros_like(step_symbols)
        for row, timeline in enumerate(layouts):
            steps = len(timeline.step_positions)
            step_symbols[row, :steps] = symbol_ids[row, timeline.frame_symbol]
            since[row, :steps], left[row, :steps] = timeline.since, timeline.left
        step_embeds = self.embed_steps(audio_inputs, step_symbols, since, left)
        if voice_step_embeds is not None:
            step_embeds = step_embeds + voice_step_embeds
        symbol_embeds = self.embed_symbols(symbol_ids, symbol_text)
        prefix = 0 if prefix_embeds is None else prefix_embeds.shape[1]
        length = prefix + max(t.length for t in layouts)
        sequence = step_embeds.new_zeros(batch, length, step_embeds.shape[-1])
        step_index = torch.zeros(batch, max_steps, dtype=torch.long, device=device)
        for row, timeline in enumerate(layouts):
            if prefix:
                sequence[row, :prefix] = prefix_embeds[row]
            symbols, steps = len(timeline.symbol_positions), len(timeline.step_positions)
            sequence[row, prefix + timeline.symbol_positions] = symbol_embeds[row, :symbols]
            sequence[row, prefix + timeline.step_positions] = step_embeds[row, :steps]
            step_index[row, :steps] = prefix + timeline.step_positions
        hidden = self.run(sequence)
        hidden = torch.gather(hidden, 1, step_index[..., None].expand(-1, -1, hidden.shape[-1]))
        return self.logits(hidden)
