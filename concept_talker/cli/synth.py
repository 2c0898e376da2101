"""`concept-talker synth`: the command line of `concept_talker.data.synth`."""

from __future__ import annotations

import logging
import sys

from concept_talker.data.dataset import AUDIO_KINDS, DEFAULT_AUDIO
from concept_talker.data.dialogue import SKILLS
from concept_talker.data.synth import SynthConfig, build_synthetic_dataset


def fraction_or_count(text: str) -> float:
    value = float(text)
    if value < 0 or (value >= 1 and value != int(value)):
        raise ValueError
    return value


def add_arguments(parser) -> None:
    parser.add_argument("--out", help="folder for the finished dataset (load it with datasets.load_from_disk)")
    parser.add_argument("--n", type=int, help="dialogue exchanges in all splits together")
    parser.add_argument("--voices", nargs="+", help="training voices (default: the TTS's training set)")
    parser.add_argument("--validation-voices", nargs="+", help="held-out voices for validation")
    parser.add_argument("--test-voices", nargs="+", help="held-out voices for test")
    parser.add_argument("--allow-voice-overlap", action="store_true",
                        help="let evaluation voices be training voices too (for one-voice TTS models)")
    parser.add_argument("--codec", default="tiny",
                        help="preset (tiny), Lyra folder, Concept-Talker checkpoint, or EnCodec/Mimi id or folder")
    parser.add_argument("--num-codebooks", type=int, help="codebooks to keep (default: the codec's)")
    parser.add_argument("--tts", default="espeak", help="espeak (offline), vits, vits:<id or folder>")
    parser.add_argument("--reply-tts", default="piper",
                        help="the house voice that speaks the replies (piper: en_US-joe-medium; or a questions' TTS)")
    parser.add_argument("--ear", help="a Whisper model (Hub id or folder) whose encoder frames are stored for each "
                                      "question; the model's ear must be the same (default: codes only)")
    parser.add_argument("--transcribe-rows", type=int, default=0,
                        help="general-English sentences (question only) in an extra 'transcribe' split")
    parser.add_argument("--transcribe-vocabulary", type=int,
                        help="the general-English sentences draw from this many of the most frequent English words "
                             "(default all 7,990)")
    parser.add_argument("--question-rows", type=int, default=0,
                        help="more renditions of training questions (question only, other voices) in an extra "
                             "'questions' split, for the listening stages")
    parser.add_argument("--repeat-rows", type=int, default=0,
                        help="'repeat after me' turns of general English with spoken replies in an extra 'repeats' "
                             "split, for the reply stage (many more words for the talker to say)")
    parser.add_argument("--repeat-vocabulary", type=int, default=3000,
                        help="the repeat turns draw from this many of the most frequent English words (default 3,000)")
    parser.add_argument("--num-proc", type=int, default=1, help="worker processes (one torch thread each)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch threads for encoding when --num-proc is 1 (default 1; prefer --num-proc)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validation-size", type=fraction_or_count, default=0.05, help="fraction (< 1) or number of rows")
    parser.add_argument("--test-size", type=fraction_or_count, default=0.05, help="fraction (< 1) or number of rows")
    parser.add_argument("--skills", nargs="+", choices=SKILLS, help="dialogue skills (default: all)")
    parser.add_argument("--audio", nargs="*", choices=AUDIO_KINDS, default=list(DEFAULT_AUDIO),
                        help="waveforms to store next to the codes (default: question reply; none: --audio)")
    parser.add_argument("--shard-size", type=int, default=256, help="rows per shard (the unit of resumption)")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per map batch")
    parser.add_argument("--work-dir", help="folder for finished shards (default: OUT.partial)")
    parser.add_argument("--keep-work-dir", action="store_true", help="keep the shards after the dataset is saved")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset at --out (only one made by concept-talker synth)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also push the dataset to this Hub repo")
    parser.add_argument("--public", action="store_true", help="make the Hub repo public (default private)")
    parser.add_argument("--from-ljspeech", metavar="FOLDER",
                        help="encode real recordings in LJSpeech layout (metadata.csv + wavs/) instead of TTS")
    parser.add_argument("--list-voices", action="store_true", help="print the TTS's voices per split and exit")


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from concept_talker.data.tts import TTSUnavailableError, load_tts

    try:
        if args.list_voices:
            tts = load_tts(args.tts)
            for split, voices in tts.default_voice_splits().items():
                print(f"{split}: {' '.join(voices)}")
            return 0
        if not args.out:
            raise ValueError("--out is required: the folder to write the dataset to.")
        if args.from_ljspeech:
            from concept_talker.data.ljspeech import build_ljspeech_dataset

            dataset = build_ljspeech_dataset(
                args.from_ljspeech, args.out, codec=args.codec, num_codebooks=args.num_codebooks,
                validation_size=args.validation_size, test_size=args.test_size, num_proc=args.num_proc,
                batch_size=args.batch_size, audio_columns=tuple(args.audio), overwrite=args.overwrite,
            )
        else:
            if args.n is None:
                raise ValueError("--n is required: how many dialogue exchanges to make.")
            config = SynthConfig(
                num_rows=args.n, validation_size=args.validation_size, test_size=args.test_size, seed=args.seed,
                tts=args.tts, codec=args.codec, num_codebooks=args.num_codebooks, voices=args.voices,
                validation_voices=args.validation_voices, test_voices=args.test_voices, skills=args.skills,
                audio_columns=tuple(args.audio), allow_voice_overlap=args.allow_voice_overlap,
                reply_tts=args.reply_tts, ear=args.ear, transcribe_rows=args.transcribe_rows,
                transcribe_vocabulary=args.transcribe_vocabulary,
                question_rows=args.question_rows, repeat_rows=args.repeat_rows,
                repeat_vocabulary=args.repeat_vocabulary,
            )
            dataset = build_synthetic_dataset(
                config, args.out, work_dir=args.work_dir, overwrite=args.overwrite, keep_work_dir=args.keep_work_dir,
                num_proc=args.num_proc, shard_size=args.shard_size, batch_size=args.batch_size,
                push_to_hub=args.push_to_hub, private=not args.public, torch_threads=args.torch_threads,
            )
    except (TTSUnavailableError, FileExistsError, ValueError, RuntimeError, ImportError) as err:
        print(f"concept-talker synth: error: {err}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{split} {len(ds)}" for split, ds in dataset.items())
    print(f"Saved {args.out} ({sizes} rows).")
    return 0
