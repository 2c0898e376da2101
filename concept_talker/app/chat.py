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

import argparse
import json
import os
import sys
import tempfile

import numpy as np

DEFAULT_MODEL = "the embedded tiny-lyra checkpoint (checkpoints/tiny-lyra), or the tiny preset where Lyra is missing"


# The command-line flag of each generation setting, to name it in errors.
SETTING_FLAGS = {"thinker_max_new_tokens": "--max-new-tokens", "max_audio_seconds": "--max-reply-seconds",
                 "thinker_repetition_penalty": "--repetition-penalty", "seed": "--seed"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help=f"checkpoint folder, Hub id, or preset name (default: {DEFAULT_MODEL})")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--audio", help="the spoken question: a WAV/FLAC file, any rate, mono or stereo")
    source.add_argument("--say", help="speak this question with the offline TTS (espeak-ng) instead of --audio")
    parser.add_argument("--out", default="reply.wav", help="where to write the spoken reply (WAV)")
    parser.add_argument("--instruction", help='a tutor instruction given as text, e.g. "Speak slowly."')
    parser.add_argument("--voice", help="a 1-5 s recording of the voice to answer in (models trained with voices)")
    parser.add_argument("--stream", action="store_true", help="stream in (live pieces) and out (chunks)")
    parser.add_argument("--tokenizer", help="tokenizer folder or Hub id, for presets (default: offline Qwen2.5 copy)")
    parser.add_argument("--lyra-dir", help="folder of the Lyra SoundStream models, for Lyra presets and checkpoints")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="longest reply text, in tokens")
    parser.add_argument("--max-reply-seconds", "--max-audio-seconds", dest="max_audio_seconds", type=float,
                        default=20.0, help="longest reply audio, in seconds (the generation setting max_audio_seconds; "
                                           "the longest question is the model's own limit)")
    parser.add_argument("--sample", action="store_true", help="sample the reply text (default: greedy)")
    parser.add_argument("--repetition-penalty", type=float,
                        help="> 1 discourages the reply text from repeating its own tokens, e.g. 1.3 "
                             "(default: the checkpoint's, else 1.0 = off)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the talker's sampling")
    parser.add_argument("--json", help="also write the reply text and timings to this JSON file")


def question_audio(args) -> tuple[np.ndarray, int]:
    from modeling_concept_talker.audio import load_audio

    if args.say:
        from concept_talker.data.tts import default_tts

        tts = default_tts()
        wave, rate = tts.synthesize(args.say)
        return np.asarray(wave, dtype=np.float32), int(rate)
    if not args.audio:
        raise SystemExit("Give the spoken question with --audio FILE (or --say TEXT to synthesise one).")
    if not os.path.isfile(args.audio):
        raise SystemExit(f"No such audio file: {args.audio}")
    return load_audio(args.audio)


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


def run(args) -> int:
    from modeling_concept_talker.audio import load_audio, save_audio

    loaded, note = load_chat_model(args.model, tokenizer=args.tokenizer, lyra_dir=args.lyra_dir)
    if note:
        print(f"Note: {note}.")
    model, processor = loaded.model, loaded.processor
    print(f"Model: {loaded.description}")
    try:  # a bad setting is reported before any work
        settings = reply_settings(model, args.max_new_tokens, args.sample, args.max_audio_seconds, args.seed,
                                  args.repetition_penalty)
    except ValueError as err:
        flag = next((flag for name, flag in SETTING_FLAGS.items() if str(err).startswith(name)), None)
        raise SystemExit(f"{flag}: {err}" if flag else str(err)) from None
    audio, rate = question_audio(args)
    try:
        check_question(audio, rate, model.config.max_audio_seconds)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    voice, voice_rate = (None, None)
    if args.voice:
        if not os.path.isfile(args.voice):
            raise SystemExit(f"No such audio file: {args.voice}")
        voice, voice_rate = load_audio(args.voice)

    if args.stream:
        writer = WavChunkWriter(args.out, model.codec.sampling_rate)
        reply = None
        try:
            reply = answer(model, processor, audio, rate, args.instruction, voice, voice_rate, stream=True,
                           streamer=writer, **settings)
        finally:
            writer.close(keep=reply is not None)
        measured_from = "end of speech"
    else:
        reply = answer(model, processor, audio, rate, args.instruction, voice, voice_rate, stream=False, **settings)
        save_audio(args.out, reply.waveforms[0], reply.sampling_rate)
        measured_from = "start of generate()"

    text = reply_text(processor, reply)
    timings = reply.timings
    print(f"Question: {len(audio) / rate:.2f} s of audio at {rate} Hz")
    print(f"Reply text: {text!r}")
    print(f"Reply audio: {timings['audio_s']:.2f} s -> {args.out}")
    print(f"Timings: {describe_timings(timings, measured_from)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"text": text, "model": loaded.description, "stream": args.stream, **timings}, f, indent=2)
    return 0


def main(argv=None) -> int:  # pragma: no cover - convenience
    parser = argparse.ArgumentParser(prog="concept-talker chat")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
