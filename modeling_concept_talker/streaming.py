"""Streaming in: a spoken turn fed in pieces while the user speaks.

    turn = SpokenTurn(model, processor, sampling_rate=16000, instruction="Speak slowly.")
    for piece in microphone():           # any sizes, at the declared rate
        turn.feed(piece)                 # the ear, then for each completed window: concept adapter -> thinker prefill
    for chunk in turn.stream_reply():    # end of speech: only the last window and the prompt's tail remain
        play(chunk.samples)

The thinker reads the same embeddings, in the same order, as when the whole recording goes through the processor
and `generate`: the prompt up to `<|audio_start|>`, the concepts of each window, then `<|audio_end|>` and the rest.
Windows are independent in the concept adapter, and the ear gives each window the same frames either way (Whisper's
encoder with `ear_context_windows` > 0 encodes each window with its left context only as it completes; with 0 it
encodes the whole question at the end of speech; a codec ear streams exactly), so feeding in pieces gives the same
reply as feeding the whole recording.
"""

from __future__ import annotations

import warnings

import torch

from .audio import MAX_PEAK, SILENCE_PEAK, StreamingResampler, check_sampling_rate, peak, question_too_long_message, to_mono_float
from .configuration_concept_talker import AUDIO_END_TOKEN, AUDIO_START_TOKEN, AUDIO_TOKEN
from .ear import EarStream
from .generation import (
    PromptTail,
    ReplyTimer,
    SpokenGenerationConfig,
    make_runner,
    run_spoken_reply,
    spoken_reply_events,
)
from .processing_concept_talker import DEFAULT_SYSTEM_PROMPT, build_prompt, warn_if_unfamiliar_instruction


class SpokenTurn:
    """One user turn, fed as it is spoken, then answered.

    Args:
        model: a `ConceptTalkerForConditionalGeneration` (eval mode).
        processor: its `ConceptTalkerProcessor`.
        sampling_rate: rate of the pieces that will be fed, Hz (resampled to the ear's as they arrive). Pieces are
            float samples in [-1, 1] (or int PCM); one far outside (peak above 2) is refused, a silent turn warned of.
        instruction, history, system_prompt: as in `build_prompt`.
        voice: a 1-5 s reference clip of the voice to answer in (at `voice_sampling_rate`, default `sampling_rate`).
        settings: generation settings (`SpokenGenerationConfig` keywords), e.g. `thinker_max_new_tokens=64`.
    """

    def __init__(self, model, processor, sampling_rate: int, instruction: str | None = None, history=None,
                 system_prompt: str = DEFAULT_SYSTEM_PROMPT, voice=None, voice_sampling_rate: int | None = None,
                 **settings):
        self.model = model
        self.processor = processor
        self.sampling_rate = check_sampling_rate(sampling_rate)
        self.settings = SpokenGenerationConfig.for_model(model, settings)
        self.style_embeds = None
        if voice is not None:
            wave = processor.prepare_voice(voice, voice_sampling_rate or self.sampling_rate)
            with torch.no_grad():
                self.style_embeds = model.voice_style(wave[None].to(model.device))
        before, after = build_prompt(instruction, history, system_prompt).split(AUDIO_TOKEN)
        warn_if_unfamiliar_instruction(model.config, instruction)
        tokenizer = processor.tokenizer
        self.head_ids = tokenizer(before + AUDIO_START_TOKEN, add_special_tokens=False, return_tensors="pt").input_ids
        self.tail_ids = tokenizer(AUDIO_END_TOKEN + after, add_special_tokens=False, return_tensors="pt").input_ids
        config = model.config
        self.window_frames = config.window_frames
        self.max_samples = int(config.max_audio_seconds * self.sampling_rate)
        max_slots = processor.concept_slots(int(config.max_audio_seconds * config.input_sampling_rate))
        max_length = self.head_ids.shape[1] + max_slots + self.tail_ids.shape[1] + self.settings.thinker_max_new_tokens + 1
        self.runner = make_runner(model, 1, self.settings, max_length)
        self.prompt_tail = PromptTail(model)
        self.resampler = StreamingResampler(self.sampling_rate, config.input_sampling_rate)
        self.ear_stream = EarStream(model.ear) if model.ear is not None else None
        self.encoder = model.codec.streaming_encoder(1) if model.ear is None else None
        self.pending_codes = torch.zeros(1, model.codec.num_codebooks, 0, dtype=torch.long)
        self.samples_fed = 0
        self.loudest = 0.0  # peak of the samples fed so far
        self.state = "listening"
        with torch.no_grad():
            self._read(self.runner.embed(self.head_ids))

    def _read(self, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The thinker reads `embeds` `[1, n, hidden]`; the prompt's tail is kept for the talker."""
        logits, hidden = self.runner.append(embeds)
        self.prompt_tail.add(embeds, hidden)
        return logits, hidden

    def _check_open(self) -> None:
        if self.state != "listening":
            raise RuntimeError(f"This turn is {self.state}: start a new SpokenTurn for the next thing the user says.")

    @torch.no_grad()
    def feed(self, piece, sampling_rate: int | None = None) -> None:
        """Add a piece of the user's audio (numpy / torch / list, mono or stereo) at the turn's sampling rate.

        Zero-length pieces are allowed and do nothing. Each window of audio completed by this piece is encoded,
        turned into concepts and read by the thinker now.
        """
        self._check_open()
        if sampling_rate is not None and check_sampling_rate(sampling_rate) != self.sampling_rate:
            raise ValueError(
                f"This piece is at {sampling_rate} Hz but the turn was started at {self.sampling_rate} Hz: feed every "
                "piece at the rate given to SpokenTurn (or start the turn with this rate)."
            )
        if len(piece) == 0:
            return
        wave = to_mono_float(piece, name="audio piece")
        if peak(wave) > MAX_PEAK:
            raise ValueError(
                f"This audio piece has samples up to {peak(wave):g}, far outside [-1, 1] (int16 values passed as "
                "floats?): feed float samples in [-1, 1], or the int16 array itself (scaled for you). A streamed turn "
                "is not rescaled, since its later pieces would be scaled differently."
            )
        self.loudest = max(self.loudest, peak(wave))
        self.samples_fed += wave.numel()
        if self.samples_fed > self.max_samples:
            self.close()
            raise ValueError(question_too_long_message(
                "The turn", self.samples_fed / self.sampling_rate, self.model.config.max_audio_seconds))
        wave = self.resampler.push(wave)
        if self.ear_stream is not None:
            self._add_frames(self.ear_stream.push(wave))
        else:
            self._add_codes(self.encoder.push(wave[None]), final=False)

    def _add_frames(self, frames: torch.Tensor) -> None:
        """The ear's frames of completed windows `[n, d_model]` -> concepts, read by the thinker."""
        if frames.shape[0]:
            self._read_concepts(*self.model.concept_adapter(
                frames[None].to(self.model.concept_adapter.frame_proj.weight.dtype)))

    def _add_codes(self, codes: torch.Tensor, final: bool) -> None:
        self.pending_codes = torch.cat([self.pending_codes, codes], dim=-1)
        windows = self.pending_codes.shape[-1] // self.window_frames
        if final and self.pending_codes.shape[-1] % self.window_frames:
            windows += 1  # the last, partial window
        if windows == 0:
            return
        used = min(windows * self.window_frames, self.pending_codes.shape[-1])
        concepts, mask = self.model.get_concepts(self.pending_codes[..., :used])
        self.pending_codes = self.pending_codes[..., used:]
        self._read_concepts(concepts, mask)

    def _read_concepts(self, concepts: torch.Tensor, mask: torch.Tensor) -> None:
        """A window's concepts `[1, slots, hidden]` and mask -> the thinker reads those not read as blank, as the
        thinker reads them (`concepts_for_thinker`)."""
        keep = self.model.concept_keep(concepts, mask)
        if keep.any():
            self._read(self.model.concepts_for_thinker(concepts[keep])[None])

    @torch.no_grad()
    def end_of_speech(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The user stopped: read the last partial window and the prompt's tail. Returns the last logits and hidden."""
        self._check_open()
        if self.samples_fed == 0:
            self.close()
            raise ValueError("The turn has no audio: feed at least one piece before ending it.")
        if self.loudest < SILENCE_PEAK:
            warnings.warn(
                "The turn is silent (its peak is below -60 dBFS): no speech was heard, so the reply cannot answer a "
                "question. Check the recording (microphone, input device, gain).",
                stacklevel=3,
            )
        if self.ear_stream is not None:
            self.ear_stream.push(self.resampler.flush())
            self._add_frames(self.ear_stream.flush())
        else:
            codes = self.encoder.push(self.resampler.flush()[None])
            codes = torch.cat([codes, self.encoder.flush()], dim=-1)
            self._add_codes(codes, final=True)
        logits, hidden = self._read(self.runner.embed(self.tail_ids))
        self.state = "answering"
        return logits, hidden[:, -1]

    def reply(self, streamer=None, reply_token_ids=None):
        """End the turn and answer it: a `SpokenReply` (with `streamer`, chunks are handed to it as they come).
        Timings count from the end of speech. With `reply_token_ids` (token ids), the model speaks that text instead
        of choosing its own (as `generate(reply_token_ids=...)`)."""
        timer = ReplyTimer()
        logits, hidden = self.end_of_speech()
        try:
            return run_spoken_reply(self.model, self.runner, logits, hidden, self.settings, self.style_embeds,
                                    streamer, timer, _one_row(reply_token_ids), prompt=self.prompt_tail.states(),
                                    tokenizer=self.processor.tokenizer)
        finally:
            self.close()

    def stream_reply(self, reply_token_ids=None):
        """End the turn and yield the reply's `AudioChunk`s as they are made (`reply_token_ids`: as in `reply`)."""
        logits, hidden = self.end_of_speech()
        try:
            events = spoken_reply_events(self.model, self.runner, logits, hidden, self.settings, self.style_embeds,
                                         decode_stream=True, reply_tokens=_one_row(reply_token_ids),
                                         prompt=self.prompt_tail.states(), tokenizer=self.processor.tokenizer)
            for kind, payload in events:
                if kind == "audio":
                    yield payload
        finally:
            self.close()

    def close(self) -> None:
        """Drop the turn's state (thinker cache, codec state). Safe to call more than once."""
        self.state = "closed"
        self.runner = None
        self.encoder = None
        self.ear_stream = None
        self.pending_codes = None


def _one_row(reply_token_ids) -> list[list[int]] | None:
    """A turn's `reply_token_ids` (a list or 1-d tensor of ids) as the one-row batch the reply loop takes."""
    if reply_token_ids is None:
        return None
    if isinstance(reply_token_ids, torch.Tensor):
        reply_token_ids = reply_token_ids.reshape(-1).tolist()
    return [[int(i) for i in reply_token_ids]]
