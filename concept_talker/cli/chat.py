"""`concept-talker chat`: the command line of `concept_talker.app.chat`."""

from __future__ import annotations

import argparse
import os

import numpy as np

from concept_talker.app.chat import (
    DEFAULT_MODEL,
    WavChunkWriter,
    answer,
    check_question,
    describe_timings,
    load_chat_model,
    reply_settings,
    reply_text,
)
from concept_talker.files import write_json


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
        write_json(args.json, {"text": text, "model": loaded.description, "stream": args.stream, **timings})
    return 0
