"""Text-to-speech backends behind one interface, for rendering synthetic tutoring dialogue.

    tts = load_tts("espeak")                          # offline; libespeak-ng through ctypes, synthesised to memory
    clip = tts.synthesize("Speak slowly.", voice="en-us+f3", rate=120, pitch=60)
    clip.audio, clip.sampling_rate                    # float32 [samples] in [-1, 1], 22050 Hz
    wave = render(tts, "Speak slowly.", sampling_rate=24000, voice="en-us+f3")   # at the codec's rate

Backends:
- `EspeakBackend`: espeak-ng, from the `espeakng-loader` wheel (`pip install "concept-talker[tts]"`, which bundles
  the library and its voice data) or from the system (`apt-get install espeak-ng`). Many voices (an accent plus a
  variant: `en-us+f3`, `en-gb-scotland+m3`), rate in words per minute, base pitch 0-99.
- `VitsBackend`: a transformers `VitsModel` (MMS-TTS, `facebook/mms-tts-eng` by default) for users with Hub access
  or a local folder. Rate maps to the model's `speaking_rate` (175 wpm = 1.0); pitch shifts by resampling, with the
  speaking rate compensated so the duration still follows `rate`.

Units are the same for every backend: `rate` in words per minute (espeak's scale, 80-450, default 175) and
`pitch` on espeak's 0-99 scale (50 = the voice's own pitch).

Text is checked before it reaches a backend (`clean_text`): empty text, text with no letters or digits, text with
characters an English voice cannot read, and text too long for one clip are refused with a message saying what
to do. A backend that returns silence raises instead of handing back an empty clip.
"""

from __future__ import annotations

import _ctypes
import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import math
import os
import re
import threading
import unicodedata
from abc import ABC, abstractmethod
from typing import NamedTuple

import numpy as np
import torch

from modeling_concept_talker.audio import resample

NOMINAL_RATE = 175  # words per minute: espeak's default rate, and speaking_rate 1.0 for neural backends
NOMINAL_PITCH = 50  # espeak's default base pitch (0-99)
MIN_RATE, MAX_RATE = 80, 450
MAX_CHARACTERS = 400  # about 30 s of speech at the nominal rate; longer text should be split into sentences
SILENCE_PEAK = 1e-3  # a clip whose loudest sample is below this is silence

INSTALL_HINT = (
    'Install espeak-ng: `pip install "concept-talker[tts]"` (the espeakng-loader wheel, which bundles the library '
    "and its voices) or `apt-get install espeak-ng` on Debian/Ubuntu."
)

# Typographic characters with a plain ASCII spelling.
_ASCII_PUNCTUATION = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2013": "-", "\u2014": ", ", "\u2012": "-", "\u2010": "-", "\u2011": "-", "\u2212": "-",
    "\u2026": "...", "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u00d7": " times ", "\u00f7": " divided by ",
    "\u00b0": " degrees ", "\u00bd": " one half ", "\u00bc": " one quarter ", "\u00be": " three quarters ",
    "\u00df": "ss", "\u00e6": "ae", "\u00c6": "AE", "\u0153": "oe", "\u0152": "OE", "\u00f8": "o", "\u00d8": "O",
    "\u0142": "l", "\u0141": "L", "\u00f0": "d", "\u00fe": "th",
}


class TTSUnavailableError(RuntimeError):
    """The requested TTS engine is not installed; the message says how to install it."""


class SpeechClip(NamedTuple):
    """Mono speech: `audio` float32 `[samples]` in [-1, 1] at `sampling_rate` Hz."""

    audio: np.ndarray
    sampling_rate: int

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sampling_rate


def clean_text(text, ascii_only: bool = True, max_characters: int = MAX_CHARACTERS) -> str:
    """Text ready to speak, or a `ValueError`/`TypeError` that says what is wrong with it.

    Typographic quotes, dashes and accented Latin letters are folded to ASCII (`café` -> `cafe`); whitespace is
    collapsed. Refused: non-strings, empty text, text with no letter or digit ("?!", "..."), characters an
    English voice cannot read (with `ascii_only`, e.g. Chinese or Cyrillic letters, emoji), and text longer than
    `max_characters` (split it into sentences).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}.")
    text = unicodedata.normalize("NFKC", text)
    text = "".join(_ASCII_PUNCTUATION.get(ch, ch) for ch in text)
    if ascii_only:
        # Strip accents: decompose, then drop the combining marks.
        decomposed = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    text = "".join(" " if unicodedata.category(ch)[0] in "CZ" else ch for ch in text)  # controls, separators
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r" ([,.;:!?])", r"\1", text)
    if not text:
        raise ValueError("text is empty: there is nothing to speak. Pass at least one word.")
    if not any(ch.isalnum() for ch in text):
        raise ValueError(
            f"text {text!r} has no letters or digits, only punctuation or symbols: a voice would render silence. "
            "Pass at least one word."
        )
    if ascii_only:
        foreign = sorted({ch for ch in text if ord(ch) > 127})
        if foreign:
            shown = "".join(foreign[:10])
            raise ValueError(
                f"text {text[:60]!r} has characters an English voice cannot read: {shown!r}. Transliterate them to "
                "English letters, or use a voice for that language (the check is skipped for non-English voices)."
            )
    if len(text) > max_characters:
        raise ValueError(
            f"text is {len(text)} characters; at most {max_characters} are rendered as one clip (about 30 s of "
            "speech). Split it into sentences and render each one."
        )
    return text


def trim_silence(audio: np.ndarray, sampling_rate: int, margin_seconds: float = 0.05) -> np.ndarray:
    """Drop leading and trailing silence (below 2% of the peak), keeping `margin_seconds` on each side."""
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak < SILENCE_PEAK:
        return audio
    loud = np.flatnonzero(np.abs(audio) > 0.02 * peak)
    margin = int(margin_seconds * sampling_rate)
    return audio[max(0, loud[0] - margin) : loud[-1] + margin + 1]


def _check_rate_pitch(rate, pitch) -> tuple[int, int]:
    rate = NOMINAL_RATE if rate is None else rate
    pitch = NOMINAL_PITCH if pitch is None else pitch
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"rate is in words per minute, from {MIN_RATE} to {MAX_RATE}; got {rate}.")
    if not 0 <= pitch <= 99:
        raise ValueError(f"pitch is on espeak's scale from 0 to 99 (50 = the voice's own); got {pitch}.")
    return int(round(rate)), int(round(pitch))


class TTSBackend(ABC):
    """A text-to-speech engine: `synthesize(text, voice, rate, pitch)` -> float32 mono audio + its rate.

    Subclasses define `name`, `sampling_rate` (Hz of what `synthesize` returns), `voices()`, `_synthesize`, and
    `describe()` (what the dataset info records about the engine).
    """

    name: str
    sampling_rate: int

    @abstractmethod
    def voices(self) -> list[str]:
        """Names of the voices this backend can speak with."""

    @property
    def default_voice(self) -> str:
        return self.voices()[0]

    def check_voice(self, voice: str) -> str:
        """Return `voice` if this backend has it, else raise a `ValueError` naming some that exist."""
        available = self.voices()
        if voice not in available:
            shown = ", ".join(available[:20]) + (", ..." if len(available) > 20 else "")
            raise ValueError(f"{self.name} has no voice {voice!r}. Available: {shown}")
        return voice

    def default_voice_splits(self) -> dict[str, list[str]]:
        """Voices for `train`, `validation` and `test`: disjoint where the backend has enough of them."""
        voices = self.voices()
        return {"train": voices, "validation": voices, "test": voices}

    def is_english(self, voice: str) -> bool:
        return True

    def synthesize(self, text: str, voice: str | None = None, rate: float | None = None,
                   pitch: float | None = None) -> SpeechClip:
        """Speak `text` with `voice`, `rate` (words per minute) and `pitch` (0-99).

        Returns a `SpeechClip` (float32 `[samples]` at `self.sampling_rate` Hz), trimmed of leading and trailing
        silence. Raises `ValueError` for text that cannot be spoken and `RuntimeError` if the engine makes silence.
        """
        voice = self.check_voice(voice or self.default_voice)
        rate, pitch = _check_rate_pitch(rate, pitch)
        text = clean_text(text, ascii_only=self.is_english(voice))
        audio = self._synthesize(text, voice, rate, pitch)
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size == 0 or not np.isfinite(audio).all() or float(np.abs(audio).max()) < SILENCE_PEAK:
            raise RuntimeError(
                f"{self.name} made no audible speech for {text[:60]!r} (voice {voice}, rate {rate}, pitch {pitch}): "
                "check that the voice matches the language of the text."
            )
        return SpeechClip(trim_silence(audio, self.sampling_rate), self.sampling_rate)

    @abstractmethod
    def _synthesize(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        """Checked text -> float32 samples at `self.sampling_rate`."""

    def describe(self) -> dict:
        return {"backend": self.name, "sampling_rate": self.sampling_rate}


def render(tts: TTSBackend, text: str, sampling_rate: int, voice: str | None = None, rate: float | None = None,
           pitch: float | None = None, max_seconds: float | None = None) -> np.ndarray:
    """Speak `text` and return float32 `[samples]` at `sampling_rate` Hz (e.g. the codec's).

    Raises a `ValueError` if the clip is longer than `max_seconds`.
    """
    clip = tts.synthesize(text, voice=voice, rate=rate, pitch=pitch)
    if max_seconds is not None and clip.seconds > max_seconds:
        raise ValueError(
            f"{text[:60]!r} renders to {clip.seconds:.1f} s at {rate} words per minute, over the {max_seconds:g} s "
            "limit: split it into shorter sentences or raise the limit."
        )
    wave = resample(torch.from_numpy(clip.audio), clip.sampling_rate, sampling_rate)
    return np.clip(wave.numpy(), -1.0, 1.0).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------------------
# espeak-ng
# ---------------------------------------------------------------------------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE, _ESPEAK_PITCH = 1, 3
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_OK = 0
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _EspeakVoice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


def find_espeak_library() -> tuple[str, str | None]:
    """Where libespeak-ng is: (library path, voice data folder or None for the library's built-in path).

    The `espeakng-loader` wheel comes first, then a system library (`apt-get install espeak-ng`). Raises
    `TTSUnavailableError` with install instructions when neither is there.
    """
    try:
        import espeakng_loader
    except ImportError:
        espeakng_loader = None
    if espeakng_loader is not None:
        library = espeakng_loader.get_library_path()
        if os.path.isfile(library):
            return library, espeakng_loader.get_data_path()
    system = ctypes.util.find_library("espeak-ng")
    if system:
        return system, None
    raise TTSUnavailableError(f"espeak-ng is not installed, so dialogue cannot be rendered to speech. {INSTALL_HINT}")


class _EspeakEngine:
    """libespeak-ng through ctypes, synthesising to memory.

    espeak-ng keeps state between utterances in C statics that `espeak_Terminate` does not reset (the phase of its
    pitch flutter), so an utterance would depend on every utterance before it in the process. Each `synthesize`
    therefore loads the library, speaks, and unloads it (about 4 ms), with espeak's noise generator seeded from
    the utterance itself: a clip is a function of its text, voice, rate and pitch alone, whatever was rendered
    before it, in whichever process.
    """

    _instance: _EspeakEngine | None = None
    _guard = threading.Lock()

    @classmethod
    def get(cls) -> _EspeakEngine:
        with cls._guard:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def __init__(self):
        self.library_path, self.data_path = find_espeak_library()
        self.lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept alive as long as the engine
        with self._loaded() as lib:
            self.version = (lib.espeak_Info(None) or b"").decode()
            self.languages, self.variants = self._list_voices(lib)

    @contextlib.contextmanager
    def _loaded(self):
        """The library, loaded and initialised for synchronous output; unloaded (statics and all) afterwards."""
        try:
            lib = ctypes.CDLL(self.library_path)
        except OSError as err:
            raise TTSUnavailableError(f"Could not load {self.library_path} ({err}). {INSTALL_HINT}") from err
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_EspeakVoice))
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        data = self.data_path.encode() if self.data_path else None
        try:
            sampling_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
            if sampling_rate <= 0:
                raise TTSUnavailableError(
                    f"espeak-ng found at {self.library_path} could not start (no voice data at "
                    f"{self.data_path or 'its built-in path'}). {INSTALL_HINT}"
                )
            self.sampling_rate = int(sampling_rate)
            lib.espeak_SetSynthCallback(self._callback)
            yield lib
        finally:
            lib.espeak_Terminate()
            _ctypes.dlclose(lib._handle)

    def _collect(self, samples, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0  # 0 = continue

    def _list_voices(self, lib) -> tuple[dict[str, str], list[str]]:
        """({language name or voice file name, lower case: voice file name}, variant names)."""
        languages: dict[str, str] = {}
        voices = lib.espeak_ListVoices(None)
        index = 0
        while voices[index]:
            voice = voices[index].contents
            # espeak_SetVoiceByName takes the voice's file name (`gmw/en` -> `en`), not its language (`en-gb`).
            file_name = voice.identifier.decode().rsplit("/", 1)[-1]
            languages.setdefault(file_name.lower(), file_name)
            # `languages` is a run of (priority byte, name, NUL), ended by a zero priority byte.
            raw = ctypes.string_at(voice.languages, 256)
            position = 0
            while position < len(raw) and raw[position] != 0:
                end = raw.index(b"\0", position + 1)
                languages.setdefault(raw[position + 1 : end].decode(errors="replace").lower(), file_name)
                position = end + 1
            index += 1
        spec = _EspeakVoice(languages=b"variant")
        variants = []
        voices = lib.espeak_ListVoices(ctypes.byref(spec))
        index = 0
        while voices[index]:
            identifier = voices[index].contents.identifier.decode()
            variants.append(identifier.split("/", 1)[-1])
            index += 1
        if self.data_path:  # variants without a display name are not listed, but their files exist
            folder = os.path.join(self.data_path, "voices", "!v")
            if os.path.isdir(folder):
                variants += [f for f in os.listdir(folder) if " " not in f]
        return languages, sorted(set(variants))

    def synthesize(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        language, _, variant = voice.partition("+")
        name = self.languages.get(language.lower(), language) + (f"+{variant}" if variant else "")
        seed = int.from_bytes(hashlib.sha1(f"{text}|{voice}|{rate}|{pitch}".encode()).digest()[:4], "big")
        with self.lock, self._loaded() as lib:
            if lib.espeak_SetVoiceByName(name.encode()) != _ESPEAK_OK:
                raise ValueError(f"espeak-ng could not load voice {voice!r}.")
            lib.espeak_SetParameter(_ESPEAK_RATE, rate, 0)
            lib.espeak_SetParameter(_ESPEAK_PITCH, pitch, 0)
            if hasattr(lib, "espeak_ng_SetRandSeed"):  # espeak-ng >= 1.51
                lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
                lib.espeak_ng_SetRandSeed(seed)
            self._chunks = []
            data = text.encode("utf-8")
            status = lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _ESPEAK_CHARS_UTF8, None, None)
            chunks, self._chunks = self._chunks, []
            if status != _ESPEAK_OK:
                raise RuntimeError(f"espeak-ng failed with status {status} on {text[:60]!r}.")
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32) / 32768.0


class EspeakBackend(TTSBackend):
    """espeak-ng through ctypes, synthesising into memory (no files, no subprocess).

    Voices are `language` or `language+variant`: `en-us`, `en-us+f3`, `en-gb-scotland+m3`, `en-029+m7`.
    `voices()` lists the English accents with the numbered male and female variants; any other language or
    variant espeak-ng knows is accepted too (see `languages()` and `variants()`).
    """

    name = "espeak-ng"
    ENGLISH_ACCENTS = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan",
                       "en-gb-x-gbcwmd")
    NUMBERED_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
    # Held-out voices: their variants never occur in training, and each split adds an accent training lacks.
    TRAIN_VOICES = tuple(f"{accent}+{variant}" for accent in ("en-us", "en-gb", "en-gb-x-rp", "en-029")
                         for variant in ("m1", "m2", "m3", "m4", "m7", "f1", "f2", "f3"))
    VALIDATION_VOICES = tuple(f"{accent}+{variant}" for accent in ("en-us", "en-gb-scotland") for variant in ("m5", "f4"))
    TEST_VOICES = tuple(f"{accent}+{variant}" for accent in ("en-gb", "en-gb-x-gbclan") for variant in ("m6", "f5"))

    def __init__(self):
        self.engine = _EspeakEngine.get()
        self.sampling_rate = self.engine.sampling_rate

    def languages(self) -> list[str]:
        return sorted(self.engine.languages)

    def variants(self) -> list[str]:
        return list(self.engine.variants)

    def voices(self) -> list[str]:
        return [f"{accent}+{variant}" for accent in self.ENGLISH_ACCENTS for variant in self.NUMBERED_VARIANTS]

    @property
    def default_voice(self) -> str:
        return "en-us+m1"

    def check_voice(self, voice: str) -> str:
        language, _, variant = voice.partition("+")
        if language.lower() not in self.engine.languages:
            english = ", ".join(lang for lang in sorted(self.engine.languages) if lang.startswith("en"))
            raise ValueError(
                f"espeak-ng has no language voice {language!r} (in {voice!r}). English ones: {english}. "
                "Write voices as language+variant, e.g. en-us+f3."
            )
        if variant and variant not in self.engine.variants:
            raise ValueError(
                f"espeak-ng has no voice variant {variant!r} (in {voice!r}); espeak-ng would silently use its "
                f"default. Variants: {', '.join(self.engine.variants[:40])}, ..."
            )
        return voice

    def default_voice_splits(self) -> dict[str, list[str]]:
        return {"train": list(self.TRAIN_VOICES), "validation": list(self.VALIDATION_VOICES),
                "test": list(self.TEST_VOICES)}

    def is_english(self, voice: str) -> bool:
        return voice.lower().startswith("en")

    def _synthesize(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        return self.engine.synthesize(text, voice, rate, pitch)

    def describe(self) -> dict:
        return {"backend": self.name, "version": self.engine.version, "library": self.engine.library_path,
                "sampling_rate": self.sampling_rate}


# ---------------------------------------------------------------------------------------------------------------
# VITS (MMS-TTS) through transformers
# ---------------------------------------------------------------------------------------------------------------

DEFAULT_VITS_MODEL = "facebook/mms-tts-eng"
SEMITONES_PER_PITCH_STEP = 0.1  # pitch 0..99 -> -5..+4.9 semitones around the model's own voice


class VitsBackend(TTSBackend):
    """A transformers `VitsModel` + its tokenizer (MMS-TTS and other VITS checkpoints).

    Voices: `default` for a single-speaker model; `speaker-0` ... `speaker-{n-1}` for a multi-speaker one.
    `rate` sets `speaking_rate = rate / 175`. `pitch` moves the voice by `(pitch - 50) * 0.1` semitones, by
    resampling the waveform, with the speaking rate scaled so the clip's duration still follows `rate`.
    VITS draws noise: each clip is seeded from its text and settings, so the same call gives the same audio.

    Args:
        model_name_or_path: Hub id or local folder (default `facebook/mms-tts-eng`; needs Hub access the first time).
        device: where the model runs (`cpu`, `cuda`).
    """

    name = "vits"

    def __init__(self, model_name_or_path: str = DEFAULT_VITS_MODEL, device: str = "cpu"):
        from transformers import AutoTokenizer, VitsModel

        self.model_name_or_path = str(model_name_or_path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_name_or_path)
            self.model = VitsModel.from_pretrained(self.model_name_or_path).to(device).eval()
        except OSError as err:
            raise TTSUnavailableError(
                f"Could not load the VITS model {self.model_name_or_path!r} ({err}). Pass a local folder saved with "
                "save_pretrained, or a Hub id such as facebook/mms-tts-eng on a machine with Hub access; offline, "
                "use the espeak backend (--tts espeak)."
            ) from err
        self.sampling_rate = int(self.model.config.sampling_rate)
        self.num_speakers = int(self.model.config.num_speakers)

    def voices(self) -> list[str]:
        if self.num_speakers <= 1:
            return ["default"]
        return [f"speaker-{i}" for i in range(self.num_speakers)]

    def default_voice_splits(self) -> dict[str, list[str]]:
        voices = self.voices()
        if len(voices) < 10:
            return super().default_voice_splits()  # too few speakers to hold any out
        held = max(1, len(voices) // 10)
        return {"train": voices[: -2 * held], "validation": voices[-2 * held : -held], "test": voices[-held:]}

    def _synthesize(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        inputs = self.tokenizer(text, return_tensors="pt")
        if inputs["input_ids"].shape[-1] <= 1:
            raise ValueError(
                f"{text[:60]!r} has no characters in the vocabulary of {self.model_name_or_path}: spell it in the "
                "model's language."
            )
        speaker_id = None if voice == "default" else int(voice.rsplit("-", 1)[1])
        # Pitch by resampling: read the samples as if recorded at `shifted` Hz and resample them to the model's
        # rate; `shifted` is rounded to 100 Hz so the resampling filter stays small.
        factor = 2.0 ** ((pitch - NOMINAL_PITCH) * SEMITONES_PER_PITCH_STEP / 12.0)
        shifted = max(100, int(round(self.sampling_rate * factor / 100.0)) * 100)
        factor = shifted / self.sampling_rate
        speaking_rate = (rate / NOMINAL_RATE) / factor
        seed = int.from_bytes(hashlib.sha1(f"{text}|{voice}|{rate}|{pitch}".encode()).digest()[:4], "big")
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            output = self.model(
                input_ids=inputs["input_ids"].to(self.model.device),
                attention_mask=inputs["attention_mask"].to(self.model.device),
                speaker_id=speaker_id,
                speaking_rate=speaking_rate,
            )
        waveform = output.waveform[0].float().cpu()
        if shifted != self.sampling_rate:
            waveform = resample(waveform, shifted, self.sampling_rate).clamp(-1.0, 1.0)  # resampling can overshoot
        return waveform.numpy()

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model_name_or_path, "sampling_rate": self.sampling_rate,
                "num_speakers": self.num_speakers}


# ---------------------------------------------------------------------------------------------------------------
# Choosing a backend
# ---------------------------------------------------------------------------------------------------------------

_BACKENDS: dict[str, TTSBackend] = {}


def load_tts(spec: str | TTSBackend = "espeak") -> TTSBackend:
    """A TTS backend from a name, cached per process.

    - `espeak` / `espeak-ng`: `EspeakBackend`;
    - `vits` (MMS-TTS English from the Hub), `vits:<Hub id or folder>`, or a folder holding a saved `VitsModel`.
    """
    if isinstance(spec, TTSBackend):
        return spec
    key = str(spec)
    if key in _BACKENDS:
        return _BACKENDS[key]
    if key in ("espeak", "espeak-ng"):
        backend: TTSBackend = EspeakBackend()
    elif key == "vits":
        backend = VitsBackend(DEFAULT_VITS_MODEL)
    elif key.startswith("vits:"):
        backend = VitsBackend(key[len("vits:") :])
    elif os.path.isfile(os.path.join(key, "config.json")):
        with open(os.path.join(key, "config.json")) as f:
            model_type = json.load(f).get("model_type")
        if model_type != "vits":
            raise ValueError(f"{key} holds a {model_type!r} model; a TTS folder must hold a VITS model.")
        backend = VitsBackend(key)
    else:
        raise ValueError(
            f"Unknown TTS {spec!r}: use 'espeak' (offline), 'vits' (facebook/mms-tts-eng from the Hub), "
            "'vits:<Hub id or folder>', or the folder of a saved VitsModel."
        )
    _BACKENDS[key] = backend
    return backend


def default_tts() -> TTSBackend:
    """The offline default: espeak-ng (`TTSUnavailableError` with install instructions when it is missing)."""
    return load_tts("espeak")


def words_per_minute(text: str, seconds: float) -> float:
    """Speaking rate of a clip: words in `text` per minute of `seconds`."""
    words = len(re.findall(r"[A-Za-z0-9']+", text))
    return words / seconds * 60.0 if seconds > 0 else math.inf


__all__ = [
    "EspeakBackend",
    "SpeechClip",
    "TTSBackend",
    "TTSUnavailableError",
    "VitsBackend",
    "clean_text",
    "default_tts",
    "find_espeak_library",
    "load_tts",
    "render",
    "trim_silence",
]
