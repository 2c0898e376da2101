"""The reply's phonemes: what the talker reads to know how each word sounds.

    phonemize_words(["Paris", "is"])             -> ["pˈæɹɪs", "ɪz"]     espeak-ng's IPA, one word at a time
    reply_symbols("Paris is big.")               -> PhonemeSymbols("^pˈæɹɪs ɪz bˈɪɡ.$", chars=[...])

A reply is spoken as a sequence of **symbols**, one Unicode codepoint each (NFD, so a stress mark or a combining
mark is a symbol of its own, as Piper voices read them): the IPA of each word, `" "` between words, the punctuation
marks `.,?!:;`, and `^` / `$` for the silence before and after. Each symbol remembers the character of the reply
text it comes from (`chars`: the last character of its word, the mark itself, the word before a space), so it can
be given the thinker's state of the token that holds that character.

Words are phonemized one at a time (not as a sentence), so a word's phonemes never depend on the words after it:
the talker can be handed a word's phonemes as soon as the thinker has finished writing it, and the training data
(rendered by a voice that reads these very symbols) uses the same phonemes.

G2P is espeak-ng's (`espeak_TextToPhonemes`, IPA), from the `espeakng-loader` wheel or a system library
(`apt-get install espeak-ng`). espeak-ng keeps state in C statics, so the library is loaded for each call and
unloaded after it (a few milliseconds), and words already phonemized are remembered.
"""

from __future__ import annotations

import _ctypes
import contextlib
import ctypes
import ctypes.util
import os
import re
import threading
import unicodedata
from dataclasses import dataclass, field

INSTALL_HINT = (
    'Install espeak-ng: `pip install "concept-talker[tts]"` (the espeakng-loader wheel, which bundles the library '
    "and its voices) or `apt-get install espeak-ng` on Debian/Ubuntu."
)

BEGIN, END, SPACE = "^", "$", " "
PUNCTUATION = ".,?!:;"
# Every symbol espeak-ng's English voices write (IPA letters, stress, length and combining marks) plus the
# separators. A symbol outside it is read as UNKNOWN.
IPA_SYMBOLS = (
    "abcdefhijklmnopqrstuvwxyzæçðøħŋœǀǁǂǃɐɑɒɓɔɕɖɗɘəɚɛɜɞɟɠɡɢɣɤɥɦɧɨɪɫɬɭɮɯɰɱɲɳɴɵɶɸɹɺɻɽɾʀʁʂʃʄʈʉʊʋʌʍʎʏʐʑʒʔʕʘʙʛʜʝʟʡʢ"
    "ʲˈˌːˑ˞βθχᵻⱱ\u0303\u0327\u0329\u032a\u032f\u0361"
)
UNKNOWN = "\ufffd"
DEFAULT_SYMBOLS = UNKNOWN + BEGIN + END + SPACE + PUNCTUATION + IPA_SYMBOLS

# One lock for every use of libespeak-ng in the process (G2P here, synthesis in the TTS): it is not thread-safe.
ESPEAK_LOCK = threading.RLock()

_WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)*")
_PIECE = re.compile(rf"{_WORD.pattern}|[{re.escape(PUNCTUATION)}]")


class PhonemizerUnavailableError(RuntimeError):
    """espeak-ng, which turns the reply's words into phonemes, is not installed; the message says how to install it."""


def find_espeak_library() -> tuple[str, str | None]:
    """Where libespeak-ng is: (library path, voice data folder or None for the library's built-in path).

    The `espeakng-loader` wheel comes first, then a system library. Raises `PhonemizerUnavailableError` with
    install instructions when neither is there.
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
    raise PhonemizerUnavailableError(f"espeak-ng is not installed, and it is needed to speak text. {INSTALL_HINT}")


@contextlib.contextmanager
def loaded_espeak(options: int = 0):
    """libespeak-ng, loaded and initialised for synchronous output under `ESPEAK_LOCK`; unloaded afterwards, statics
    and all, so nothing one call does leaks into the next. Yields `(library, sampling_rate)`."""
    library_path, data_path = find_espeak_library()
    with ESPEAK_LOCK:
        try:
            lib = ctypes.CDLL(library_path)
        except OSError as err:
            raise PhonemizerUnavailableError(f"Could not load {library_path} ({err}). {INSTALL_HINT}") from err
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        try:
            sampling_rate = lib.espeak_Initialize(2, 0, data_path.encode() if data_path else None, options)
            if sampling_rate <= 0:
                raise PhonemizerUnavailableError(
                    f"espeak-ng found at {library_path} could not start (no voice data at "
                    f"{data_path or 'its built-in path'}). {INSTALL_HINT}"
                )
            yield lib, int(sampling_rate)
        finally:
            lib.espeak_Terminate()
            _ctypes.dlclose(lib._handle)


_IPA_MODE = 0x02  # espeak_TextToPhonemes phonememode: IPA
_CACHE: dict[tuple[str, str], str] = {}


def phonemize_words(words: list[str], language: str = "en-us") -> list[str]:
    """Each word alone -> its IPA, NFD-normalised (`"Paris"` -> `"pˈæɹɪs"`). Words seen before come from a cache.

    Raises `PhonemizerUnavailableError` without espeak-ng and `ValueError` for a language espeak-ng lacks.
    """
    missing = sorted({w for w in words if (language, w) not in _CACHE})
    if missing:
        with loaded_espeak() as (lib, _):
            if lib.espeak_SetVoiceByName(language.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice for language {language!r}: use e.g. 'en-us'.")
            for word in missing:
                buffer = ctypes.create_string_buffer(word.encode("utf-8"))
                pointer = ctypes.c_void_p(ctypes.addressof(buffer))
                parts = []
                while pointer.value:
                    clause = lib.espeak_TextToPhonemes(ctypes.byref(pointer), 1, _IPA_MODE)  # 1: UTF-8 text
                    if clause:
                        parts.append(clause.decode("utf-8"))
                ipa = unicodedata.normalize("NFD", "".join(parts))
                _CACHE[(language, word)] = "".join(ch for ch in ipa if not ch.isspace())
    return [_CACHE[(language, w)] for w in words]


def token_sound_table(pieces: list[str], width: int, seed: int = 0, own: float = 0.3,
                      language: str = "en-us"):
    """How each token sounds, as a fixed unit vector: `[len(pieces), width]` (float32) for the tokens' text `pieces`.

    A token's vector is the sum of random vectors for the 1-, 2- and 3-grams of its espeak-ng phonemes (stress marks
    dropped; `#` opens a piece that starts a word, i.e. begins with a space), divided by the root of their count, plus
    `own` times a random vector of its own (so that tokens that sound the same, " engine" and " Engine", stay
    apart). Tokens that sound alike lie close, and a token never heard is made of sounds heard in others. A piece
    with no letter or digit (punctuation, a special token) has its own vector only. The same pieces, width and seed
    give the same table.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    words = [re.sub(r"[^A-Za-z0-9']", "", piece) for piece in pieces]
    spellings = sorted(set(filter(None, words)))
    spoken = dict(zip(spellings, phonemize_words(spellings, language))) if spellings else {}
    grams: dict[str, int] = {}
    token_grams = []
    for piece, word in zip(pieces, words):
        sounds = ("#" if piece[:1].isspace() else "") + spoken.get(word, "").replace("ˈ", "").replace("ˌ", "")
        sounds = sounds if word else ""
        token_grams.append([grams.setdefault(sounds[i : i + n], len(grams))
                            for n in (1, 2, 3) for i in range(len(sounds) - n + 1)])
    gram_vectors = torch.randn(len(grams) + 1, width, generator=generator)
    table = torch.randn(len(pieces), width, generator=generator)
    for row, indices in enumerate(token_grams):
        if indices:
            table[row] = own * table[row] + gram_vectors[indices].sum(0) / len(indices) ** 0.5
    return torch.nn.functional.normalize(table, dim=-1)


def text_pieces(text: str) -> list[tuple[str, int, int]]:
    """The words and punctuation marks of `text`, in order, as `(piece, start, end)` character spans. Anything
    else (quotes, hyphens, symbols) separates pieces and is not spoken."""
    return [(m.group(), m.start(), m.end()) for m in _PIECE.finditer(text)]


@dataclass
class PhonemeSymbols:
    """A reply as the talker reads it.

    Attributes:
        symbols: one codepoint per symbol (see the module docstring), `^` first and `$` last when complete.
        chars: `[len(symbols)]` for each symbol, the index of the reply-text character it comes from.
    """

    symbols: str = ""
    chars: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.symbols)

    def extend(self, symbols: str, char: int) -> None:
        self.symbols += symbols
        self.chars.extend([char] * len(symbols))


def _piece_symbols(pieces: list[tuple[str, int, int]], language: str, previous: str | None) -> PhonemeSymbols:
    """Symbols of consecutive pieces; `previous` is the piece before them (None at the start of the reply)."""
    words = [p for p, _, _ in pieces if p[0].isalnum()]
    ipa = iter(phonemize_words(words, language))
    out = PhonemeSymbols()
    for piece, start, end in pieces:
        if piece[0].isalnum():
            if previous is not None:
                out.extend(SPACE, max(start - 1, 0))
            out.extend(next(ipa) or UNKNOWN, end - 1)
        else:
            out.extend(piece, start)
        previous = piece
    return out


def reply_symbols(text: str, language: str = "en-us") -> PhonemeSymbols:
    """The whole reply's symbols, `^ ... $` (what training data is made of, and what a forced reply is spoken as)."""
    pieces = text_pieces(text)
    if not any(p[0].isalnum() for p, _, _ in pieces):
        raise ValueError(f"{text[:60]!r} has no word to speak: the reply needs at least one word.")
    stream = IncrementalPhonemes(language)
    return stream.finish(text)


class IncrementalPhonemes:
    """The reply's symbols as its text grows (streaming): `add(text_so_far)` returns the symbols of the pieces that
    are now complete; `finish(text)` the rest, `$` included. The symbols handed out, joined, are exactly
    `reply_symbols(text)`.

    A word is complete once the text goes on past it (a space or a mark follows), since the next token may still
    extend it.
    """

    def __init__(self, language: str = "en-us"):
        self.language = language
        self.done = 0  # pieces handed out
        self.previous: str | None = None
        self.started = False

    def _take(self, pieces: list[tuple[str, int, int]]) -> PhonemeSymbols:
        out = PhonemeSymbols()
        if not self.started:
            out.extend(BEGIN, 0)
            self.started = True
        if pieces:
            body = _piece_symbols(pieces, self.language, self.previous)
            out.symbols += body.symbols
            out.chars += body.chars
            self.previous = pieces[-1][0]
            self.done += len(pieces)
        return out

    def add(self, text: str) -> PhonemeSymbols:
        pieces = text_pieces(text)
        complete = [p for p in pieces if p[2] < len(text)]
        return self._take(complete[self.done :])

    def finish(self, text: str) -> PhonemeSymbols:
        out = self._take(text_pieces(text)[self.done :])
        out.extend(END, max(len(text) - 1, 0))
        return out


def symbol_ids(symbols: str, inventory: str = DEFAULT_SYMBOLS) -> list[int]:
    """Symbols -> ids in `inventory` (a string, one symbol per character); unknown symbols get the id of UNKNOWN."""
    index = {s: i for i, s in enumerate(inventory)}
    unknown = index.get(UNKNOWN, 0)
    return [index.get(s, unknown) for s in symbols]


__all__ = [
    "DEFAULT_SYMBOLS",
    "IncrementalPhonemes",
    "PhonemeSymbols",
    "PhonemizerUnavailableError",
    "find_espeak_library",
    "phonemize_words",
    "reply_symbols",
    "symbol_ids",
    "text_pieces",
]
