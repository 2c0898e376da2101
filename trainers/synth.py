"""Synthetic spoken-tutoring datasets (the Slamming recipe): dialogue text -> TTS -> codec codes -> `DatasetDict`.

    concept-talker synth --out data/tutor --n 5000 --codec ../shared/assets/lyra-soundstream \
        --ear ../shared/assets/whisper-base --transcribe-rows 3000 --num-proc 2

builds `train` / `validation` / `test` splits (and `transcribe`, with `--transcribe-rows`). Each row is one tutoring
exchange: the user's spoken question, the typed instruction that comes with it, the tutor's reply, and (where the
reply stage will pass it) a short reference clip of the reply's voice (another sentence, same voice, normal rate).

- Questions are spoken by many espeak-ng voices at many rates and pitches, some of them perturbed (speed, noise);
  espeak-ng's word events give each word's time, so the tokens spoken in each stretch of audio are known
  (`question_word_spans`, `question_word_seconds`). With an ear (a Whisper model), the ear's frames of each question
  are stored (`question_features`), computed once.
- Replies and reference clips are spoken by the house voice (Piper `en_US-joe-medium`), most in its own voice and a
  share (`voice_variant_share`) pitch-shifted into other voices; the voice reads the talker's symbols
  (`modeling_concept_talker.phonemes`) and reports each symbol's length, stored in codec frames
  (`reply_phonemes`, `reply_phoneme_chars`, `reply_phoneme_frames`). The house voice never speaks a question.
- `transcribe` rows hold questions only: sentences of common English words (`english_words.txt`), for the listening
  stage to hear many more words than the dialogue holds.

Validation and test use held-out items, templates and question voices.

Columns (see `dataset_features`):
    id, skill, item, template, instruction, style            text and what it was made from
    question_text, reply_text, reference_text                (reference_text is None where no clip is made)
    question_voice, question_rate, question_pitch, question_speed, question_snr_db
    reply_voice, reply_rate, reply_pitch, reference_rate, voice_given
    question_seconds, reply_seconds, reference_seconds        clip lengths, s
    question_word_spans, question_word_seconds                [[start, end]] characters / seconds of each word
    reply_phonemes, reply_phoneme_chars, reply_phoneme_frames the talker's symbols, their characters and frames
    reference_f0                                              the reference clip's median pitch (Hz, YIN; 0 unvoiced)
    question_audio, reply_audio [, reference_audio]           float32 lists (questions at the ear's rate, the rest at
                                                              the codec's; choose with --audio)
    question_codes, reply_codes, reference_codes              int16 [codebooks][frames]
    question_features                                         float16 [frames, ear width] (with an ear)

The dataset's info (each split's `info.description`, and `synth_info.json` next to the splits) records the codec
(type, sampling rate, frame rate, codebooks, codebook size, source, weight fingerprint) and the ear, so a trainer can
refuse data made by another: `load_synth_info(path)`, `check_dataset_codec(path, codec)`, `check_dataset_ear`.

Nothing is lost to an interruption: rows are rendered and encoded in shards, each written to a temporary folder and
renamed into place when complete, under `<out>.partial/`; a re-run with the same settings skips finished shards.
The final dataset is written to a temporary folder and renamed to `<out>`, so `<out>` is either absent or whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
from collections.abc import Sequence

import numpy as np
import torch

from modeling_concept_talker.pitch import median_f0

from .dialogue import SKILLS, SPLITS, STYLE_WEIGHTS, english_words, generate_dialogues, reference_sentences, word_sentence

logger = logging.getLogger("concept_talker.synth")

FORMAT = "concept-talker-synth"
FORMAT_VERSION = 2
AUDIO_KINDS = ("question", "reply", "reference")
DEFAULT_AUDIO = ("question", "reply")
EXTRA_SPLIT = "transcribe"  # question-only rows of general English, for the listening stages
# Speaking rates in words per minute (espeak's scale; the house voice's length scale is 175 / rate) and base
# pitch (0-99, 50 = the voice's own).
STYLE_RATES = {"slow": (105, 125), "normal": (155, 185), "fast": (230, 270)}
QUESTION_RATES = (140, 200)
PITCH_RANGE = (30, 70)
HOUSE_PITCH = 50
VOICE_VARIANT_PITCH = (10, 95)  # the house voice shifted from -10 to +11 semitones (voice rows)
QUESTION_SPEED = (0.9, 1.1)  # perturbed questions: resampled by this factor (speed and pitch together)
QUESTION_SNR_DB = (10.0, 30.0)  # perturbed questions: white noise at this signal-to-noise ratio
TRANSCRIBE_WORDS = (3, 9)  # words per general-English utterance
REFERENCE_SECONDS = (1.0, 5.0)
MAX_CLIP_SECONDS = 30.0
SYNTH_INFO_FILE = "synth_info.json"


# ---------------------------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------------------------


def _plan_features() -> dict:
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


def _rendered_features(audio_columns: Sequence[str]) -> dict:
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


def _codes_features(ear_width: int | None = None) -> dict:
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

    _check_audio_columns(audio_columns)
    rendered = {k: v for k, v in _rendered_features(audio_columns).items() if k != "reply_phoneme_samples"}
    return Features({**_plan_features(), **rendered, **_codes_features(ear_width)})


def empty_dataset(features):
    """A `Dataset` with no rows and the given `Features`."""
    from datasets import Dataset

    return Dataset.from_dict({name: [] for name in features}, features=features)


def _check_audio_columns(audio_columns: Sequence[str]) -> tuple[str, ...]:
    unknown = [kind for kind in audio_columns if kind not in AUDIO_KINDS]
    if unknown:
        raise ValueError(f"Unknown audio column(s) {', '.join(unknown)}: choose from {', '.join(AUDIO_KINDS)}.")
    return tuple(kind for kind in AUDIO_KINDS if kind in audio_columns)


# ---------------------------------------------------------------------------------------------------------------
# Settings and the plan of rows
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SynthConfig:
    """Everything that decides a synthetic dataset's content.

    Args:
        num_rows: dialogue exchanges in all splits together.
        validation_size, test_size: rows of validation / test: a fraction of `num_rows` (< 1) or a count (>= 1).
        seed: seed of the text, voices, rates and pitches; the same settings always give the same dataset.
        tts: TTS backend of the questions (`espeak`: many voices; see `trainers.tts.load_tts`).
        reply_tts: TTS backend of the replies and reference clips: the house voice (`piper`), which reports the
            length of each of the talker's symbols.
        codec: codec spec (`tiny`, a Lyra folder, a checkpoint, an EnCodec/Mimi id; see `trainers.codecs`).
        num_codebooks: codebooks to keep (default: the codec's).
        ear: the Whisper model (Hub id or folder) whose encoder frames are stored for each question; None stores
            codes only (for models that hear through the codec).
        ear_context_windows, window_seconds: how the ear encodes a question (see `modeling_concept_talker.ear`):
            they must be the model's.
        voices, validation_voices, test_voices: question voices per split (default: the backend's held-out sets).
        skills: dialogue skills to draw from (default all).
        style_weights: probabilities of the slow / normal / fast reply styles.
        audio_columns: waveforms to store next to the codes (`question`, `reply`, `reference`).
        allow_voice_overlap: let evaluation voices also be training voices (needed for one-voice TTS models).
        transcribe_rows: general-English utterances (question only) in an extra `transcribe` split.
        voice_variant_share: share of replies spoken in a pitch-shifted house voice, with a reference clip the reply
            stage passes; the other replies are in the house voice, half of them with a reference clip.
        perturb_share: share of questions perturbed (resampled in speed, white noise added).
    """

    num_rows: int
    validation_size: float = 0.05
    test_size: float = 0.05
    seed: int = 0
    tts: str = "espeak"
    reply_tts: str = "piper"
    codec: str = "tiny"
    num_codebooks: int | None = None
    ear: str | None = None
    ear_context_windows: int = 0
    window_seconds: float = 1.0
    voices: list[str] | None = None
    validation_voices: list[str] | None = None
    test_voices: list[str] | None = None
    skills: list[str] | None = None
    style_weights: tuple[float, float, float] = STYLE_WEIGHTS
    audio_columns: tuple[str, ...] = DEFAULT_AUDIO
    allow_voice_overlap: bool = False
    transcribe_rows: int = 0
    voice_variant_share: float = 0.4
    perturb_share: float = 0.3

    def split_sizes(self) -> dict[str, int]:
        """Rows per split: validation and test from their sizes, train the rest."""
        if self.num_rows < 1:
            raise ValueError(f"num_rows must be at least 1, got {self.num_rows}.")

        def count(size, name):
            if size < 0:
                raise ValueError(f"{name} must be >= 0, got {size}.")
            return int(round(size * self.num_rows)) if size < 1 else int(size)

        sizes = {"validation": count(self.validation_size, "validation_size"),
                 "test": count(self.test_size, "test_size")}
        train = self.num_rows - sizes["validation"] - sizes["test"]
        if train < 1:
            raise ValueError(
                f"validation ({sizes['validation']}) and test ({sizes['test']}) leave no training rows out of "
                f"{self.num_rows}: raise --n or lower --validation-size/--test-size."
            )
        for name in ("voice_variant_share", "perturb_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a share from 0 to 1, got {getattr(self, name)!r}.")
        if self.transcribe_rows < 0:
            raise ValueError(f"transcribe_rows must be >= 0, got {self.transcribe_rows}.")
        return {"train": train, **sizes}


def resolve_voices(config: SynthConfig, tts) -> dict[str, list[str]]:
    """Voices per split, checked against the backend; evaluation voices must be held out of training."""
    defaults = tts.default_voice_splits()
    chosen = {
        "train": list(config.voices or defaults["train"]),
        "validation": list(config.validation_voices or defaults["validation"]),
        "test": list(config.test_voices or defaults["test"]),
    }
    for split, voices in chosen.items():
        if not voices:
            raise ValueError(f"No {split} voices: pass at least one.")
        for voice in voices:
            tts.check_voice(voice)
    if not config.allow_voice_overlap:
        for split in ("validation", "test"):
            shared = sorted(set(chosen[split]) & set(chosen["train"]))
            if shared:
                raise ValueError(
                    f"{split} voices {', '.join(shared)} are also training voices; evaluation needs held-out voices. "
                    f"Choose other --{split}-voices, or pass --allow-voice-overlap if the TTS has too few voices."
                )
    return chosen


def _question_plan(rng: random.Random, voices: Sequence[str], perturb_share: float) -> dict:
    """How a question is spoken: voice, rate, pitch, and (for a perturbed one) speed and noise."""
    perturbed = rng.random() < perturb_share
    return {
        "question_voice": rng.choice(voices),
        "question_rate": rng.randint(*QUESTION_RATES),
        "question_pitch": rng.randint(*PITCH_RANGE),
        "question_speed": round(rng.uniform(*QUESTION_SPEED), 3) if perturbed else 1.0,
        "question_snr_db": round(rng.uniform(*QUESTION_SNR_DB), 1) if perturbed else 0.0,
    }


def plan_split(config: SynthConfig, split: str, count: int, voices: Sequence[str],
               house_voice: str = "default") -> list[dict]:
    """The rows of one split before rendering: texts, voices, rates and pitches (see `dataset_features`)."""
    from .tts import clean_text

    turns = generate_dialogues(count, split, config.seed, config.skills, config.style_weights)
    rng = random.Random(f"concept-talker-voices/{split}/{config.seed}")
    references = reference_sentences(split)
    rows = []
    for index, turn in enumerate(turns):
        variant = rng.random() < config.voice_variant_share
        voice_given = variant or rng.random() < 0.5
        reply_text = clean_text(turn.reply_text)  # the text exactly as the voice reads it: symbols index into it
        rows.append({
            "id": f"{split}-{index:06d}",
            **turn.to_dict(),
            "reply_text": reply_text,
            "reference_text": rng.choice([s for s in references if s != reply_text]) if voice_given else None,
            **_question_plan(rng, voices, config.perturb_share),
            "reply_voice": house_voice,
            "reply_rate": rng.randint(*STYLE_RATES[turn.style]),
            "reply_pitch": rng.randint(*VOICE_VARIANT_PITCH) if variant else HOUSE_PITCH,
            "reference_rate": rng.randint(*STYLE_RATES["normal"]),
            "voice_given": voice_given,
        })
    return rows


def plan_transcribe_rows(config: SynthConfig, count: int, voices: Sequence[str]) -> list[dict]:
    """Question-only rows: sentences of 3-8 random common English words, spoken like questions. They let the
    listening stages hear thousands of words the dialogue never says (the thinker copies what it hears, so a word
    it can hear is a word it can repeat)."""
    words = english_words()
    rng = random.Random(f"concept-talker-transcribe/{config.seed}")
    rows = []
    for index in range(count):
        sentence = word_sentence(rng, words, rng.randint(*TRANSCRIBE_WORDS))
        rows.append({
            "id": f"{EXTRA_SPLIT}-{index:06d}", "skill": "words", "item": f"words:{index}", "template": "words",
            "instruction": "", "style": "normal", "question_text": sentence,
            "reply_text": None, "reference_text": None, **_question_plan(rng, voices, config.perturb_share),
            "reply_voice": None, "reply_rate": None, "reply_pitch": None, "reference_rate": None,
            "voice_given": False,
        })
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Per-process resources: forked map workers inherit what the parent resolved
# ---------------------------------------------------------------------------------------------------------------

_CODECS: dict = {}
_MAIN_PID = os.getpid()  # forked `map` workers see their parent's pid here


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
def _torch_threads(threads: int | None):
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


def perturb_question(wave: np.ndarray, sampling_rate: int, speed: float, snr_db: float,
                     seed: str) -> tuple[np.ndarray, float]:
    """A perturbed question: resampled by `speed` (1.1 = 10% faster and higher; 1.0 leaves it) and white noise
    added at `snr_db` dB below the speech's power (0 adds none), seeded by `seed`. Returns the audio and the factor
    its times were scaled by (1 / speed)."""
    from modeling_concept_talker.audio import resample

    if speed != 1.0:
        # Read the samples as if recorded at rate * speed, then bring them back to the rate: faster and higher.
        shifted = int(round(sampling_rate * speed / 100.0)) * 100
        wave = resample(torch.from_numpy(np.ascontiguousarray(wave)), shifted, sampling_rate).numpy()
        speed = shifted / sampling_rate
    if snr_db > 0:
        rng = np.random.default_rng(int.from_bytes(hashlib.sha1(seed.encode()).digest()[:8], "little"))
        power = float(np.mean(wave.astype(np.float64) ** 2))
        wave = wave + rng.normal(0.0, math.sqrt(power / 10 ** (snr_db / 10)), wave.shape).astype(np.float32)
    return np.clip(wave, -1.0, 1.0).astype(np.float32), 1.0 / speed


class RenderRows:
    """Batched `map` function: renders each row's question (with `tts`, at the ear's rate), reply and reference
    (with the house voice `reply_tts`, at the codec's rate).

    Adds `<kind>_audio` (float32 `[samples]`) and `<kind>_seconds` for every kind (None where a row has no such
    clip), the question's word timings (`question_word_spans`, `question_word_seconds`), the reply's symbols with
    their characters and lengths in samples (`reply_phonemes`, `reply_phoneme_chars`, `reply_phoneme_samples`), and
    `reference_f0` (the reference clip's median F0, Hz, 0 when unvoiced: what the talker reads of the voice's pitch).
    The reference clip is cut to at most 5 s and must last at least 1 s.
    """

    def __init__(self, tts_spec: str, reply_tts_spec: str, sampling_rate: int, question_sampling_rate: int | None = None,
                 max_seconds: float = MAX_CLIP_SECONDS):
        self.tts_spec = tts_spec
        self.reply_tts_spec = reply_tts_spec
        self.sampling_rate = int(sampling_rate)
        self.question_sampling_rate = int(question_sampling_rate or sampling_rate)
        self.max_seconds = max_seconds

    def __call__(self, batch: dict) -> dict:
        from .tts import load_tts, render_utterance

        if os.getpid() != _MAIN_PID:
            torch.set_num_threads(1)  # a forked worker: one thread each (resampling gains nothing from threads)
        tts = load_tts(self.tts_spec)
        names = [f"{kind}_{field}" for kind in AUDIO_KINDS for field in ("audio", "seconds")]
        names += ["reference_f0", "question_word_spans", "question_word_seconds", "reply_phonemes",
                  "reply_phoneme_chars", "reply_phoneme_samples"]
        out = {name: [] for name in names}
        for i, row_id in enumerate(batch["id"]):
            try:
                question = render_utterance(tts, batch["question_text"][i], self.question_sampling_rate,
                                            batch["question_voice"][i], int(batch["question_rate"][i]),
                                            int(batch["question_pitch"][i]), self.max_seconds)
                wave, scale = perturb_question(question.audio, self.question_sampling_rate,
                                               float(batch["question_speed"][i]), float(batch["question_snr_db"][i]),
                                               row_id)
                words = question.words or []
                out["question_audio"].append(wave)
                out["question_seconds"].append(len(wave) / self.question_sampling_rate)
                out["question_word_spans"].append([[w.start, w.end] for w in words])
                out["question_word_seconds"].append([[w.start_seconds * scale, w.end_seconds * scale] for w in words])
                self._reply(batch, i, out)
            except (ValueError, RuntimeError) as err:
                raise type(err)(f"row {row_id}: {err}") from err
        return out

    def _reply(self, batch: dict, i: int, out: dict) -> None:
        """The row's reply and reference clip in the house voice (None for a question-only row)."""
        from .tts import load_tts, render_utterance

        text = batch["reply_text"][i]
        if not text:
            for name in ("reply_audio", "reply_seconds", "reply_phonemes", "reply_phoneme_chars",
                         "reply_phoneme_samples", "reference_audio", "reference_seconds", "reference_f0"):
                out[name].append(None)
            return
        voice = load_tts(self.reply_tts_spec)
        pitch = int(batch["reply_pitch"][i])
        reply = render_utterance(voice, text, self.sampling_rate, None, int(batch["reply_rate"][i]), pitch,
                                 self.max_seconds)
        if reply.phonemes is None:
            raise ValueError(f"the reply voice {self.reply_tts_spec!r} reports no phoneme timings; the talker's "
                             "data needs them: use the house voice (--reply-tts piper).")
        if reply.text != text:
            raise ValueError(f"the reply was spoken as {reply.text!r}, not as planned ({text!r}).")
        out["reply_audio"].append(reply.audio)
        out["reply_seconds"].append(reply.seconds)
        out["reply_phonemes"].append(reply.phonemes.symbols)
        out["reply_phoneme_chars"].append(list(reply.phonemes.chars))
        out["reply_phoneme_samples"].append([int(n) for n in reply.phoneme_samples])
        reference_text = batch["reference_text"][i]
        if not reference_text:
            out["reference_audio"].append(None)
            out["reference_seconds"].append(None)
            out["reference_f0"].append(None)
            return
        wave = render_utterance(voice, reference_text, self.sampling_rate, None, int(batch["reference_rate"][i]),
                                pitch, self.max_seconds).audio
        low, high = REFERENCE_SECONDS
        wave = wave[: int(high * self.sampling_rate)]
        if len(wave) < low * self.sampling_rate:
            raise ValueError(f"the reference clip {reference_text!r} lasts {len(wave) / self.sampling_rate:.2f} s, "
                             f"under {low:g} s: use a longer reference sentence.")
        out["reference_audio"].append(wave)
        out["reference_seconds"].append(len(wave) / self.sampling_rate)
        out["reference_f0"].append(median_f0(wave, self.sampling_rate) or 0.0)


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
        if os.getpid() != _MAIN_PID:
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
    with _torch_threads(1 if num_proc > 1 else torch_threads):
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


# ---------------------------------------------------------------------------------------------------------------
# Dataset info
# ---------------------------------------------------------------------------------------------------------------


def load_synth_info(source) -> dict:
    """The info of a Concept-Talker speech dataset: a folder written by `save_to_disk`, a `Dataset` or a
    `DatasetDict`. Keys: `format`, `format_version`, `codec` (see `trainers.codecs.describe_codec`), `tts`,
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


def _set_info(dataset, info: dict):
    dataset.info.description = json.dumps(info, sort_keys=True)
    return dataset


# ---------------------------------------------------------------------------------------------------------------
# Writing folders atomically
# ---------------------------------------------------------------------------------------------------------------


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
    temporary = f"{output_dir}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    dataset_dict.save_to_disk(temporary)
    with open(os.path.join(temporary, SYNTH_INFO_FILE), "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
    if os.path.exists(output_dir):
        old = f"{output_dir}.old-{os.getpid()}"
        os.rename(output_dir, old)
        os.rename(temporary, output_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(temporary, output_dir)


def _remove_stale(output_dir: str) -> None:
    """Remove temporary folders left by a killed build of `output_dir` (`.tmp-*`, `.old-*`)."""
    for pattern in (f"{output_dir}.tmp-*", f"{output_dir}.old-*"):
        for path in glob.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _exclusive(work_dir: str):
    """Hold a lock on `work_dir`, so two builds of the same dataset cannot run at once."""
    import fcntl

    os.makedirs(work_dir, exist_ok=True)
    with open(os.path.join(work_dir, ".lock"), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"Another build is writing {work_dir}; wait for it to finish.") from None
        yield


def _write_json_atomically(path: str, data) -> None:
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as f:
        json.dump(data, f)
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------------------------


def _settings(config: SynthConfig, voices: dict, tts, reply_tts, codec_info: dict, ear_info: dict | None) -> dict:
    tts_info = {k: v for k, v in tts.describe().items() if k != "library"}
    tts_info = {"questions": tts_info, "replies": {k: v for k, v in reply_tts.describe().items() if k != "library"}}
    fields = dataclasses.asdict(config)
    fields["style_weights"] = list(config.style_weights)
    fields["audio_columns"] = list(config.audio_columns)
    fields.update(voices=voices["train"], validation_voices=voices["validation"], test_voices=voices["test"])
    return {"format_version": FORMAT_VERSION, "config": fields, "tts": tts_info, "codec": codec_info,
            "ear": ear_info, "style_rates": STYLE_RATES, "question_rates": QUESTION_RATES, "pitch_range": PITCH_RANGE}


def _normalise(data):
    return json.loads(json.dumps(data))


def _load_or_write_plan(work_dir: str, settings: dict, make_rows) -> dict[str, list[dict]]:
    path = os.path.join(work_dir, "plan.json")
    settings = _normalise(settings)
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        if saved["settings"] != settings:
            old, new = saved["settings"], settings
            keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if "config" in keys:
                keys.remove("config")
                keys += sorted(k for k in set(old["config"]) | set(new["config"])
                               if old["config"].get(k) != new["config"].get(k))
            raise ValueError(
                f"{work_dir} holds an unfinished build with other settings (they differ in: {', '.join(keys)}). "
                "Re-run with the same settings to finish it, or delete that folder to start over."
            )
        return saved["rows"]
    rows = make_rows()
    _write_json_atomically(path, {"settings": settings, "rows": rows})
    return rows


def build_synthetic_dataset(
    config: SynthConfig,
    output_dir: str,
    work_dir: str | None = None,
    overwrite: bool = False,
    keep_work_dir: bool = False,
    num_proc: int = 1,
    shard_size: int = 256,
    batch_size: int = 32,
    push_to_hub: str | None = None,
    private: bool = True,
    torch_threads: int | None = 1,
):
    """Render and encode a synthetic tutoring dataset into `output_dir` (see the module docstring).

    Args:
        config: what goes into the dataset (`SynthConfig`).
        output_dir: where the finished `DatasetDict` is saved (`load_from_disk(output_dir)`).
        work_dir: where finished shards wait (default `<output_dir>.partial`); removed after success unless
            `keep_work_dir`. A re-run with the same settings resumes from it.
        overwrite: replace an existing dataset at `output_dir` (only a dataset of ours: `check_output_dir`).
        num_proc: worker processes for rendering and encoding (one torch thread each).
        torch_threads: torch threads for encoding when `num_proc == 1` (default 1; None: torch's setting).
            One thread per process and `num_proc` = cores is fastest: on a busy machine, a multi-threaded op
            waits for its slowest thread at every step.
        shard_size: rows per shard, the unit of resumption.
        batch_size: rows per `map` batch.
        push_to_hub: a Hub repo id to push the dataset to after saving it.
        private: make the Hub repo private.

    Returns:
        The `DatasetDict`, loaded from `output_dir`.
    """
    from datasets import Dataset, DatasetDict, concatenate_datasets, load_from_disk

    from .codecs import describe_codec, describe_ear
    from .tts import load_tts

    output_dir = os.path.abspath(output_dir)
    check_output_dir(output_dir, overwrite)
    if shard_size < 1 or batch_size < 1 or num_proc < 1:
        raise ValueError("shard_size, batch_size and num_proc must be at least 1.")
    audio_columns = _check_audio_columns(config.audio_columns)
    config = dataclasses.replace(config, audio_columns=audio_columns)
    work_dir = os.path.abspath(work_dir or f"{output_dir}.partial")
    sizes = config.split_sizes()

    tts = load_tts(config.tts)
    reply_tts = load_tts(config.reply_tts)
    codec = process_codec(config.codec, config.num_codebooks)
    codec_info = describe_codec(codec, config.codec)
    ear_spec = ear_info = None
    if config.ear:
        ear_spec = {"spec": config.ear, "context_windows": config.ear_context_windows,
                    "window_seconds": config.window_seconds}
        ear_info = describe_ear(process_ear(**ear_spec), config.ear)
    voices = resolve_voices(config, tts)
    settings = _settings(config, voices, tts, reply_tts, codec_info, ear_info)
    features = dataset_features(audio_columns, ear_info["width"] if ear_info else None)
    splits_made = SPLITS + ((EXTRA_SPLIT,) if config.transcribe_rows else ())
    house_voice = reply_tts.default_voice

    def plan():
        rows = {split: plan_split(config, split, sizes[split], voices[split], house_voice) for split in SPLITS}
        if config.transcribe_rows:
            rows[EXTRA_SPLIT] = plan_transcribe_rows(config, config.transcribe_rows, voices["train"])
        return rows

    with _exclusive(work_dir):
        _remove_stale(output_dir)
        rows = _load_or_write_plan(work_dir, settings, plan)
        shard_root = os.path.join(work_dir, "shards")
        os.makedirs(shard_root, exist_ok=True)
        for stale in glob.glob(os.path.join(shard_root, ".tmp-*")):
            shutil.rmtree(stale, ignore_errors=True)
        shards = [
            (split, index, rows[split][start : start + shard_size])
            for split in splits_made
            for index, start in enumerate(range(0, len(rows[split]), shard_size))
        ]
        finished = [s for s in shards if os.path.isdir(os.path.join(shard_root, f"{s[0]}-{s[1]:05d}"))]
        if finished:
            logger.info("Resuming %s: %d of %d shards already finished.", work_dir, len(finished), len(shards))
        render_features = {**_plan_features(), **_rendered_features(AUDIO_KINDS)}
        for number, (split, index, shard_rows) in enumerate(shards, start=1):
            name = f"{split}-{index:05d}"
            final = os.path.join(shard_root, name)
            if os.path.isdir(final):
                continue
            shard = _build_shard(
                Dataset.from_list(shard_rows, features=_features(_plan_features())), config, codec.sampling_rate,
                _features(render_features), features, num_proc, batch_size, f"shard {number}/{len(shards)} ({split})",
                torch_threads, codec_info["fingerprint"], ear_spec,
            )
            temporary = os.path.join(shard_root, f".tmp-{name}-{os.getpid()}")
            shard.save_to_disk(temporary)
            os.replace(temporary, final)
            logger.info("Finished shard %d/%d (%s, %d rows).", number, len(shards), split, len(shard_rows))

        info = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "source": "synthetic",
            "codec": codec_info,
            "ear": ear_info,
            "tts": settings["tts"],
            "sampling_rate": int(codec.sampling_rate),
            "question_sampling_rate": int(ear_spec and 16000 or codec.sampling_rate),
            "audio_columns": list(audio_columns),
            "seed": config.seed,
            "skills": list(config.skills or SKILLS),
            "style_rates": STYLE_RATES,
            "question_rates": QUESTION_RATES,
            "pitch_range": PITCH_RANGE,
            "reference_seconds": REFERENCE_SECONDS,
            "splits": {split: {"num_rows": len(rows[split]), "voices": voices["train" if split == EXTRA_SPLIT else split]}
                       for split in splits_made},
        }
        splits = {}
        for split in splits_made:
            parts = [load_from_disk(os.path.join(shard_root, f"{s}-{i:05d}")) for s, i, _ in shards if s == split]
            dataset = concatenate_datasets(parts) if parts else empty_dataset(features)
            splits[split] = _set_info(dataset, info)
        save_atomically(DatasetDict(splits), output_dir, info, overwrite=overwrite)
    if not keep_work_dir:
        shutil.rmtree(work_dir, ignore_errors=True)
    result = load_from_disk(output_dir)
    if push_to_hub:
        result.push_to_hub(push_to_hub, private=private)
    return result


def _features(columns: dict):
    from datasets import Features

    return Features(columns)


def _build_shard(rows, config: SynthConfig, sampling_rate: int, render_features, features, num_proc: int,
                 batch_size: int, label: str, torch_threads: int | None, codec_fingerprint: str,
                 ear_spec: dict | None = None):
    num_proc = max(1, min(num_proc, len(rows)))
    question_rate = 16000 if ear_spec else sampling_rate  # the ear's rate (Whisper), else the codec's
    with _torch_threads(1):
        rendered = rows.map(
            RenderRows(config.tts, config.reply_tts, sampling_rate, question_rate),
            batched=True,
            batch_size=max(1, min(batch_size, math.ceil(len(rows) / num_proc))),
            num_proc=num_proc if num_proc > 1 else None,
            features=render_features,
            desc=f"Rendering {label}",
        )
    # With an ear the questions are heard through it, not encoded by the codec (they are not at its rate).
    kinds = ("reply", "reference") if ear_spec else AUDIO_KINDS
    return encode_audio_columns(
        rendered, config.codec, kinds, config.num_codebooks, keep_audio=config.audio_columns,
        num_proc=num_proc, batch_size=batch_size, features=features, desc=f"Encoding {label}",
        torch_threads=torch_threads, codec_fingerprint=codec_fingerprint, ear_spec=ear_spec,
    )


# ---------------------------------------------------------------------------------------------------------------
# Command line: concept-talker synth
# ---------------------------------------------------------------------------------------------------------------


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
    from .tts import TTSUnavailableError, load_tts

    try:
        if args.list_voices:
            tts = load_tts(args.tts)
            for split, voices in tts.default_voice_splits().items():
                print(f"{split}: {' '.join(voices)}")
            return 0
        if not args.out:
            raise ValueError("--out is required: the folder to write the dataset to.")
        if args.from_ljspeech:
            from .ljspeech import build_ljspeech_dataset

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


__all__ = [
    "SynthConfig",
    "build_synthetic_dataset",
    "check_dataset_codec",
    "dataset_features",
    "encode_audio_columns",
    "load_synth_info",
    "plan_split",
    "process_codec",
    "save_atomically",
]
