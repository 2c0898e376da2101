"""The dataset format every Concept-Talker speech dataset shares (synthetic, `synth.py`, or recordings, `ljspeech.py`):
its columns (`dataset_features`), its info (`synth_info.json`: what made it, which codec), the codec and ear codes
added to its audio columns (`encode_audio_columns`), and folders written whole or not at all (`save_atomically`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
from collections.abc import Sequence

import numpy as np
import torch

from concept_talker.files import write_directory, write_json

FORMAT = "concept-talker-synth"
FORMAT_VERSION = 2
AUDIO_KINDS = ("question", "reply", "reference")
DEFAULT_AUDIO = ("question", "reply")
SYNTH_INFO_FILE = "synth_info.json"
def plan_features() -> dict:
    from datasets import Value

    text = ("id", "skill", "item", "template", "instruction", "style", "question_text", "reply_text", "reference_text")
    features = {name: Value("string") for name in text}
    features.update({
        "question_voice": Value("string"), "question_rate": Value("int16"), "question_pitch": Value("int16"),
        "question_speed": Value("float32"), "question_snr_db": Value("float32"),
        "reply_voice": Value("string"), "reply_rate": Value("int16"), "reply_pitch": Value("int16"),
        "reference_rate": Value("int16"), "voice_given": Value("bool"),
    })
    return features


def rendered_features(audio_columns: Sequence[str]) -> dict:
    from datasets import List, Value

    features = {f"{kind}_seconds": Value("float32") for kind in AUDIO_KINDS}
    features["reference_f0"] = Value("float32")
    features["question_word_spans"] = List(List(Value("int32")))
    features["question_word_seconds"] = List(List(Value("float32")))
    features["reply_phonemes"] = Value("string")
    features["reply_phoneme_chars"] = List(Value("int32"))
    features["reply_phoneme_samples"] = List(Value("int64"))
    features.update({f"{kind}_audio": List(Value("float32")) for kind in AUDIO_KINDS if kind in audio_columns})
    return features


def codes_features(ear_width: int | None = None) -> dict:
    from datasets import Array2D, List, Value

    features = {f"{kind}_codes": List(List(Value("int16"))) for kind in AUDIO_KINDS}
    features["reply_phoneme_frames"] = List(Value("int16"))
    if ear_width:
        features["question_features"] = Array2D(shape=(None, ear_width), dtype="float16")
    return features


def dataset_features(audio_columns: Sequence[str] = DEFAULT_AUDIO, ear_width: int | None = None):
    """The `datasets.Features` of a Concept-Talker speech dataset (synthetic or loaded from recordings).

    Audio is `List(Value("float32"))` and codes are `List(List(Value("int16")))` `[codebooks][frames]` (the `Audio`
    feature needs torchcodec, which is not a dependency); the ear's frames are `Array2D((None, ear_width), float16)`.
    Columns a source lacks (a recording has no reply) hold None.

    Args:
        audio_columns: which of `question`, `reply`, `reference` keep their waveform as `<kind>_audio`.
        ear_width: width of the ear's frames stored as `question_features` (None: no ear frames).
    """
    from datasets import Features

    check_audio_columns(audio_columns)
    rendered = {k: v for k, v in rendered_features(audio_columns).items() if k != "reply_phoneme_samples"}
    return Features({**plan_features(), **rendered, **codes_features(ear_width)})


def empty_dataset(features):
    """A `Dataset` with no rows and the given `Features`."""
    from datasets import Dataset

    return Dataset.from_dict({name: [] for name in features}, features=features)


def check_audio_columns(audio_columns: Sequence[str]) -> tuple[str, ...]:
    unknown = [kind for kind in audio_columns if kind not in AUDIO_KINDS]
    if unknown:
        raise ValueError(f"Unknown audio column(s) {', '.join(unknown)}: choose from {', '.join(AUDIO_KINDS)}.")
    return tuple(kind for kind in AUDIO_KINDS if kind in audio_columns)


_CODECS: dict = {}
MAIN_PID = os.getpid()  # forked `map` workers see their parent's pid here
def process_codec(spec, num_codebooks: int | None = None):
    """`resolve_codec(spec, num_codebooks)`, once per process."""
    from .codecs import resolve_codec

    key = (str(spec), num_codebooks)
    if key not in _CODECS:
        _CODECS[key] = resolve_codec(spec, num_codebooks)
    return _CODECS[key]


def process_ear(spec: str, context_windows: int = 0, window_seconds: float = 1.0):
    """`resolve_ear(spec, ...)` (a Whisper model's encoder as the ear), once per process."""
    from .codecs import resolve_ear

    key = ("ear", str(spec), context_windows, window_seconds)
    if key not in _CODECS:
        _CODECS[key] = resolve_ear(spec, context_windows, window_seconds)
    return _CODECS[key]


@contextlib.contextmanager
def limited_threads(threads: int | None):
    """Run the block with `threads` torch threads (None: leave the setting), then restore the previous setting.

    Map workers are forked, and forking a process whose torch has run multi-threaded (OpenMP) code deadlocks the
    child's first parallel op; with one thread in the parent at fork time, the workers run.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def symbol_frames(samples: Sequence[int], num_frames: int, hop_length: int) -> list[int]:
    """Each symbol's length in codec frames: symbol lengths in samples -> frames, rounded at the boundaries (so the
    rounding never drifts), the last symbol taking whatever makes them add up to the clip's `num_frames`."""
    bounds = np.round(np.cumsum(np.asarray(samples, dtype=np.int64)) / hop_length).astype(np.int64)
    bounds = np.minimum(bounds, num_frames)
    if len(bounds):
        bounds[-1] = num_frames
    return np.diff(np.concatenate([[0], bounds])).astype(int).tolist()


class EncodeAudio:
    """Batched `map` function: encodes `<kind>_audio` columns to `<kind>_codes` int16 `[codebooks][frames]`, the
    reply's symbol lengths to frames (`reply_phoneme_frames`), and, with an ear, the questions to the ear's frames
    (`question_features`, float16 `[frames, width]`).

    Clips are sorted by length and encoded in groups of similar length (at most `max_clips` clips and
    `max_samples` padded samples per group), so little padding is encoded. A causal codec gives a padded clip the
    codes it gets alone; the codes are cut to `ceil(samples / hop_length)` frames. The ear encodes each question
    alone (its encoder is not causal).
    """

    def __init__(self, codec_spec, num_codebooks: int | None, kinds: Sequence[str], max_clips: int = 16,
                 max_samples: int = 2_000_000, codec_fingerprint: str | None = None, ear_spec: dict | None = None):
        self.codec_spec = str(codec_spec)
        # Unused when encoding; part of this object's hash, so `datasets` never reuses codes of other weights.
        self.codec_fingerprint = codec_fingerprint
        self.num_codebooks = num_codebooks
        self.kinds = tuple(kinds)
        self.max_clips = max_clips
        self.max_samples = max_samples
        self.ear_spec = ear_spec

    def __call__(self, batch: dict) -> dict:
        if os.getpid() != MAIN_PID:
            torch.set_num_threads(1)  # a forked worker: one thread each, the workers share the cores
        codec = process_codec(self.codec_spec, self.num_codebooks)
        kinds = [k for k in self.kinds if f"{k}_audio" in batch]
        clips = []  # (kind, row, wave)
        for kind in kinds:
            for row, wave in enumerate(batch[f"{kind}_audio"]):
                clips.append((kind, row, None if wave is None else np.asarray(wave, dtype=np.float32)))
        codes = {kind: [None] * len(batch[f"{kind}_audio"]) for kind in kinds}
        present = sorted((c for c in clips if c[2] is not None), key=lambda c: len(c[2]))
        start = 0
        while start < len(present):
            end = start + 1
            while (end < len(present) and end - start < self.max_clips
                   and len(present[end][2]) * (end + 1 - start) <= self.max_samples):
                end += 1
            group = present[start:end]
            padded = np.zeros((len(group), len(group[-1][2])), dtype=np.float32)
            for i, (_, _, wave) in enumerate(group):
                padded[i, : len(wave)] = wave
            with torch.inference_mode():
                group_codes = codec.encode(torch.from_numpy(padded))
            if group_codes.min() < 0 or group_codes.max() > np.iinfo(np.int16).max:
                raise ValueError("Codes do not fit int16: the codec's codebook is larger than 32768 entries.")
            group_codes = group_codes.to(torch.int16).numpy()
            for i, (kind, row, wave) in enumerate(group):
                codes[kind][row] = group_codes[i, :, : codec.num_frames(len(wave))]
            start = end
        out = {f"{kind}_codes": codes[kind] for kind in kinds}
        if self.ear_spec is not None:
            out["question_codes"] = [None] * len(batch["question_audio"])  # heard through the ear, not the codec
        if "reply_phoneme_samples" in batch:
            replies = codes.get("reply", [None] * len(batch["reply_phoneme_samples"]))
            out["reply_phoneme_frames"] = [
                None if samples is None or reply is None else symbol_frames(samples, reply.shape[-1], codec.hop_length)
                for samples, reply in zip(batch["reply_phoneme_samples"], replies)
            ]
        if self.ear_spec is not None:
            ear = process_ear(**self.ear_spec)
            features = []
            for wave in batch["question_audio"]:
                with torch.inference_mode():
                    frames, _ = ear(torch.as_tensor(np.asarray(wave, dtype=np.float32))[None])
                features.append(frames[0].to(torch.float16).numpy())
            out["question_features"] = features
        return out


def encode_audio_columns(dataset, codec_spec, kinds: Sequence[str], num_codebooks: int | None = None,
                         keep_audio: Sequence[str] = DEFAULT_AUDIO, num_proc: int = 1, batch_size: int = 32,
                         features=None, desc: str = "Encoding", torch_threads: int | None = 1,
                         codec_fingerprint: str | None = None, ear_spec: dict | None = None):
    """Add `<kind>_codes` for each `<kind>_audio` column of `dataset` with a batched `map` (progress bar,
    `num_proc` worker processes), then drop the audio columns not in `keep_audio`.

    Args:
        dataset: a `datasets.Dataset` with float32 `<kind>_audio` columns at the codec's sampling rate.
        codec_spec: anything `resolve_codec` takes; workers resolve it themselves (or inherit it when forked).
        kinds: audio kinds to encode (`question`, `reply`, `reference`).
        features: the output `Features` (default: the columns as they come out).
        torch_threads: torch threads when `num_proc == 1` (default 1; None: torch's setting); workers use one
            each. On a machine shared with other work, threads wait on each other at every op: use processes.
        codec_fingerprint: the codec's weight fingerprint, made part of the `map` cache key (computed if None).
        ear_spec: `process_ear` keywords: also store the ear's frames of each question (`question_features`).
    """
    from .codecs import codec_fingerprint as fingerprint_of

    codec = process_codec(codec_spec, num_codebooks)  # resolved here first, so forked workers inherit it
    codec_fingerprint = codec_fingerprint or fingerprint_of(codec, str(codec_spec))
    drop = [f"{kind}_audio" for kind in AUDIO_KINDS
            if f"{kind}_audio" in dataset.column_names and kind not in keep_audio and (kind in kinds or ear_spec)]
    drop += [c for c in ("reply_phoneme_samples",) if c in dataset.column_names]
    num_proc = max(1, min(num_proc, len(dataset)))
    with limited_threads(1 if num_proc > 1 else torch_threads):
        encoded = dataset.map(  # python lists: the numpy format cannot hold a column with missing clips
            EncodeAudio(codec_spec, num_codebooks, kinds, codec_fingerprint=codec_fingerprint, ear_spec=ear_spec),
            batched=True,
            batch_size=batch_size,
            num_proc=num_proc if num_proc > 1 else None,
            remove_columns=drop,
            features=features,
            desc=desc,
        )
    return encoded.with_format(None)


def load_synth_info(source) -> dict:
    """The info of a Concept-Talker speech dataset: a folder written by `save_to_disk`, a `Dataset` or a
    `DatasetDict`. Keys: `format`, `format_version`, `codec` (see `concept_talker.data.codecs.describe_codec`), `tts`,
    `audio_columns`, `splits`, rate and pitch ranges, `seed`."""
    if isinstance(source, str | os.PathLike):
        path = os.path.join(os.fspath(source), SYNTH_INFO_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"{source} has no {SYNTH_INFO_FILE}: it was not written by concept-talker synth.")
        with open(path) as f:
            return json.load(f)
    dataset = next(iter(source.values())) if hasattr(source, "values") and not hasattr(source, "info") else source
    try:
        info = json.loads(dataset.info.description or "")
    except json.JSONDecodeError:
        info = None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError("This dataset carries no Concept-Talker info: it was not made by concept-talker synth.")
    return info


def check_dataset_codec(source, codec) -> dict:
    """Raise a `ValueError` unless `codec` made the codes of `source` (a dataset, or its folder); return the info."""
    from .codecs import check_codec_matches

    info = load_synth_info(source)
    check_codec_matches(info["codec"], codec)
    return info


def set_info(dataset, info: dict):
    dataset.info.description = json.dumps(info, sort_keys=True)
    return dataset


# What a build of ours writes into its output folder (`save_to_disk` of a DatasetDict, then the info).
OUR_OUTPUT_NAMES = {"dataset_dict.json", SYNTH_INFO_FILE, "train", "validation", "test"}
def is_our_dataset(path: str) -> bool:
    """True when `path` holds a dataset made by this module (its `synth_info.json` says so), or a part of one: only
    names that a build writes (`dataset_dict.json`, `synth_info.json`, the split folders)."""
    names = set(os.listdir(path))
    info = os.path.join(path, SYNTH_INFO_FILE)
    if os.path.isfile(info):
        try:
            with open(info) as f:
                return json.load(f).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            return False
    return bool(names) and names <= OUR_OUTPUT_NAMES


def check_output_dir(output_dir: str, overwrite: bool) -> None:
    """Refuse an `output_dir` that exists, unless it is empty or, with `overwrite`, a dataset of ours (see
    `is_our_dataset`). Anything else is refused whatever `overwrite` says: it would be deleted."""
    if not os.path.lexists(output_dir):
        return
    if os.path.islink(output_dir) or not os.path.isdir(output_dir):
        raise FileExistsError(f"{output_dir} exists and is not a folder: choose another --out.")
    names = sorted(os.listdir(output_dir))
    if not names:
        return
    if not is_our_dataset(output_dir):
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise FileExistsError(
            f"{output_dir} holds files that are not a dataset made by concept-talker synth ({shown}), so it is not "
            "replaced, even with --overwrite (which replaces only such a dataset). Choose another --out, or empty that "
            "folder yourself."
        )
    if not overwrite:
        raise FileExistsError(f"{output_dir} already holds a dataset made by concept-talker synth: pass --overwrite to "
                              "replace it, or choose another --out.")


def save_atomically(dataset_dict, output_dir: str, info: dict, overwrite: bool = False) -> None:
    """`save_to_disk` into a temporary sibling folder, add `synth_info.json`, then rename it to `output_dir`.

    `output_dir` never holds a partly written dataset: it is absent, the old dataset, or the new one whole. An
    existing `output_dir` is replaced only with `overwrite` and only when it holds a dataset of ours
    (`check_output_dir`).
    """
    output_dir = os.path.abspath(output_dir)
    check_output_dir(output_dir, overwrite)

    def write(folder: str) -> None:
        dataset_dict.save_to_disk(folder)
        write_json(os.path.join(folder, SYNTH_INFO_FILE), info, sort_keys=True)

    write_directory(write, output_dir, replace=True)


def remove_stale(output_dir: str) -> None:
    """Remove temporary folders left by a killed build of `output_dir` (`.tmp-*`, `.old-*`)."""
    for pattern in (f"{output_dir}.tmp-*", f"{output_dir}.old-*"):
        for path in glob.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def exclusive(work_dir: str):
    """Hold a lock on `work_dir`, so two builds of the same dataset cannot run at once."""
    import fcntl

    os.makedirs(work_dir, exist_ok=True)
    with open(os.path.join(work_dir, ".lock"), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"Another build is writing {work_dir}; wait for it to finish.") from None
        yield


def with_features(split):
    """A split whose ear frames (`question_features`) come as numpy arrays (fast), the other columns as they are."""
    if "question_features" not in split.column_names:
        return split
    return split.with_format("numpy", columns=["question_features"], output_all_columns=True)
