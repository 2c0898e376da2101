"""Synthetic spoken-tutoring datasets (the Slamming recipe): dialogue text -> TTS -> codec codes -> `DatasetDict`.

    concept-talker synth --out data/tutor --n 5000 --codec ../shared/assets/lyra-soundstream \
        --ear ../shared/assets/whisper-base --transcribe-rows 3000 --num-proc 2

builds `train` / `validation` / `test` splits (and `transcribe` with `--transcribe-rows`, `questions` with
`--question-rows`, `repeats` with `--repeat-rows`). Each row is one tutoring
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
- `questions` rows hold questions only too: more training questions (the same items, other combinations) in other
  voices, rates and pitches. A question-only row costs about a tenth of a dialogue row to make, and the listening
  stages are short of speech per word, not of replies.
- `repeats` rows are "repeat after me" turns of general English (a sentence of common words, said back by the house
  voice): the dialogue's replies hold a few hundred words, too few for a talker to learn to say words it never heard.

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

import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
import random
import shutil
from collections.abc import Sequence

import numpy as np
import torch

from modeling_concept_talker.pitch import median_f0

from concept_talker.files import write_json

from .dataset import (
    AUDIO_KINDS,
    DEFAULT_AUDIO,
    FORMAT,
    FORMAT_VERSION,
    MAIN_PID,
    check_audio_columns,
    check_output_dir,
    dataset_features,
    empty_dataset,
    encode_audio_columns,
    exclusive,
    limited_threads,
    plan_features,
    process_codec,
    process_ear,
    remove_stale,
    rendered_features,
    save_atomically,
    set_info,
)
from .dialogue import (
    SKILLS,
    SPLITS,
    STYLE_WEIGHTS,
    english_words,
    generate_dialogues,
    reference_sentences,
    repeat_turn,
    word_sentence,
)

logger = logging.getLogger("concept_talker.synth")

EXTRA_SPLIT = "transcribe"  # question-only rows of general English, for the listening stages
QUESTIONS_SPLIT = "questions"  # question-only rows: more renditions of training questions, for the listening stages
REPEATS_SPLIT = "repeats"  # "repeat after me" turns of general English with spoken replies, for the reply stage
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


# ---------------------------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------------------------


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
        tts: TTS backend of the questions (`espeak`: many voices; see `concept_talker.data.tts.load_tts`).
        reply_tts: TTS backend of the replies and reference clips: the house voice (`piper`), which reports the
            length of each of the talker's symbols.
        codec: codec spec (`tiny`, a Lyra folder, a checkpoint, an EnCodec/Mimi id; see `concept_talker.data.codecs`).
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
        transcribe_vocabulary: the general-English sentences draw their words from this many of the most frequent
            English words (`english_words.txt`; default all 7,990): fewer words, each heard more often.
        question_rows: more renditions of training questions (question only, new voices, rates and pitches) in an
            extra `questions` split: more speech per word for the listening stages, at a small share of a dialogue
            row's cost (no reply to render and encode).
        repeat_rows: "repeat after me" turns of general English with the reply spoken (`plan_repeat_rows`), in an
            extra `repeats` split for the reply stage: far more words for the talker to say than the dialogue holds.
        repeat_vocabulary: the repeat turns draw their words from this many of the most frequent English words
            (default 3,000: words a tutor says; the list's tail holds names and fragments such as "cref").
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
    transcribe_vocabulary: int | None = None
    question_rows: int = 0
    repeat_rows: int = 0
    repeat_vocabulary: int = 3000
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
        for name in ("transcribe_rows", "question_rows", "repeat_rows"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        for name in ("transcribe_vocabulary", "repeat_vocabulary"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 word, got {getattr(self, name)}.")
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
    turns = generate_dialogues(count, split, config.seed, config.skills, config.style_weights)
    rng = random.Random(f"concept-talker-voices/{split}/{config.seed}")
    references = reference_sentences(split)
    return [_spoken_turn_row(f"{split}-{index:06d}", turn, rng, config, voices, references, house_voice)
            for index, turn in enumerate(turns)]


def _spoken_turn_row(row_id: str, turn, rng: random.Random, config: SynthConfig, voices: Sequence[str],
                     references: Sequence[str], house_voice: str) -> dict:
    """A planned row with a spoken reply: the turn's texts, how its question is spoken (`_question_plan`) and how the
    house voice speaks its reply: at the style's rate, in its own voice or (a `voice_variant_share` of the rows)
    pitch-shifted into another, with a reference clip of that voice for the variants and half of the others."""
    from .tts import clean_text

    variant = rng.random() < config.voice_variant_share
    voice_given = variant or rng.random() < 0.5
    reply_text = clean_text(turn.reply_text)  # the text exactly as the voice reads it: symbols index into it
    return {
        "id": row_id,
        **turn.to_dict(),
        "reply_text": reply_text,
        "reference_text": rng.choice([s for s in references if s != reply_text]) if voice_given else None,
        **_question_plan(rng, voices, config.perturb_share),
        "reply_voice": house_voice,
        "reply_rate": rng.randint(*STYLE_RATES[turn.style]),
        "reply_pitch": rng.randint(*VOICE_VARIANT_PITCH) if variant else HOUSE_PITCH,
        "reference_rate": rng.randint(*STYLE_RATES["normal"]),
        "voice_given": voice_given,
    }


def _question_only_row(row_id: str, fields: dict, rng: random.Random, voices: Sequence[str],
                       perturb_share: float) -> dict:
    """A planned row with a question and no reply: `fields` (skill, item, template, instruction, style,
    question_text) and how the question is spoken (`_question_plan`)."""
    return {"id": row_id, **fields, "reply_text": None, "reference_text": None,
            **_question_plan(rng, voices, perturb_share), "reply_voice": None, "reply_rate": None, "reply_pitch": None,
            "reference_rate": None, "voice_given": False}


def plan_question_rows(config: SynthConfig, count: int, voices: Sequence[str], train_rows: int) -> list[dict]:
    """Question-only rows: `count` more training questions (the turns the dialogue generator draws after the train
    split's `train_rows`: other item, template and instruction combinations while the pool lasts), each in a voice,
    rate and pitch of its own. The listening stages hear the training items in more voices than the dialogue rows,
    whose replies cost far more to render, can give them."""
    turns = generate_dialogues(train_rows + count, "train", config.seed, config.skills, config.style_weights)[train_rows:]
    rng = random.Random(f"concept-talker-questions/{config.seed}")
    return [_question_only_row(f"{QUESTIONS_SPLIT}-{index:06d}", turn.to_dict(), rng, voices, config.perturb_share)
            for index, turn in enumerate(turns)]


def plan_transcribe_rows(config: SynthConfig, count: int, voices: Sequence[str]) -> list[dict]:
    """Question-only rows: sentences of 3 to 9 random common English words, spoken like questions. They let the
    listening stages hear thousands of words the dialogue never says (the thinker copies what it hears, so a word
    it can hear is a word it can repeat)."""
    words = english_words()[: config.transcribe_vocabulary]
    rng = random.Random(f"concept-talker-transcribe/{config.seed}")
    rows = []
    for index in range(count):
        sentence = word_sentence(rng, words, rng.randint(*TRANSCRIBE_WORDS))
        fields = {"skill": "words", "item": f"words:{index}", "template": "words", "instruction": "",
                  "style": "normal", "question_text": sentence}
        rows.append(_question_only_row(f"{EXTRA_SPLIT}-{index:06d}", fields, rng, voices, config.perturb_share))
    return rows


def plan_repeat_rows(config: SynthConfig, count: int, voices: Sequence[str], house_voice: str = "default") -> list[dict]:
    """Spoken "repeat after me" turns of general English: a sentence of 3 to 9 common words (`english_words`, the
    first `repeat_vocabulary`) said in a training voice, with a training phrasing of the request, and said back
    by the house voice in the turn's style. The dialogue's 1,800-odd replies give the talker a few hundred words to
    say; these give it thousands, and the thinker a sentence to repeat that no template holds."""
    words = english_words()[: config.repeat_vocabulary]
    rng = random.Random(f"concept-talker-repeats/{config.seed}")
    references = reference_sentences("train")
    rows = []
    for index in range(count):
        sentence = word_sentence(rng, words, rng.randint(*TRANSCRIBE_WORDS))
        turn = repeat_turn(rng, sentence, f"words:{index}", "train", config.style_weights)
        rows.append(_spoken_turn_row(f"{REPEATS_SPLIT}-{index:06d}", turn, rng, config, voices, references,
                                     house_voice))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Per-process resources: forked map workers inherit what the parent resolved
# ---------------------------------------------------------------------------------------------------------------


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


# What a row says of how its question is spoken (`render_question` renders it from these alone).
QUESTION_FIELDS = ("id", "question_text", "question_voice", "question_rate", "question_pitch", "question_speed",
                   "question_snr_db")


def render_question(tts, row: dict, sampling_rate: int, max_seconds: float | None = MAX_CLIP_SECONDS):
    """A row's question as the dataset heard it: `tts` speaks `question_text` in the row's voice, rate and pitch at
    `sampling_rate` Hz, then `perturb_question` applies its speed and noise (seeded by its `id`, so a row renders the
    same every time). Returns the audio (float32 `[samples]`), the word timings (`Utterance.words`, in the unperturbed
    clip's samples) and the factor the times were scaled by."""
    from .tts import render_utterance

    question = render_utterance(tts, row["question_text"], sampling_rate, row["question_voice"],
                                int(row["question_rate"]), int(row["question_pitch"]), max_seconds)
    wave, scale = perturb_question(question.audio, sampling_rate, float(row["question_speed"]),
                                   float(row["question_snr_db"]), row["id"])
    return wave, question.words or [], scale


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
        from .tts import load_tts

        if os.getpid() != MAIN_PID:
            torch.set_num_threads(1)  # a forked worker: one thread each (resampling gains nothing from threads)
        tts = load_tts(self.tts_spec)
        names = [f"{kind}_{field}" for kind in AUDIO_KINDS for field in ("audio", "seconds")]
        names += ["reference_f0", "question_word_spans", "question_word_seconds", "reply_phonemes",
                  "reply_phoneme_chars", "reply_phoneme_samples"]
        out = {name: [] for name in names}
        for i, row_id in enumerate(batch["id"]):
            try:
                row = {name: batch[name][i] for name in QUESTION_FIELDS}
                wave, words, scale = render_question(tts, row, self.question_sampling_rate, self.max_seconds)
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
    write_json(path, {"settings": settings, "rows": rows}, indent=None)
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
    audio_columns = check_audio_columns(config.audio_columns)
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
    splits_made = SPLITS + tuple(split for split, rows in ((EXTRA_SPLIT, config.transcribe_rows),
                                                            (QUESTIONS_SPLIT, config.question_rows),
                                                            (REPEATS_SPLIT, config.repeat_rows)) if rows)
    house_voice = reply_tts.default_voice

    def plan():
        rows = {split: plan_split(config, split, sizes[split], voices[split], house_voice) for split in SPLITS}
        if config.transcribe_rows:
            rows[EXTRA_SPLIT] = plan_transcribe_rows(config, config.transcribe_rows, voices["train"])
        if config.question_rows:
            rows[QUESTIONS_SPLIT] = plan_question_rows(config, config.question_rows, voices["train"], sizes["train"])
        if config.repeat_rows:
            rows[REPEATS_SPLIT] = plan_repeat_rows(config, config.repeat_rows, voices["train"], house_voice)
        return rows

    with exclusive(work_dir):
        remove_stale(output_dir)
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
        render_features = {**plan_features(), **rendered_features(AUDIO_KINDS)}
        for number, (split, index, shard_rows) in enumerate(shards, start=1):
            name = f"{split}-{index:05d}"
            final = os.path.join(shard_root, name)
            if os.path.isdir(final):
                continue
            shard = _build_shard(
                Dataset.from_list(shard_rows, features=_features(plan_features())), config, codec.sampling_rate,
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
            "splits": {split: {"num_rows": len(rows[split]), "voices": voices.get(split, voices["train"])}
                       for split in splits_made},
        }
        splits = {}
        for split in splits_made:
            parts = [load_from_disk(os.path.join(shard_root, f"{s}-{i:05d}")) for s, i, _ in shards if s == split]
            dataset = concatenate_datasets(parts) if parts else empty_dataset(features)
            splits[split] = set_info(dataset, info)
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
    with limited_threads(1):
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


__all__ = [
    "SynthConfig",
    "build_synthetic_dataset",
    "plan_split",
]
