"""Real recordings in LJSpeech layout, in the schema of the synthetic tutoring data.

    FOLDER/metadata.csv      id|text|normalized text   (one utterance per line, no header)
    FOLDER/wavs/<id>.wav     (or .flac / .ogg) the recording, any rate, mono or stereo

Each utterance becomes a row for stage 1 (spoken question -> transcript): `question_text` is the normalised text,
`question_audio` the recording at the codec's rate, `question_codes` its codes, `question_voice` the speaker name;
the reply and reference columns are None. Utterances go to train / validation / test by a stable hash of their id
(the folder has one speaker, so voices cannot be held out).

    dataset = load_ljspeech("../shared/assets/speech/ljspeech-dev", codec="tiny")
    concept-talker synth --from-ljspeech ../shared/assets/speech/ljspeech-dev --out data/ljspeech-dev
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator

import numpy as np
import torch

from modeling_concept_talker.audio import load_audio, prepare_audio

from .dialogue import SPLITS, stable_fraction
from .dataset import (
    DEFAULT_AUDIO,
    FORMAT,
    FORMAT_VERSION,
    check_output_dir,
    dataset_features,
    empty_dataset,
    encode_audio_columns,
    load_synth_info,
    plan_features,
    process_codec,
    rendered_features,
    save_atomically,
    set_info,
)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


def read_metadata(folder: str) -> list[tuple[str, str]]:
    """(id, text) per line of `folder/metadata.csv`: the normalised text (third field), or the text if absent."""
    path = os.path.join(folder, "metadata.csv")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{folder} has no metadata.csv: an LJSpeech folder holds metadata.csv (id|text|normalized text) and wavs/."
        )
    entries = []
    with open(path, encoding="utf-8", newline="") as f:
        for number, fields in enumerate(csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE), start=1):
            if not fields or not "".join(fields).strip():
                continue
            if len(fields) < 2:
                raise ValueError(f"{path}, line {number}: expected id|text|normalized text, got {'|'.join(fields)!r}.")
            text = (fields[2] if len(fields) > 2 and fields[2].strip() else fields[1]).strip()
            if not text:
                raise ValueError(f"{path}, line {number}: utterance {fields[0]!r} has no text.")
            entries.append((fields[0].strip(), text))
    if not entries:
        raise ValueError(f"{path} lists no utterances.")
    return entries


def _audio_path(folder: str, utterance_id: str) -> str:
    for extension in AUDIO_EXTENSIONS:
        path = os.path.join(folder, "wavs", utterance_id + extension)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"No recording for {utterance_id!r} in {os.path.join(folder, 'wavs')} (looked for "
        f"{', '.join(utterance_id + e for e in AUDIO_EXTENSIONS)})."
    )


def _split_of(utterance_id: str, validation_fraction: float, test_fraction: float) -> str:
    fraction = stable_fraction(f"ljspeech:{utterance_id}")
    if fraction < validation_fraction:
        return "validation"
    if fraction < validation_fraction + test_fraction:
        return "test"
    return "train"


def _rows(folder: str, entries, sampling_rate: int, speaker: str, max_seconds: float | None) -> Iterator[dict]:
    """Rows of the schema for `entries`, reading and resampling one recording at a time."""
    absent = ("reply_text", "reference_text", "reply_voice", "question_rate", "question_pitch", "reply_rate",
              "reply_pitch", "reference_rate", "reply_seconds", "reference_seconds", "reference_f0")
    for utterance_id, text in entries:
        path = _audio_path(folder, utterance_id)
        audio, rate = load_audio(path)
        with torch.inference_mode():
            wave = prepare_audio(audio, rate, sampling_rate, max_seconds=max_seconds, name=path).numpy()
        yield {
            "id": utterance_id, "skill": "transcription", "item": f"ljspeech:{utterance_id}", "template": "",
            "instruction": "", "style": "normal", "question_text": text, "question_voice": speaker,
            "question_seconds": len(wave) / sampling_rate, "question_audio": wave.astype(np.float32),
            **dict.fromkeys(absent),
        }


def load_ljspeech(
    folder: str,
    codec="tiny",
    num_codebooks: int | None = None,
    validation_size: float = 0.05,
    test_size: float = 0.05,
    speaker: str = "ljspeech",
    audio_columns=DEFAULT_AUDIO,
    max_seconds: float | None = 30.0,
    num_proc: int = 1,
    batch_size: int = 16,
):
    """An LJSpeech-layout folder as a `DatasetDict` (train / validation / test) in the synthetic data's schema.

    Recordings are read one at a time into an on-disk Arrow file (`Dataset.from_generator`), then encoded with a
    batched `map`; both are cached by `datasets`, so loading the same folder with the same codec again is quick.

    Args:
        folder: holds `metadata.csv` and `wavs/`.
        codec: codec spec (see `concept_talker.data.codecs.resolve_codec`); audio is resampled to its rate and encoded.
        num_codebooks: codebooks to keep (default: the codec's).
        validation_size, test_size: fractions of utterances for validation and test (by a hash of the id).
        speaker: the name stored as `question_voice`.
        audio_columns: audio columns of the schema (`dataset_features(audio_columns)`); the recording is stored
            as `question_audio` if `question` is among them. Use the `--audio` of a synthetic dataset to get a
            dataset that concatenates with it; columns a recording has no value for hold None.
        max_seconds: refuse recordings longer than this (s).
        num_proc, batch_size: for the encoding `map`.
    """
    from datasets import Dataset, DatasetDict, Features

    from .codecs import describe_codec

    if not 0 <= validation_size < 1 or not 0 <= test_size < 1 or validation_size + test_size >= 1:
        raise ValueError("validation_size and test_size are fractions of the utterances, together under 1.")
    entries = read_metadata(folder)
    for utterance_id, _ in entries:
        _audio_path(folder, utterance_id)  # every recording is there before any work starts
    codec_module = process_codec(codec, num_codebooks)
    codec_info = describe_codec(codec_module, codec)
    features = dataset_features(audio_columns)
    input_features = Features({**plan_features(), **rendered_features(("question",))})
    by_split = {split: [e for e in entries if _split_of(e[0], validation_size, test_size) == split] for split in SPLITS}
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": f"ljspeech:{os.path.abspath(folder)}",
        "codec": codec_info,
        "tts": None,
        "sampling_rate": int(codec_module.sampling_rate),
        "audio_columns": [kind for kind in audio_columns],
        "splits": {split: {"num_rows": len(rows), "voices": [speaker]} for split, rows in by_split.items()},
    }
    splits = {}
    for split, split_entries in by_split.items():
        if not split_entries:
            splits[split] = set_info(empty_dataset(features), info)
            continue
        dataset = Dataset.from_generator(
            _rows, features=input_features,
            gen_kwargs={"folder": os.path.abspath(folder), "entries": split_entries,
                        "sampling_rate": int(codec_module.sampling_rate), "speaker": speaker, "max_seconds": max_seconds},
        )
        encoded = encode_audio_columns(
            dataset, codec, ("question",), num_codebooks, keep_audio=audio_columns, num_proc=num_proc,
            batch_size=batch_size, desc=f"Encoding {split}", codec_fingerprint=codec_info["fingerprint"],
        )
        # Columns a recording has no value for (reply and reference audio and codes) are None.
        for name in features:
            if name not in encoded.column_names:
                encoded = encoded.add_column(name, [None] * len(encoded), feature=features[name])
        splits[split] = set_info(encoded.select_columns(list(features)).cast(features), info)
    return DatasetDict(splits)


def build_ljspeech_dataset(folder: str, output_dir: str, overwrite: bool = False, **kwargs):
    """`load_ljspeech(folder, **kwargs)` saved atomically to `output_dir`; returns the `DatasetDict`."""
    from datasets import load_from_disk

    output_dir = os.path.abspath(output_dir)
    check_output_dir(os.path.abspath(output_dir), overwrite)
    dataset = load_ljspeech(folder, **kwargs)
    save_atomically(dataset, output_dir, load_synth_info(dataset), overwrite=overwrite)
    return load_from_disk(output_dir)


__all__ = ["build_ljspeech_dataset", "load_ljspeech", "read_metadata"]
