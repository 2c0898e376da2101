"""The Concept-Talker processor: the Qwen2.5 tokenizer plus audio preparation and the spoken-turn chat format.

    processor(text="<|im_start|>user\\n<|audio_pad|><|im_end|>...", audio=wav, sampling_rate=16000)
      audio: numpy / torch / list, any rate (resampled to the codec's), mono or stereo (averaged), checked
      text:  each <|audio_pad|> stands for one clip and becomes
             <|audio_start|> + <|audio_pad|> x (concept slots for the clip's length) + <|audio_end|>
      -> input_ids, attention_mask, input_values [clips, samples], input_values_mask [clips, samples]

A spoken turn is written with `build_prompt` (or `apply_chat_template` on messages whose content has
`{"type": "audio"}` items); training and generation use the same function, so they see the same format.
"""

from __future__ import annotations

import os
import warnings

import torch
from transformers import BatchFeature, ProcessorMixin

from .audio import count_concept_slots, count_frames, is_silent, prepare_audio
from .configuration_concept_talker import AUDIO_END_TOKEN, AUDIO_SPECIAL_TOKENS, AUDIO_START_TOKEN, AUDIO_TOKEN

DEFAULT_SYSTEM_PROMPT = "You are a patient spoken English tutor. Answer in one or two short sentences."

# A checkpoint may ship without tokenizer files (the embedded one does: Qwen2.5's are 7 MB); its tokenizer is then
# Qwen2.5's, found in `$CONCEPT_TALKER_TOKENIZER`, in the shared offline copy next to a source checkout, or on the Hub.
TOKENIZER_VARIABLE = "CONCEPT_TALKER_TOKENIZER"
SHARED_TOKENIZER_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared", "assets", "qwen2.5-tokenizer"
)
HUB_TOKENIZER = "Qwen/Qwen2.5-0.5B"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def default_tokenizer_source() -> str:
    """Where the Qwen2.5 tokenizer is read from when a checkpoint has none: `$CONCEPT_TALKER_TOKENIZER`, else the
    shared offline copy (`../shared/assets/qwen2.5-tokenizer`) where it exists, else the Hub's `Qwen/Qwen2.5-0.5B`."""
    if os.environ.get(TOKENIZER_VARIABLE):
        return os.environ[TOKENIZER_VARIABLE]
    return SHARED_TOKENIZER_DIR if os.path.isdir(SHARED_TOKENIZER_DIR) else HUB_TOKENIZER

# ChatML as Qwen2.5 writes it. An audio item is one <|audio_pad|> that the processor expands; the items of a message
# are joined with newlines, so [{"type": "audio"}, {"type": "text", "text": "Speak slowly."}] renders as build_prompt.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{ message['content'] }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if not loop.first %}{{ '\\n' }}{%- endif %}"
    "{%- if item['type'] == 'audio' %}{{ '" + AUDIO_TOKEN + "' }}"
    "{%- elif item['type'] == 'text' %}{{ item['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


SLOW_CUES = ("slow", "slowly", "slower")
FAST_CUES = ("fast", "faster", "quick", "quickly", "quicker", "hurry")
VOICE_MIN_SECONDS, VOICE_MAX_SECONDS = 1.0, 5.0


def instruction_words(instruction: str | None) -> list[str]:
    """The words of a typed instruction, lower-cased, without punctuation, in order."""
    if not instruction:
        return []
    return instruction.lower().replace(",", " ").replace(".", " ").replace("!", " ").replace("?", " ").split()


def check_instruction(instruction: str | None) -> None:
    """Refuse an instruction that asks for slow and fast speech at once (the tutor cannot do both)."""
    if not instruction:
        return
    words = set(instruction_words(instruction))
    slow, fast = words & set(SLOW_CUES), words & set(FAST_CUES)
    if slow and fast:
        raise ValueError(
            f"Conflicting instructions in {instruction!r}: it asks for slow ({', '.join(sorted(slow))}) and fast "
            f"({', '.join(sorted(fast))}) speech at once. Give one speaking rate."
        )


def warn_if_unfamiliar_instruction(config, instruction: str | None) -> list[str]:
    """Warn when `instruction` holds words that no instruction in the model's training data had.

    The instructions a model was trained with are recorded in its config (`trained_instructions`, written by
    `concept-talker train`); a model whose config does not record them is not checked. A small thinker trained on a
    few phrasings ("Speak slowly.", "Repeat after me.") ignores anything else without a sign, hence the warning.

    Returns:
        The unfamiliar words (empty when the instruction is familiar or cannot be checked).
    """
    import warnings

    trained = getattr(config, "trained_instructions", None)
    if not instruction or not trained:
        return []
    known = {word for text in trained for word in instruction_words(text)}
    unfamiliar = [word for word in instruction_words(instruction) if word not in known]
    if unfamiliar:
        examples = ", ".join(repr(text) for text in sorted(trained, key=len)[:4])
        warnings.warn(
            f"The instruction {instruction!r} has words no instruction in this model's training data had "
            f"({', '.join(unfamiliar)}): it was trained on {len(trained)} instructions such as {examples}, and will "
            "most likely ignore this one. Use the phrasings it knows (its config's trained_instructions).",
            stacklevel=2,
        )
    return unfamiliar


def build_prompt(
    instruction: str | None = None,
    history: list[tuple[str, str]] | None = None,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    task: str | None = None,
) -> str:
    """The thinker's prompt for one spoken user turn, ending where the assistant's reply begins.

    Args:
        instruction: a tutor instruction given as text with the spoken turn ("Speak slowly.", "Repeat after me.").
        history: earlier turns as (user text, assistant text) pairs.
        system_prompt: the tutor's standing instruction; None: no system turn.
        task: replaces the whole user text after the audio (e.g. "Transcribe the audio." for alignment).

    Returns:
        ChatML text with one `<|audio_pad|>` for the user's audio, e.g.
        `<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n<|audio_pad|>\\nSpeak slowly.<|im_end|>\\n<|im_start|>assistant\\n`
    """
    check_instruction(instruction)
    turns = [] if system_prompt is None else [f"<|im_start|>system\n{system_prompt}<|im_end|>\n"]
    for user, assistant in history or []:
        turns.append(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n")
    extra = task if task is not None else instruction
    turns.append(f"<|im_start|>user\n{AUDIO_TOKEN}" + (f"\n{extra}" if extra else "") + "<|im_end|>\n")
    turns.append("<|im_start|>assistant\n")
    return "".join(turns)


class ConceptTalkerProcessor(ProcessorMixin):
    """Qwen2.5 tokenizer + audio preparation for Concept-Talker.

    Args:
        tokenizer: a Qwen2.5 tokenizer; the audio special tokens are added to it if missing.
        sampling_rate: the ear's sampling rate in Hz (the user's audio is resampled to it: 16 kHz for Whisper).
        hop_length: audio samples per ear frame.
        window_frames: ear frames per concept-adapter window.
        voice_sampling_rate: the codec's sampling rate in Hz (reference-voice clips are resampled to it; default
            `sampling_rate`).
        concepts_per_window: concept slots per window.
        max_audio_seconds: longest clip accepted.
        padding_side: `"left"` (for batched generation, default) or `"right"`.
    """

    def __init__(
        self,
        tokenizer=None,
        chat_template: str | None = None,
        sampling_rate: int = 24000,
        hop_length: int = 320,
        window_frames: int = 75,
        concepts_per_window: int = 4,
        max_audio_seconds: float = 30.0,
        padding_side: str = "left",
        voice_sampling_rate: int | None = None,
    ):
        missing = [t for t in AUDIO_SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": list(AUDIO_SPECIAL_TOKENS)})
        if tokenizer.pad_token is None:
            tokenizer.pad_token = "<|endoftext|>"
        self.sampling_rate = int(sampling_rate)
        self.voice_sampling_rate = int(voice_sampling_rate or sampling_rate)
        self.hop_length = int(hop_length)
        self.window_frames = int(window_frames)
        self.concepts_per_window = int(concepts_per_window)
        self.max_audio_seconds = float(max_audio_seconds)
        self.padding_side = padding_side
        super().__init__(tokenizer, chat_template=chat_template or CHAT_TEMPLATE)

    @classmethod
    def from_config(cls, config, tokenizer) -> ConceptTalkerProcessor:
        """A processor matching a `ConceptTalkerConfig` around `tokenizer` (an instance, or a folder / Hub id)."""
        if isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        processor = cls(
            tokenizer,
            sampling_rate=config.input_sampling_rate,
            hop_length=config.input_hop_length,
            window_frames=config.window_frames,
            voice_sampling_rate=config.sampling_rate,
            concepts_per_window=config.adapter_config.concepts_per_window,
            max_audio_seconds=config.max_audio_seconds,
        )
        ids = processor.tokenizer.convert_tokens_to_ids(list(AUDIO_SPECIAL_TOKENS))
        expected = [config.audio_start_token_id, config.audio_token_id, config.audio_end_token_id]
        if ids != expected:
            raise ValueError(
                f"The tokenizer gives the audio tokens {AUDIO_SPECIAL_TOKENS} the ids {ids}, but the model expects "
                f"{expected}: set audio_start_token_id/audio_token_id/audio_end_token_id in the config to match."
            )
        return processor

    @classmethod
    def _load_tokenizer_from_pretrained(cls, sub_processor_type, pretrained_model_name_or_path, subfolder="",
                                        **kwargs):
        """The tokenizer of a saved processor; for a local checkpoint saved without tokenizer files, Qwen2.5's
        (`default_tokenizer_source`), which every Concept-Talker thinker reads (the audio tokens are added to it)."""
        folder = os.path.join(os.fspath(pretrained_model_name_or_path), subfolder or "")
        if os.path.isdir(folder) and not any(os.path.isfile(os.path.join(folder, f)) for f in TOKENIZER_FILES):
            source = default_tokenizer_source()
            try:
                return super()._load_tokenizer_from_pretrained(sub_processor_type, source, **kwargs)
            except (OSError, ValueError) as err:
                raise OSError(
                    f"{folder} holds no tokenizer files ({', '.join(TOKENIZER_FILES)}), and Qwen2.5's tokenizer, "
                    f"which its model reads, could not be loaded from {source!r} instead ({err}). Set "
                    f"{TOKENIZER_VARIABLE} to a folder holding it (vocab.json, merges.txt, tokenizer_config.json), "
                    f"or build the processor with ConceptTalkerProcessor.from_config(model.config, TOKENIZER_DIR)."
                ) from err
        return super()._load_tokenizer_from_pretrained(sub_processor_type, pretrained_model_name_or_path, subfolder,
                                                       **kwargs)

    @property
    def audio_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)

    def concept_slots(self, num_samples: int) -> int:
        """Concept slots for a clip of `num_samples` at the ear's rate."""
        return self.concept_slots_for_frames(count_frames(num_samples, self.hop_length))

    def concept_slots_for_frames(self, num_frames: int) -> int:
        """Concept slots for a clip of `num_frames` ear frames (for precomputed features or codes)."""
        return count_concept_slots(num_frames, self.window_frames, self.concepts_per_window)

    def prepare_audio(self, audio, sampling_rate, name: str = "audio") -> torch.Tensor:
        """One clip -> mono float32 `[samples]` at the ear's rate (checked, downmixed, resampled)."""
        return prepare_audio(audio, sampling_rate, self.sampling_rate, self.max_audio_seconds, name=name)

    def prepare_voice(self, clip, sampling_rate, name: str = "voice clip") -> torch.Tensor:
        """A reference-voice clip -> mono float32 `[samples]` at the codec's rate.

        A clip must hold 1 s to 5 s of speech: a silent clip or one shorter than 1 s is refused; a longer one is cut
        to its first 5 s (the talker was trained on 1-5 s clips). Other sampling rates are resampled.
        """
        wave = prepare_audio(clip, sampling_rate, self.voice_sampling_rate, None, name=name)
        seconds = wave.numel() / self.voice_sampling_rate
        if seconds < VOICE_MIN_SECONDS:
            raise ValueError(
                f"The {name} is {seconds:.2f} s long; give at least {VOICE_MIN_SECONDS:g} s of the voice speaking."
            )
        if is_silent(wave):
            raise ValueError(f"The {name} is silent (peak below -60 dBFS): give a recording of the voice speaking.")
        return wave[: int(VOICE_MAX_SECONDS * self.voice_sampling_rate)]

    def expand_audio_placeholders(self, texts: list[str], clip_frames: list[int]) -> list[str]:
        """Replace the i-th `<|audio_pad|>` (in reading order across `texts`) by the slots of the i-th clip,
        whose length is given in ear frames."""
        count = sum(text.count(AUDIO_TOKEN) for text in texts)
        if any(AUDIO_START_TOKEN in text for text in texts):
            raise ValueError(
                f"The text already holds {AUDIO_START_TOKEN}: write one {AUDIO_TOKEN} per clip and let the processor "
                "expand it."
            )
        if count != len(clip_frames):
            raise ValueError(
                f"The text has {count} audio placeholder(s) ({AUDIO_TOKEN}) but {len(clip_frames)} audio clip(s) were "
                f"given: put exactly one {AUDIO_TOKEN} in the text for each clip, in the order of the clips "
                "(build_prompt and apply_chat_template do this)."
            )
        frames = iter(clip_frames)
        expanded = []
        for text in texts:
            pieces = text.split(AUDIO_TOKEN)
            out = [pieces[0]]
            for piece in pieces[1:]:
                slots = self.concept_slots_for_frames(next(frames))
                out.append(AUDIO_START_TOKEN + AUDIO_TOKEN * slots + AUDIO_END_TOKEN + piece)
            expanded.append("".join(out))
        return expanded

    def __call__(
        self,
        text: str | list[str] | None = None,
        audio=None,
        sampling_rate: int | None = None,
        voice=None,
        return_tensors: str | None = "pt",
        padding: bool | str = True,
        padding_side: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Tokenize chat text and prepare the audio clips it refers to.

        Args:
            text: one text or a batch of texts, each with one `<|audio_pad|>` per clip.
            audio: one clip, or a list of clips in the order their placeholders appear across the batch.
            sampling_rate: rate of the given audio in Hz (required with audio).
            voice: a reference clip of the voice the reply should be spoken in (1-5 s; at `sampling_rate`), or one
                per text in a batch.
            padding_side: overrides the processor's (`"left"` for generation, `"right"` for training).

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask` and, with audio, `input_values` `[clips, samples]`
            (float32 at the ear's rate, zero-padded) and `input_values_mask` `[clips, samples]`; with a voice,
            `voice_values` / `voice_values_mask` at the codec's rate.
        """
        if text is None:
            raise ValueError(
                "Pass text: the chat prompt with one <|audio_pad|> per clip (see build_prompt or apply_chat_template)."
            )
        texts = [text] if isinstance(text, str) else list(text)
        if audio is None:
            clips = []
        elif isinstance(audio, list | tuple) and len(audio) and not isinstance(audio[0], int | float):
            clips = list(audio)
        else:
            clips = [audio]
        waves = [self.prepare_audio(clip, sampling_rate, name=f"audio clip {i}") for i, clip in enumerate(clips)]
        for i, wave in enumerate(waves):
            if is_silent(wave):
                warnings.warn(
                    f"audio clip {i} is silent (its peak is below -60 dBFS): no speech was heard, so the reply "
                    "cannot answer a question. Check the recording (microphone, input device, gain).",
                    stacklevel=2,
                )
        texts = self.expand_audio_placeholders(texts, [count_frames(w.numel(), self.hop_length) for w in waves])
        encoded = self.tokenizer(
            texts,
            padding=padding,
            padding_side=padding_side or self.padding_side,
            return_tensors=return_tensors,
            add_special_tokens=False,
            **kwargs,
        )
        data = dict(encoded)
        if waves:
            data["input_values"], data["input_values_mask"] = _pad_waves(waves)
        if voice is not None:
            voices = list(voice) if isinstance(voice, list | tuple) and len(texts) > 1 else [voice]
            if len(voices) != len(texts):
                raise ValueError(f"Give one voice clip per text: {len(voices)} clips for {len(texts)} texts.")
            waves = [self.prepare_voice(v, sampling_rate, name=f"voice clip {i}") for i, v in enumerate(voices)]
            data["voice_values"], data["voice_values_mask"] = _pad_waves(waves)
        return BatchFeature(data, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "input_values", "input_values_mask", "voice_values", "voice_values_mask"]


def _pad_waves(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips `[samples_i]` -> zero-padded `[clips, max_samples]` and mask `[clips, max_samples]` (1 = real)."""
    longest = max(w.numel() for w in waves)
    values = torch.zeros(len(waves), longest)
    mask = torch.zeros(len(waves), longest, dtype=torch.long)
    for i, wave in enumerate(waves):
        values[i, : wave.numel()] = wave
        mask[i, : wave.numel()] = 1
    return values, mask


__all__ = ["ConceptTalkerProcessor", "build_prompt", "check_instruction", "warn_if_unfamiliar_instruction",
           "DEFAULT_SYSTEM_PROMPT"]

ConceptTalkerProcessor.register_for_auto_class("AutoProcessor")
