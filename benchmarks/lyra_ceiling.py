"""The intelligibility ceiling of the Lyra codec: recogniser WER on real speech before and after a Lyra round trip.

Whatever the talker learns, its speech can be no more intelligible than the codec's round trip of real speech: this
measures that ceiling on LJSpeech clips with the offline recogniser (`concept_talker.evaluation.asr`), next to the original audio
(the recogniser's own ceiling) and time-reversed audio (garbage: should score near 100%), under each language model:

- `general`: pocketsphinx's general English trigram model;
- `ljspeech-unigram`: equal probabilities over the words of the clips' transcripts;
- `ljspeech-3gram`: a trigram model of the transcripts themselves (in-domain, test sentences included, as for the
  tutoring corpus whose sentences the talker speaks): the sharpest check, not an open-vocabulary WER.

It also times the codec (real-time factor: seconds of compute per second of audio, one clip at a time).

    python -m benchmarks.lyra_ceiling --json benchmarks/results/lyra_ceiling.json
    python -m benchmarks.lyra_ceiling --clips 20 --quantizers 8 --language-models ljspeech-3gram
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("CONCEPT_TALKER_ASSETS", REPO.parent / "shared" / "assets"))
LANGUAGE_MODELS = ("general", "ljspeech-unigram", "ljspeech-3gram")


def read_ljspeech_metadata(folder: str | os.PathLike) -> list[tuple[str, str]]:
    """(clip id, normalised transcript) of each line of an LJSpeech-format `metadata.csv` (`id|text|normalised`)."""
    with open(Path(folder) / "metadata.csv", encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("|") for line in f if line.strip()]
    return [(row[0], row[-1]) for row in rows]


def load_ljspeech(folder: str | os.PathLike, limit: int | None = None, sampling_rate: int = 16000):
    """LJSpeech-format clips: list of (id, normalised transcript, mono float32 audio `[samples]` at `sampling_rate`)."""
    from modeling_concept_talker.audio import load_audio, prepare_audio

    clips = []
    for clip_id, text in read_ljspeech_metadata(folder)[:limit]:
        audio, rate = load_audio(str(Path(folder) / "wavs" / f"{clip_id}.flac"))
        clips.append((clip_id, text, prepare_audio(audio, rate, sampling_rate)))
    return clips


def lyra_round_trip(codec, clips) -> tuple[list[torch.Tensor], float, float]:
    """Encode and decode each clip alone; the decoded clips (trimmed to the input length) and the encode and
    decode real-time factors."""
    encode_seconds = decode_seconds = 0.0
    decoded = []
    for _, _, audio in clips:
        start = time.perf_counter()
        codes = codec.encode(audio[None])
        middle = time.perf_counter()
        wave = codec.decode(codes)[0, : audio.shape[-1]]
        encode_seconds += middle - start
        decode_seconds += time.perf_counter() - middle
        decoded.append(wave)
    audio_seconds = sum(audio.shape[-1] for _, _, audio in clips) / codec.sampling_rate
    return decoded, encode_seconds / audio_seconds, decode_seconds / audio_seconds


def build_recognizer(name: str, transcripts: list[str]):
    from concept_talker.evaluation.asr import PocketsphinxRecognizer, normalize_text

    if name == "general":
        return PocketsphinxRecognizer()
    if name == "ljspeech-unigram":
        return PocketsphinxRecognizer.from_vocabulary({w for t in transcripts for w in normalize_text(t).split()})
    if name == "ljspeech-3gram":
        return PocketsphinxRecognizer.from_corpus(transcripts, order=3)
    raise ValueError(f"Unknown language model {name!r}: choose from {', '.join(LANGUAGE_MODELS)}.")


def run(lyra_dir, data_dir, clips: int | None, quantizers: list[int], language_models: list[str]) -> dict:
    from modeling_concept_talker import LyraCodecConfig
    from modeling_concept_talker.lyra import LyraCodec
    from concept_talker.evaluation.asr import char_error_rate, word_error_rate

    data = load_ljspeech(data_dir, clips)
    all_transcripts = [text for _, text in read_ljspeech_metadata(data_dir)]
    references = [text for _, text, _ in data]
    conditions = {"original": [audio for _, _, audio in data]}
    codec_speed = {}
    for count in quantizers:
        codec = LyraCodec(LyraCodecConfig(model_dir=str(lyra_dir)), count)
        decoded, encode_rtf, decode_rtf = lyra_round_trip(codec, data)
        conditions[f"lyra-{count}q"] = decoded
        codec_speed[f"lyra-{count}q"] = {
            "kbps": count * 4 * codec.frame_rate / 1000,
            "encode_rtf": round(encode_rtf, 5),
            "decode_rtf": round(decode_rtf, 5),
        }
        kbps = codec_speed[f"lyra-{count}q"]["kbps"]
        print(f"lyra {count:2d} quantizers ({kbps:g} kbps): encode RTF {encode_rtf:.4f}, decode RTF {decode_rtf:.4f}")
    conditions["reversed"] = [audio.flip(-1) for _, _, audio in data]

    results = {}
    for name in language_models:
        recognizer = build_recognizer(name, all_transcripts)
        results[name] = {"unpronounceable_words": recognizer.unpronounceable_words, "conditions": {}}
        for condition, audios in conditions.items():
            start = time.perf_counter()
            hypotheses = recognizer.transcribe_batch(audios, 16000)
            seconds = time.perf_counter() - start
            scores = {
                "wer": round(word_error_rate(references, hypotheses), 4),
                "cer": round(char_error_rate(references, hypotheses), 4),
                "seconds_per_clip": round(seconds / len(audios), 3),
                "examples": [{"reference": r, "hypothesis": h} for r, h in list(zip(references, hypotheses))[:3]],
            }
            results[name]["conditions"][condition] = scores
            print(f"{name:17s} {condition:10s} WER {scores['wer']:6.1%}  CER {scores['cer']:6.1%}  "
                  f"{scores['seconds_per_clip']:.2f} s/clip")
    audio_seconds = sum(audio.shape[-1] for _, _, audio in data) / 16000
    return {
        "data": str(data_dir),
        "clips": len(data),
        "audio_seconds": round(audio_seconds, 1),
        "codec": codec_speed,
        "asr": results,
        "notes": {
            "ljspeech-3gram": "trigram model of all the folder's transcripts, the scored sentences included",
            "ljspeech-unigram": "equal probabilities over the words of all the folder's transcripts",
            "general": "pocketsphinx's bundled general English model",
        },
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lyra-dir", default=str(ASSETS / "lyra-soundstream"), help="folder of Lyra's TFLite models")
    parser.add_argument("--data-dir", default=str(ASSETS / "speech" / "ljspeech-dev"), help="LJSpeech-format folder")
    parser.add_argument("--clips", type=int, default=None, help="first N clips (default: all)")
    parser.add_argument("--quantizers", type=int, nargs="+", default=[8, 16], help="Lyra quantizer counts to test")
    parser.add_argument("--language-models", nargs="+", default=list(LANGUAGE_MODELS), choices=LANGUAGE_MODELS)
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    results = run(args.lyra_dir, args.data_dir, args.clips, args.quantizers, args.language_models)
    if args.json:
        from concept_talker.files import write_json

        write_json(args.json, results)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
