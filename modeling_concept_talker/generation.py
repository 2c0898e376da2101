"""Spoken-reply generation: the thinker writes the reply text, the talker speaks it as soon as it can.

One loop serves `generate()` and streaming alike:

    thinker step -> token t_i and its state        (greedy or sampled; KV cache in a ThinkerRunner)
    talker: the words the reply text has finished become symbols (espeak-ng phonemes), each with its token's state
            and, once the symbol after it is known, its predicted length; every audio step whose symbol is timed is
            written (all codebooks, delay pattern), and the frames that became complete are decoded with the
            codec's streaming decoder -> an audio chunk
    ... until the thinker ends the reply and the talker has spoken its last symbol (then K - 1 steps)

The talker reads exactly the layout it was trained on (`schedule.layout`, with its own predicted symbol lengths in
place of the true ones), so streaming is not an approximation of the trained model: it is the trained model.
"""

from __future__ import annotations

import bisect
import functools
import math
import numbers
import queue
import threading
import time
import weakref
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from transformers.generation.streamers import BaseStreamer

from .talker import prompt_states, undelay_codes


@dataclass
class SpokenGenerationConfig:
    """Settings of a spoken reply; pass them to `generate`/`stream` as keywords (prefixed by part).

    Each setting is range-checked when the config is made (`validate`): an error names it and its range.

    Args:
        thinker_max_new_tokens: longest reply text, in tokens (a whole number >= 1).
        thinker_do_sample, thinker_temperature, thinker_top_k, thinker_top_p: the thinker's sampling
            (greedy by default: deterministic). Temperatures > 0 (checked where sampling), top_k >= 0 (0 is off),
            top_p in (0, 1] (1.0 is off).
        thinker_repetition_penalty: > 1 makes the thinker less likely to write a token the reply already holds
            (CTRL's penalty, transformers' `RepetitionPenaltyLogitsProcessor`, over the reply's tokens only, not
            the prompt's): small thinkers decoding greedily fall into loops ("word word word ..."); 1.0 is off.
        talker_do_sample, talker_temperature, talker_top_k: the talker's sampling of each codebook.
        max_audio_seconds: longest reply audio, seconds (> 0); the talker ends the audio there. (The longest
            question is the model's own `config.max_audio_seconds`.)
        seed: seed of the sampling generator, a whole number >= 0 (None: torch's global generator).
        thinker_runner: "auto" (the fast runner when it supports the thinker, else the reference),
            "fast" or "reference".
        thinker_dtype: weights of the fast runner, "bfloat16", "float32" or "int8" (int8 with one scale per output
            channel, weight-only, and a bf16 key/value cache: half the bytes of bf16 per token; default: the
            thinker's own dtype).
        talker_runner: "auto" (the talker's decoder on the fast runner's native kernel where it can be built, else
            the talker's own forward), "fast" or "reference". Same results within float rounding.
        talker_dtype: weights of the talker's fast runner, as `thinker_dtype` (default: the talker's own dtype).
        kernel: the code the fast runners' steps run on: "auto" (`$CONCEPT_TALKER_KERNEL` if set, else the fastest
            native kernel this CPU supports, plain PyTorch with one warning where none can be had), "avx512",
            "avx2" (an error where it cannot be had) or "torch".
    """

    thinker_max_new_tokens: int = 128
    thinker_do_sample: bool = False
    thinker_temperature: float = 1.0
    thinker_top_k: int = 0
    thinker_top_p: float = 1.0
    thinker_repetition_penalty: float = 1.0
    talker_do_sample: bool = True
    talker_temperature: float = 0.8
    talker_top_k: int = 50
    max_audio_seconds: float = 30.0
    seed: int | None = None
    thinker_runner: str = "auto"
    thinker_dtype: str | None = None
    talker_runner: str = "auto"
    talker_dtype: str | None = None
    kernel: str = "auto"

    @classmethod
    def for_model(cls, model, kwargs: dict) -> SpokenGenerationConfig:
        """The settings of one reply: `kwargs` over the checkpoint's own defaults over this class's.

        A checkpoint carries the defaults its recipe chose (e.g. `talker_temperature`) in its
        `generation_config.json`, as extra attributes of its `transformers.GenerationConfig`.
        """
        return cls.from_kwargs({**checkpoint_defaults(model), **kwargs})

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> SpokenGenerationConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(
                f"Unknown generation setting(s) {unknown}. Thinker and talker settings are prefixed: "
                f"{', '.join(sorted(names))}."
            )
        return cls(**kwargs)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise a `ValueError` naming the first setting outside its range, and the range."""

        def whole(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
                raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}.")

        def real(name: str, low: float, high: float = math.inf, low_open: bool = True, hint: str = "") -> None:
            value = getattr(self, name)
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (value > low if low_open else value >= low) and value <= high
            if not ok:
                bounds = f"in {'(' if low_open else '['}{low:g}, {high:g}]" if high != math.inf else f"> {low:g}"
                raise ValueError(f"{name} must be {bounds}{hint}, got {value!r}.")

        def flag(name: str) -> None:
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")

        whole("thinker_max_new_tokens", 1)
        flag("thinker_do_sample")
        flag("talker_do_sample")
        if self.thinker_do_sample:
            real("thinker_temperature", 0, hint=" when thinker_do_sample is on (1.0 leaves the distribution as is)")
        whole("thinker_top_k", 0)
        real("thinker_top_p", 0, 1.0, hint=" (1.0 is off)")
        real("thinker_repetition_penalty", 0, hint=" (1.0 is off, 1.1-1.3 are usual)")
        if self.talker_do_sample:
            real("talker_temperature", 0, hint=" when talker_do_sample is on")
        whole("talker_top_k", 0)
        real("max_audio_seconds", 0, hint=" (seconds of reply audio)")
        if self.seed is not None:
            whole("seed", 0)
        for name in ("thinker_runner", "talker_runner"):
            if getattr(self, name) not in ("auto", "fast", "reference"):
                raise ValueError(f"{name} must be 'auto', 'fast' or 'reference', got {getattr(self, name)!r}.")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}.")
        for name in ("thinker_dtype", "talker_dtype"):
            if getattr(self, name) not in (None,) + RUNNER_DTYPES:
                raise ValueError(f"{name} must be one of {', '.join(RUNNER_DTYPES)} (or None: the model's own), got "
                                 f"{getattr(self, name)!r}.")


def checkpoint_defaults(model) -> dict:
    """The spoken-reply settings a model's `generation_config` holds (those named like `SpokenGenerationConfig`'s)."""
    generation_config = getattr(model, "generation_config", None)
    if generation_config is None:
        return {}
    names = [f.name for f in fields(SpokenGenerationConfig)]
    return {name: getattr(generation_config, name) for name in names if hasattr(generation_config, name)}


@dataclass
class AudioChunk:
    """A piece of reply audio: `samples` float32 mono at `sampling_rate` Hz, starting at `start` samples into the
    reply of conversation `row`. `text_tokens` are the reply text tokens the thinker has written so far."""

    samples: np.ndarray
    sampling_rate: int
    start: int
    row: int = 0
    text_tokens: list[int] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sampling_rate


@dataclass
class SpokenReply:
    """What `generate` returns for a batch of spoken turns.

    Args:
        sequences: `[batch, reply_tokens]` reply text ids, padded with `pad_token_id` (end-of-reply token included).
        audio_codes: per row, `[codebooks, frames]` codec codes of the reply.
        waveforms: per row, float32 `[samples]` reply audio at `sampling_rate` Hz.
        timings: seconds from the start of generation to the first audio (`first_audio_s`) and to the end
            (`total_s`), seconds of audio made (`audio_s`) and the real-time factor (`rtf` = total / audio).
    """

    sequences: torch.LongTensor
    audio_codes: list[torch.LongTensor]
    waveforms: list[np.ndarray]
    sampling_rate: int
    timings: dict[str, float]


class StreamClosed(Exception):
    """Raised inside generation when the consumer of a stream has gone away; generation then stops cleanly."""


@functools.lru_cache(maxsize=16)
def sampling_processors(temperature: float, top_k: int = 0, top_p: float = 1.0):
    """transformers' logits warpers for temperature, top-k and top-p, in the order `generate()` applies them (built
    once per setting: they hold no state, and the talker asks for them every frame)."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    processors = LogitsProcessorList()
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_k:
        processors.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    return processors


def choose_tokens(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one id per row of `logits` `[..., vocab]`: argmax, or a sample after `sampling_processors`."""
    if not do_sample or temperature <= 0:
        return logits.argmax(-1)
    flat = logits.float().reshape(-1, logits.shape[-1])
    probs = sampling_processors(temperature, top_k, top_p)(None, flat).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).view(logits.shape[:-1])


def penalize_repeats(logits: torch.Tensor, tokens: list[list[int]], penalty: float) -> torch.Tensor:
    """`logits` `[batch, vocab]` with each row's already written `tokens` made less likely by `penalty` (> 1), as
    transformers' `RepetitionPenaltyLogitsProcessor` does (positive logits divided, negative ones multiplied).
    Rows without tokens are left as they are."""
    if penalty == 1.0 or not any(tokens):
        return logits
    from transformers import RepetitionPenaltyLogitsProcessor

    longest = max(len(row) for row in tokens)
    # A shorter row is padded with its own first token (no new id penalised); a row without tokens gets
    # placeholder ids and keeps its logits (restored below).
    written = torch.tensor([row + row[:1] * (longest - len(row)) if row else [0] * longest for row in tokens],
                           device=logits.device)
    penalized = RepetitionPenaltyLogitsProcessor(penalty)(written, logits.float().clone())
    empty = torch.tensor([not row for row in tokens], device=logits.device)
    return torch.where(empty[:, None], logits.float(), penalized).to(logits.dtype)


class TalkerStream:
    """One row's talker, run step by step as the thinker's reply grows.

    It first reads its prefix: the voice (a reference clip's style concepts, `style_embeds` `[1, p, hidden]`, or the
    house voice) and the prompt states (`prompt`, see `PromptTail`). Feed the reply's tokens with `add_token`: the
    text they spell is turned into symbols (`phonemes.IncrementalPhonemes`; a word once the text has gone past it),
    each symbol gets its token's thinker state and, once the symbol after it is known, its predicted length. Call
    `write_ready` to write every audio step the timeline allows (`schedule.py`: the symbol a step speaks and the one
    after it must be known); read the newly complete frames from `take_frames`. The audio ends after the last
    symbol's frames (and the delayed codebooks' last steps), or at `max_frames`.
    """

    def __init__(self, model, settings: SpokenGenerationConfig, tokenizer, style_embeds: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, prompt: tuple[torch.Tensor, torch.Tensor] | None = None):
        from .phonemes import IncrementalPhonemes, symbol_ids

        talker = model.talker
        self.talker = talker
        self.settings = settings
        self.generator = generator
        self.tokenizer = tokenizer
        self.num_codebooks = talker.num_codebooks
        self.max_frames = max(1, int(settings.max_audio_seconds * model.codec.frame_rate))
        config = model.config.talker_config
        self.phonemes = IncrementalPhonemes(config.phoneme_language)
        self.symbol_ids = lambda symbols: symbol_ids(symbols, config.phoneme_symbols)
        dtype = talker.heads.dtype
        device = talker.heads.device
        self.device = device
        style = talker.voice_or_house(None if style_embeds is None else style_embeds.to(dtype))
        prefix = talker.embed_prefix(style, None if prompt is None else tuple(t.to(dtype) for t in prompt))
        # Symbols: about 15 per second of speech, with room for pauses.
        length = (0 if prefix is None else prefix.shape[1]) + 2 * (self.max_frames + self.num_codebooks) + 64
        self.runner = fast_talker_runner(model, settings, length)
        self.cache = None if self.runner is not None else talker.new_cache()
        if prefix is not None:
            self._read(prefix)
        self.prefix_summary = talker.prefix_summary(prefix)
        self.voice_step = talker.embed_voice_step(style)  # added to each audio step (voice_every_step), or None
        self.token_ids: list[int] = []  # the reply's text tokens so far
        self.token_ends: list[int] = []  # where each token's text ends in the decoded reply
        self.token_states: list[torch.Tensor] = []  # each token's embedded thinker state, [width]
        self.symbols: list[int] = []  # symbol ids known so far
        self.symbol_text: list[torch.Tensor] = []  # each symbol's embedded thinker state, [width]
        self.frames: list[int] = []  # lengths of the symbols whose next symbol is known
        self.starts: list[int] = [0]  # where each of those starts (and, last, where the next one starts)
        self.exact_end = 0.0  # unrounded end of the timed symbols, so rounding does not drift
        self.symbols_read = 0
        self.text_done = False
        self.total_frames: int | None = None  # known once the text is done and every symbol is timed
        self.columns: list[torch.Tensor] = []  # delayed columns written, each [codebooks]
        self.previous = torch.full((1, self.num_codebooks, 1), talker.bos_id, dtype=torch.long, device=device)
        self.frames_taken = 0
        self.finished = False

    # ---- the reply's text -> symbols -> lengths -------------------------------------------------------------------
    def add_token(self, token_id: int | None, state: torch.Tensor, token_embed: torch.Tensor, last: bool) -> None:
        """One reply token (None for an end-of-reply token, which adds no text) with its thinker state and token
        embedding, `[hidden]` each; `last` marks the end of the reply."""
        if self.text_done:
            return
        dtype = self.talker.heads.dtype
        self.token_states.append(self.talker.embed_text(state[None, None].to(dtype),
                                                        token_embed[None, None].to(dtype))[0, 0])
        if token_id is not None:
            self.token_ids.append(int(token_id))
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        self.token_ends.append(len(text))
        new = self.phonemes.finish(text) if last else self.phonemes.add(text)
        for char in new.chars:  # the token whose text holds the symbol's character
            self.symbol_text.append(self.token_states[min(bisect.bisect_right(self.token_ends, char),
                                                          len(self.token_states) - 1)])
        self.symbols += self.symbol_ids(new.symbols)
        self.text_done = last
        self._time_symbols()

    def end_text(self) -> None:
        """The thinker has stopped (end of reply or length limit): the symbols of the text so far are all there is."""
        if not self.text_done:
            text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
            new = self.phonemes.finish(text)
            for char in new.chars:
                self.symbol_text.append(self.token_states[min(bisect.bisect_right(self.token_ends, char),
                                                              max(len(self.token_states) - 1, 0))]
                                        if self.token_states else torch.zeros(self.talker.config.hidden_size,
                                                                              device=self.device))
            self.symbols += self.symbol_ids(new.symbols)
            self.text_done = True
            self._time_symbols()

    def _time_symbols(self) -> None:
        """Predict the lengths of the symbols whose next symbol is now known (all of them once the text is done)."""
        ready = len(self.symbols) if self.text_done else len(self.symbols) - 1
        if ready <= len(self.frames) or self.total_frames is not None:
            return
        ids = torch.tensor([self.symbols], device=self.device)
        text = torch.stack(self.symbol_text)[None]
        log_frames = self.talker.symbol_log_frames(ids, text, self.prefix_summary)[0].float()
        for index in range(len(self.frames), ready):
            self.exact_end += float(torch.expm1(log_frames[index]).clamp(min=0))
            end = min(int(round(self.exact_end)), self.max_frames)
            self.frames.append(end - self.starts[-1])
            self.starts.append(end)
            if end >= self.max_frames:  # the length limit: this symbol is the last one spoken
                self.symbols, self.symbol_text = self.symbols[: index + 1], self.symbol_text[: index + 1]
                self.text_done = True
                break
        if self.text_done and len(self.frames) == len(self.symbols):
            self.total_frames = max(1, self.starts[-1])
            if self.starts[-1] == 0:  # nothing to say would last no time: speak the last symbol for one frame
                self.frames[-1], self.starts[-1] = 1, 1

    # ---- audio steps ---------------------------------------------------------------------------------------------
    def _step_symbol(self, step: int) -> int | None:
        """The symbol audio step `step` speaks, or None if the timeline does not reach it yet."""
        frame = step
        if self.total_frames is not None:
            if step >= self.total_frames + self.num_codebooks - 1:
                return None
            frame = min(step, self.total_frames - 1)
        elif step >= self.starts[-1]:
            return None
        return bisect.bisect_right(self.starts, frame) - 1

    @torch.no_grad()
    def write_ready(self) -> bool:
        """Write every audio step whose symbol (and the symbol after it) is known. Returns whether it wrote any."""
        wrote = False
        while not self.finished:
            step = len(self.columns)
            symbol = self._step_symbol(step)
            if symbol is None:
                break
            self._read_symbols(step, symbol)
            self._write_step(step, symbol)
            wrote = True
        return wrote

    def _read_symbols(self, step: int, symbol: int) -> None:
        """Read every symbol due before `step` (symbol i is read where symbol i - 1 starts), up to the one after
        `symbol`."""
        start = self.symbols_read
        while (self.symbols_read < len(self.symbols) and self.symbols_read <= symbol + 1
               and (self.symbols_read == 0 or self.starts[self.symbols_read - 1] <= step)):
            self.symbols_read += 1
        if self.symbols_read > start:
            ids = torch.tensor([self.symbols[start : self.symbols_read]], device=self.device)
            text = torch.stack(self.symbol_text[start : self.symbols_read])[None]
            self._read(self.talker.embed_symbols(ids, text))

    def _read(self, embeds: torch.Tensor, logits: bool = False) -> torch.Tensor | None:
        """Run the talker over `embeds` `[1, n, width]` after what it has read; with `logits`, return those of the
        last position, `[codebooks, codebook_size]` (float32 on the fast runner)."""
        if self.runner is not None:
            last, _ = self.runner.append(embeds)
            return last.view(self.num_codebooks, -1) if logits else None
        hidden = self.talker.run(embeds, self.cache)
        return self.talker.logits(hidden)[0, -1] if logits else None

    def _write_step(self, step: int, symbol: int) -> None:
        talker = self.talker
        cap = talker.progress_cap
        start, length = self.starts[symbol], self.frames[symbol]
        frame = min(step, (self.total_frames or step + 1) - 1)
        where = torch.tensor([[[self.symbols[symbol]], [min(frame - start, cap)],
                               [min(max(start + length - 1 - step, 0), cap)]]], device=self.device)
        embeds = talker.embed_steps(self.previous, where[:, 0], where[:, 1], where[:, 2])
        if self.voice_step is not None:
            embeds = embeds + self.voice_step
        logits = self._read(embeds, logits=True)  # [codebooks, codebook_size]
        column = choose_tokens(logits, self.settings.talker_do_sample, self.settings.talker_temperature,
                               self.settings.talker_top_k, generator=self.generator)
        k = torch.arange(self.num_codebooks, device=column.device)
        frame_of = step - k  # the frame each codebook writes at this step
        real = (frame_of >= 0) & (frame_of < (self.total_frames if self.total_frames is not None else step + 1))
        column = torch.where(real, column, talker.bos_id)
        self.columns.append(column)
        self.previous = column.view(1, -1, 1)
        if self.total_frames is not None and len(self.columns) >= self.total_frames + self.num_codebooks - 1:
            self.finished = True

    @property
    def complete_frames(self) -> int:
        """Frames whose every codebook has been written."""
        written = len(self.columns) - self.num_codebooks + 1
        if self.total_frames is not None:
            written = min(written, self.total_frames)
        return max(0, written)

    def take_frames(self) -> torch.Tensor:
        """Frames completed since the last call, `[1, codebooks, new_frames]`."""
        end = self.complete_frames
        start, self.frames_taken = self.frames_taken, end
        if end <= start:
            return torch.zeros(1, self.num_codebooks, 0, dtype=torch.long)
        delayed = torch.stack(self.columns, dim=-1)[None]  # [1, codebooks, steps]
        return undelay_codes(delayed[..., start:], end - start)

    def all_frames(self) -> torch.Tensor:
        """Every complete frame, `[codebooks, frames]`."""
        if not self.columns:
            return torch.zeros(self.num_codebooks, 0, dtype=torch.long)
        return undelay_codes(torch.stack(self.columns, dim=-1)[None], self.complete_frames)[0]


_SNAPSHOTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(part, dtype, weights): (params, runner)}
RUNNER_DTYPES = ("bfloat16", "float32", "int8")
KERNELS = ("auto", "avx512", "avx2", "torch")


def runner_format(name: str | None, own: torch.dtype) -> tuple[torch.dtype, str]:
    """A `thinker_dtype` / `talker_dtype` setting as the fast runner's `(dtype, weights)`: "int8" is int8 weights
    with a bf16 cache, None the part's own dtype."""
    if name == "int8":
        return torch.bfloat16, "int8"
    return (getattr(torch, name) if name else own), "copy"


def snapshot_runner(model, part: str, decoder, dtype: torch.dtype, batch_size: int, max_length: int,
                    weights: str = "copy", kernel: str = "auto"):
    """A `FastThinkerRunner` over `model.<part>`'s weights (stored as `weights`: "copy" or "int8") with an empty
    cache of its own, running on `kernel` (the runner's `backend`).

    The weight snapshot (what the runner copies from `decoder()`, a Qwen2-shaped causal LM) is kept per model and
    part, and reused while no weight of the part has changed (tensor versions and storage: an optimizer step,
    `load_state_dict` or `.to()` makes a new one), so a turn costs only its cache. Raises what the runner raises
    for a decoder it cannot run (ValueError, NotImplementedError).
    """
    from .fast_thinker import FastThinkerRunner

    module = getattr(model, part)
    params = tuple((id(p), p.data_ptr(), p._version) for p in module.parameters())
    snapshots = _SNAPSHOTS.setdefault(model, {})
    for other in [k for k, (seen, _) in snapshots.items() if k[0] == part and seen != params]:
        del snapshots[other]  # the weights changed: free every old snapshot of the part before making the new one
    fmt = (part, dtype, weights)  # one snapshot per storage format (e.g. bf16 and int8 side by side)
    snapshot = snapshots.get(fmt)
    if snapshot is None or snapshot[1].max_length < max_length:
        snapshots.pop(fmt, None)
        runner = FastThinkerRunner(decoder(), batch_size=1, max_length=max(max_length, 1024), dtype=dtype,
                                   weights=weights, backend="torch")  # each turn's runner chooses its kernel
        snapshot = snapshots[fmt] = (params, runner)
    return snapshot[1].sharing_weights(batch_size, max_length, backend=kernel)


def make_runner(model, batch_size: int, settings: SpokenGenerationConfig, max_length: int):
    """The thinker runner for a turn: the fast one when available and asked for, else the reference one."""
    from .thinker_runner import ThinkerRunner

    if settings.thinker_runner != "reference":
        dtype, weights = runner_format(settings.thinker_dtype, model.thinker.dtype)
        try:
            return snapshot_runner(model, "thinker", lambda: model.thinker, dtype, batch_size, max_length, weights,
                                   settings.kernel)
        except (ImportError, ValueError, NotImplementedError):
            if settings.thinker_runner == "fast":
                raise
    return ThinkerRunner(model.thinker, batch_size=batch_size)


def fast_talker_runner(model, settings: SpokenGenerationConfig, max_length: int):
    """The talker's decoder on the fast runner's native kernel, or None for the talker's own forward (asked for,
    or where the kernel is unavailable: there the reference is as fast as a torch re-implementation)."""
    if settings.talker_runner == "reference":
        return None
    try:
        from .fast_thinker import load_native_kernel, talker_as_causal_lm

        if settings.talker_runner == "auto" and load_native_kernel(settings.kernel, warn=False)[0] is None:
            return None  # no snapshot of the talker's weights for a runner that would not be used
        dtype, weights = runner_format(settings.talker_dtype, model.talker.heads.dtype)
        runner = snapshot_runner(model, "talker", lambda: talker_as_causal_lm(model.talker), dtype, 1, max_length,
                                 weights, settings.kernel)
    except (ImportError, ValueError, NotImplementedError):
        if settings.talker_runner == "fast":
            raise
        return None
    if runner.backend != "native" and settings.talker_runner == "auto":
        return None  # e.g. a head width the kernel does not take, or a talker on a GPU
    return runner


def reply_end_ids(model) -> set[int]:
    ids = model.config.reply_end_token_ids
    return {int(i) for i in ids}


def reply_tokenizer(model, tokenizer=None):
    """The tokenizer that spells the reply's tokens for the talker: `tokenizer`, else the model's own
    (`model.tokenizer`, attached by `from_pretrained` when the checkpoint has one, or by the processor)."""
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            "The talker speaks the reply's phonemes, so it needs the thinker's tokenizer to spell the reply: pass "
            "tokenizer=processor.tokenizer to generate/stream, or attach it once with model.tokenizer = "
            "processor.tokenizer (ConceptTalkerProcessor.from_pretrained(folder) does it for a model of that folder "
            "when given model=...)."
        )
    return tokenizer


@torch.no_grad()
def spoken_reply_events(model, runner, logits: torch.Tensor, hidden: torch.Tensor, settings: SpokenGenerationConfig,
                        style_embeds: torch.Tensor | None = None, decode_stream: bool = True,
                        reply_tokens: list[list[int]] | None = None,
                        prompt: tuple[torch.Tensor, torch.Tensor] | None = None, tokenizer=None):
    """The generation loop, as a generator of events, after the prompt has been read by `runner`.

    Args:
        runner: a thinker runner holding the prompt; `logits` `[batch, vocab]` and `hidden` `[batch, hidden]` are
            those of the prompt's last position.
        style_embeds: `[batch, p, hidden]` reference-voice concepts for the talker, or None.
        decode_stream: decode audio chunk by chunk (for streaming) rather than leave decoding to the caller.
        reply_tokens: per row, reply text to speak instead of what the thinker would choose (the thinker still
            reads it, so the talker gets the states it was trained on); an end-of-reply token is added if missing.
        prompt: the talker's prompt states (`PromptTail.states`), `[batch, n, hidden]` states and embeddings, or None.
        tokenizer: the thinker's tokenizer, which spells the reply's tokens for the talker's phonemes (default: the
            one attached to the model, `model.tokenizer`).

    Yields:
        `("audio", AudioChunk)` as frames complete (when `decode_stream`), and finally `("done", rows)` where rows
        is a list of `(reply token ids, codes [codebooks, frames])`.
    """
    batch = logits.shape[0]
    generator = None
    if settings.seed is not None:
        generator = torch.Generator(device=logits.device).manual_seed(settings.seed)
    end_ids = reply_end_ids(model)
    tokenizer = reply_tokenizer(model, tokenizer)
    talkers = [
        TalkerStream(model, settings, tokenizer, None if style_embeds is None else style_embeds[row : row + 1],
                     generator, None if prompt is None else tuple(t[row : row + 1] for t in prompt))
        for row in range(batch)
    ]
    decoders = [model.codec.streaming_decoder(1) for _ in range(batch)] if decode_stream else None
    samples_out = [0] * batch
    tokens: list[list[int]] = [[] for _ in range(batch)]
    text_done = [False] * batch
    pad_id = model.config.thinker_config.pad_token_id
    pad_id = pad_id if pad_id is not None else min(end_ids)
    embed = model.get_input_embeddings()
    last_hidden = hidden
    if reply_tokens is not None:
        if len(reply_tokens) != batch:
            raise ValueError(f"reply_token_ids has {len(reply_tokens)} rows for a batch of {batch}.")
        reply_tokens = [list(map(int, row)) + ([] if row and int(row[-1]) in end_ids else [min(end_ids)])
                        for row in reply_tokens]

    def audio_events():
        """Every block the talkers can write now, each decoded into a chunk as soon as it is written."""
        for row, talker in enumerate(talkers):
            if talker.write_ready():
                if decoders is None:
                    continue
                frames = talker.take_frames()
                if frames.shape[-1] == 0:
                    continue
                wave = decoders[row].push(frames)[0]
                if wave.numel():
                    chunk = AudioChunk(wave.numpy().astype(np.float32), model.codec.sampling_rate,
                                       samples_out[row], row, list(tokens[row]))
                    samples_out[row] += wave.numel()
                    yield ("audio", chunk)

    for _ in range(settings.thinker_max_new_tokens):
        if all(text_done):
            break
        if reply_tokens is None:
            logits = penalize_repeats(logits, tokens, settings.thinker_repetition_penalty)
            chosen = choose_tokens(logits, settings.thinker_do_sample, settings.thinker_temperature,
                                   settings.thinker_top_k, settings.thinker_top_p, generator)
        else:
            step = len(max(tokens, key=len))
            chosen = torch.tensor([row[min(step, len(row) - 1)] for row in reply_tokens], device=logits.device)
        token_embeds = embed(chosen)
        for row in range(batch):
            if text_done[row]:
                chosen[row] = pad_id
                continue
            token = int(chosen[row])
            tokens[row].append(token)
            last = token in end_ids or len(tokens[row]) >= settings.thinker_max_new_tokens
            talkers[row].add_token(None if token in end_ids else token, last_hidden[row], token_embeds[row], last)
            text_done[row] = last
        yield from audio_events()
        if all(text_done):
            break
        logits, new_hidden = runner.append(embed(chosen[:, None]))
        last_hidden = new_hidden[:, -1]
    for talker in talkers:
        talker.end_text()
    while not all(t.finished for t in talkers):
        yield from audio_events()
    if decoders is not None:
        for row, decoder in enumerate(decoders):
            wave = decoder.flush()[0]
            if wave.numel():
                yield ("audio", AudioChunk(wave.numpy().astype(np.float32), model.codec.sampling_rate,
                                           samples_out[row], row, list(tokens[row])))
                samples_out[row] += wave.numel()
    yield ("done", [(tokens[row], talkers[row].all_frames()) for row in range(batch)])


@torch.no_grad()
def greedy_text(model, inputs: dict, max_new_tokens: int = 64) -> list[list[int]]:
    """Reply text only (no talker): greedy tokens per row up to and including an end-of-reply token.

    `inputs` are the processor's (left-padded for batches). Uses the same prefill and runner as spoken replies.
    """
    settings = SpokenGenerationConfig(thinker_max_new_tokens=max_new_tokens)
    runner, logits, _, _ = prefill(model, inputs, settings)
    end_ids = reply_end_ids(model)
    rows = [[] for _ in range(logits.shape[0])]
    done = [False] * len(rows)
    for _ in range(max_new_tokens):
        chosen = logits.argmax(-1)
        for row, token in enumerate(chosen.tolist()):
            if not done[row]:
                rows[row].append(token)
                done[row] = token in end_ids
        if all(done):
            break
        logits, _ = runner.append(runner.embed(chosen[:, None]))
    return rows


class PromptTail:
    """The last positions the thinker has read (hidden states and input embeddings), kept as they are read so the
    talker can have its prompt states (`talker_config.prompt_states`) wherever the prompt was read in pieces."""

    def __init__(self, model):
        self.count = model.config.talker_config.prompt_states
        self.hidden = self.embeds = None
        self.length = 0  # positions read so far

    def add(self, embeds: torch.Tensor, hidden: torch.Tensor) -> None:
        """Positions just read: input embeddings and the thinker's hidden states, `[batch, n, hidden]` each."""
        self.length += embeds.shape[1]
        if not self.count:
            return
        keep = self.count + 1
        if self.hidden is not None:
            embeds, hidden = torch.cat([self.embeds, embeds], 1), torch.cat([self.hidden, hidden], 1)
        self.embeds, self.hidden = embeds[:, -keep:], hidden[:, -keep:]

    def states(self, starts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The talker's prompt states, `[batch, count, hidden]` states and embeddings (None if it reads none).
        `starts`: `[batch]` each row's first real position in the whole prompt (left padding)."""
        if not self.count or self.hidden is None:
            return None
        kept = self.hidden.shape[1]
        ends = torch.full((self.hidden.shape[0],), kept, dtype=torch.long, device=self.hidden.device)
        if starts is not None:
            starts = (starts.to(ends.device) - (self.length - kept)).clamp(min=0)
        return prompt_states(self.hidden, self.embeds, ends, self.count, starts)


def prefill(model, inputs: dict, settings: SpokenGenerationConfig):
    """Read a whole prompt (text + audio) into a new runner.

    Returns the runner, the last logits `[batch, vocab]` and hidden state `[batch, hidden]`, and the talker's prompt
    states (`PromptTail.states`) or None."""
    input_ids = inputs["input_ids"]
    audio = {k: inputs.get(k) for k in ("input_values", "input_values_mask", "input_audio_codes",
                                         "input_audio_codes_mask", "input_features", "input_features_mask")}
    embeds, attention_mask = model.thinker_inputs(input_ids, inputs.get("attention_mask"), **audio)
    embeds, attention_mask = left_aligned(embeds, attention_mask)  # blank concepts left out, as padding on the left
    runner = make_runner(model, input_ids.shape[0], settings, embeds.shape[1] + settings.thinker_max_new_tokens + 1)
    logits, hidden = runner.append(embeds, attention_mask)
    tail = PromptTail(model)
    tail.add(embeds, hidden)
    starts = (attention_mask == 0).sum(-1)
    return runner, logits, hidden[:, -1], tail.states(starts)


def left_aligned(embeds: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's read positions (`attention_mask` 1) moved together at the end, the rest as left padding:
    `[batch, length, hidden]` -> `[batch, longest read, hidden]` and its mask. What the thinker computes is the
    same (left-out positions are never attended to and take no position); the runners need left padding only."""
    keep = attention_mask.bool()
    lengths = keep.sum(-1)
    longest = int(lengths.max())
    out = embeds.new_zeros(embeds.shape[0], longest, embeds.shape[-1])
    mask = torch.zeros(embeds.shape[0], longest, dtype=attention_mask.dtype, device=attention_mask.device)
    for row in range(embeds.shape[0]):
        n = int(lengths[row])
        out[row, longest - n :] = embeds[row, keep[row]]
        mask[row, longest - n :] = 1
    return out, mask


class AudioIteratorStreamer(BaseStreamer):
    """A `BaseStreamer` for spoken replies: `generate(..., streamer=streamer)` in one thread, iterate in another.

        streamer = AudioIteratorStreamer()
        thread = threading.Thread(target=model.generate, kwargs={**inputs, "streamer": streamer})
        thread.start()
        for chunk in streamer:          # AudioChunk: float32 numpy samples + sampling rate
            play(chunk.samples)
        thread.join()

    If the consumer stops reading, call `close()` (or let `timeout` seconds pass): generation stops at its next
    chunk and the producing thread ends; no thread or queued audio is left behind.

    Args:
        timeout: seconds the producer waits for room in the queue, and the consumer for the next chunk.
        max_chunks: chunks buffered between producer and consumer.
    """

    def __init__(self, timeout: float | None = 30.0, max_chunks: int = 64):
        self.queue: queue.Queue = queue.Queue(maxsize=max_chunks)
        self.timeout = timeout
        self.closed = threading.Event()
        self._end = object()

    def put(self, chunk: AudioChunk) -> None:
        if self.closed.is_set():
            raise StreamClosed("the consumer closed the stream")
        try:
            self.queue.put(chunk, timeout=self.timeout)
        except queue.Full as err:
            self.close()
            raise StreamClosed(f"the consumer read nothing for {self.timeout} s") from err

    def end(self) -> None:
        if not self.closed.is_set():
            try:
                self.queue.put(self._end, timeout=self.timeout)
            except queue.Full:
                self.close()

    def close(self) -> None:
        """The consumer is done: stop generation and drop what is queued."""
        self.closed.set()
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break

    def __iter__(self):
        return self

    def __next__(self) -> AudioChunk:
        if self.closed.is_set():
            raise StopIteration
        try:
            item = self.queue.get(timeout=self.timeout)
        except queue.Empty as err:
            self.close()
            raise TimeoutError(f"no audio arrived for {self.timeout} s") from err
        if item is self._end:
            raise StopIteration
        return item


class ReplyTimer:
    """Seconds to the first audio, to the end, and the real-time factor of a reply."""

    def __init__(self, start: float | None = None):
        self.start = time.perf_counter() if start is None else start
        self.first_audio: float | None = None
        self.audio_seconds = 0.0

    def audio(self, seconds: float) -> None:
        if self.first_audio is None:
            self.first_audio = time.perf_counter() - self.start
        self.audio_seconds += seconds

    def summary(self) -> dict[str, float]:
        total = time.perf_counter() - self.start
        return {
            "first_audio_s": self.first_audio if self.first_audio is not None else total,
            "total_s": total,
            "audio_s": self.audio_seconds,
            "rtf": total / self.audio_seconds if self.audio_seconds else float("inf"),
        }


def run_spoken_reply(model, runner, logits, hidden, settings, style_embeds=None, streamer=None,
                     timer: ReplyTimer | None = None, reply_tokens=None, prompt=None,
                     tokenizer=None) -> SpokenReply | None:
    """Drive `spoken_reply_events` to the end and return the `SpokenReply`.

    With a `streamer`, audio is decoded chunk by chunk and handed to it as it is made, and the returned waveforms
    are those chunks joined; without, each row's codes are decoded in one go at the end. Returns None if the
    streamer's consumer went away (generation stopped early).
    """
    timer = timer or ReplyTimer()
    streaming = streamer is not None
    chunks: dict[int, list[np.ndarray]] = {}
    rows = None
    try:
        for kind, payload in spoken_reply_events(model, runner, logits, hidden, settings, style_embeds, streaming,
                                                 reply_tokens, prompt, tokenizer):
            if kind == "audio":
                timer.audio(payload.duration)
                chunks.setdefault(payload.row, []).append(payload.samples)
                streamer.put(payload)
            else:
                rows = payload
    except StreamClosed:
        return None
    finally:
        if streamer is not None:
            streamer.end()
    pad_id = model.config.thinker_config.pad_token_id
    pad_id = pad_id if pad_id is not None else min(reply_end_ids(model))
    sequences = torch.full((len(rows), max((len(t) for t, _ in rows), default=0)), pad_id, dtype=torch.long)
    waveforms = []
    for row, (tokens, frames) in enumerate(rows):
        sequences[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        if streaming:
            wave = np.concatenate(chunks.get(row, [np.zeros(0, np.float32)]))
        else:
            wave = model.codec.decode(frames[None]).squeeze(0).cpu().numpy().astype(np.float32) if frames.shape[-1] else np.zeros(0, np.float32)
            timer.audio(len(wave) / model.codec.sampling_rate)
        waveforms.append(wave)
    return SpokenReply(sequences, [frames for _, frames in rows], waveforms, model.codec.sampling_rate, timer.summary())
