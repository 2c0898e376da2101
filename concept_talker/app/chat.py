"""`concept-talker chat`: answer one spoken question with a spoken reply, and say how fast it was.

    concept-talker chat --audio question.wav --out reply.wav [--model DIR_OR_HUB_ID] [--instruction "Speak slowly."]
                        [--stream] [--say "What does brave mean?"]

With `--stream`, the question is fed in 100 ms pieces as if spoken live (the thinker reads each completed window
while the user speaks) and the reply is written as its chunks arrive; the first-audio time then counts from the end
of speech, which is what a user waits.

The steps are helpers that `concept-talker demo` (the browser page) shares: `load_chat_model`, `reply_settings`,
`check_question`, `answer`, `reply_text`, `describe_timings`.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

DEFAULT_MODEL = "the embedded tiny-lyra checkpoint (checkpoints/tiny-lyra), or the tiny preset where Lyra is missing"


class WavChunkWriter:
    """A streamer that writes each reply chunk to a WAV file as it arrives (a temporary file, renamed when done)."""

    def __init__(self, path: str, sampling_rate: int):
        import soundfile

        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(suffix=".wav", dir=directory)
        os.close(fd)
        self.file = soundfile.SoundFile(self.tmp, "w", samplerate=sampling_rate, channels=1, subtype="PCM_16")
        self.chunks = 0

    def put(self, chunk) -> None:
        self.file.write(np.clip(chunk.samples, -1.0, 1.0))
        self.chunks += 1

    def end(self) -> None:
        pass

    def close(self, keep: bool) -> None:
        from modeling_concept_talker.audio import apply_umask

        self.file.close()
        if keep:
            apply_umask(self.tmp)
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)


def load_chat_model(spec: str | None = None, tokenizer: str | None = None, lyra_dir: str | None = None):
    """The model `chat` and `demo` answer with: `spec` (a folder, Hub id or preset), else the default.

    Returns `(LoadedModel, note)`: `note` says why the default fell back to the random `tiny` preset, else None.
    """
    from configuration import preset_names
    from concept_talker.loading import default_model, load_model

    overrides = {}
    if lyra_dir:
        overrides["codec_config"] = {"model_type": "lyra_soundstream", "model_dir": lyra_dir}
    note = None
    if spec is None:
        spec, why_not_embedded = default_model()
        if why_not_embedded:
            note = f"using the tiny preset because {why_not_embedded}"
    loaded = load_model(spec, tokenizer=tokenizer, lyra_dir=lyra_dir, **(overrides if spec in preset_names() else {}))
    return loaded, note


def reply_settings(model, max_new_tokens: int = 64, sample: bool = False, max_audio_seconds: float = 20.0,
                   seed: int = 0, repetition_penalty: float | None = None) -> dict:
    """Generation settings for one turn, checked against `model` (a bad value raises `ValueError` before any work)."""
    from modeling_concept_talker.generation import SpokenGenerationConfig

    settings = dict(thinker_max_new_tokens=max_new_tokens, thinker_do_sample=sample,
                    max_audio_seconds=max_audio_seconds, seed=seed)
    if repetition_penalty is not None:
        settings["thinker_repetition_penalty"] = repetition_penalty
    SpokenGenerationConfig.for_model(model, settings)
    return settings


def check_question(audio: np.ndarray, rate: int, max_seconds: float) -> None:
    """Refuse a question the model cannot answer usefully, with a `ValueError` that says what to do:
    an empty or silent recording (peak below -60 dBFS), or one longer than `max_seconds`."""
    samples = np.asarray(audio)
    if samples.size == 0:
        raise ValueError("The recording is empty: record or upload a spoken question.")
    seconds = samples.shape[0] / rate
    if seconds > max_seconds:
        raise ValueError(f"The question is {seconds:.1f} s long; this model listens to at most {max_seconds:g} s: "
                         "ask a shorter question.")
    if not np.isfinite(samples).all() or float(np.abs(samples).max()) < 1e-3:
        raise ValueError("No speech was heard in the question: the recording is silent (peak below -60 dBFS). Check "
                         "the microphone and speak, or upload a recording of the question.")


def answer(model, processor, audio: np.ndarray, rate: int, instruction: str | None = None, voice=None,
           voice_rate: int | None = None, stream: bool = True, streamer=None, **settings):
    """Answer one spoken question: a `SpokenReply` (None if `streamer`'s consumer went away).

    With `stream`, the question is fed in 100 ms pieces as a microphone would deliver them (the thinker reads each
    completed window while the user speaks) and the reply's chunks go to `streamer` as they are made; timings count
    from the end of speech. Without, the whole question goes through the processor and `generate`; timings count
    from the start of `generate()`. `settings` are `reply_settings(...)`.
    """
    import torch

    from modeling_concept_talker import build_prompt
    from modeling_concept_talker.processing_concept_talker import warn_if_unfamiliar_instruction
    from modeling_concept_talker.streaming import SpokenTurn

    with torch.inference_mode():
        if stream:
            turn = SpokenTurn(model, processor, sampling_rate=rate, instruction=instruction, voice=voice,
                              voice_sampling_rate=voice_rate, **settings)
            piece = max(1, rate // 10)
            for start in range(0, len(audio), piece):
                turn.feed(audio[start : start + piece])
            return turn.reply(streamer=streamer)
        warn_if_unfamiliar_instruction(model.config, instruction)  # SpokenTurn does it when streaming
        batch = processor(text=build_prompt(instruction), audio=audio, sampling_rate=rate)
        if voice is not None:
            voice_wave = processor.prepare_voice(voice, voice_rate)
            batch["voice_values"], batch["voice_values_mask"] = voice_wave[None], torch.ones(1, voice_wave.numel())
        return model.generate(**batch, streamer=streamer, tokenizer=processor.tokenizer, **settings)


def reply_text(processor, reply) -> str:
    return processor.decode(reply.sequences[0], skip_special_tokens=True).strip()


def describe_timings(timings: dict, measured_from: str = "end of speech") -> str:
    return (f"first audio {1000 * timings['first_audio_s']:.0f} ms after the {measured_from}, "
            f"total {timings['total_s']:.2f} s, real-time factor {timings['rtf']:.2f}")
