"""Offline speech recognition for intelligibility checks: pocketsphinx, language models built here, WER and CER.

The recogniser answers one question: is this audio (a codec round trip, a talker's reply) intelligible speech?
It runs pocketsphinx's bundled US-English acoustic model and CMU pronouncing dictionary, with one of three
language models:

- the general English trigram model shipped with pocketsphinx (`PocketsphinxRecognizer()`); weak on synthetic speech
  (about 73% WER on espeak-ng sentences, see ECOSYSTEM.md);
- a unigram model over a vocabulary or a corpus (`PocketsphinxRecognizer.from_vocabulary` /
  `from_corpus(..., order=1)`): any sequence of the domain's words (about 38% WER on espeak-ng speech);
- an n-gram model of a corpus of domain sentences (`PocketsphinxRecognizer.from_corpus(sentences, order=3)`): the
  sharpest check (about 11-12% WER on espeak-ng speech through a Lyra round trip), while time-reversed speech stays
  near 100% under every model, so a domain model sharpens the check without flattering garbage.

Language models are written here as ARPA text (interpolated Kneser-Ney, see `build_arpa`), with no external toolkit.

Words of a corpus that the CMU dictionary lacks get a pronunciation when it can be derived from dictionary words
(a possessive `'s` after a known word, or a compound of two known words such as `wood` + `cutters`); words still
without one are left out of the language model (the recogniser cannot say them) and listed in
`PocketsphinxRecognizer.unpronounceable_words`, so that the errors they cause are known.

Scoring (`word_error_rate`, `char_error_rate`) normalises both sides with `normalize_text` first.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np
import torch

from modeling_concept_talker.audio import check_sampling_rate, resample, to_mono_float

ASR_SAMPLING_RATE = 16000  # Hz, the rate of pocketsphinx's en-us acoustic model
ASR_INSTALL_HINT = 'pip install "concept-talker[asr]" (which pins pocketsphinx==5.1.1)'
SENTENCE_START, SENTENCE_END = "<s>", "</s>"

# ---------------------------------------------------------------------------------------------------------------
# Text normalisation and error rates
# ---------------------------------------------------------------------------------------------------------------

_DASHES = re.compile(r"[-\u2010-\u2015/]")
_NOT_WORD = re.compile(r"[^\w\s']|_")
_EDGE_APOSTROPHES = re.compile(r"(?<!\w)'+|'+(?!\w)")


def normalize_text(text: str) -> str:
    """Text as the recogniser writes it, so that only the words are scored.

    Unicode NFKC; lowercase; curly apostrophes become `'`; hyphens, dashes and slashes separate words
    (`well-known` -> `well known`); every other character that is not a letter, digit, apostrophe or space goes
    (punctuation); apostrophes inside a word stay (`don't`, `printer's`), those at its edges (quotes) go; spaces are
    collapsed. Numbers are not spelled out: `1850` stays a token that the recogniser (which writes words) cannot
    match, so score against spelled-out references (LJSpeech's third column, a TTS front end's text).
    """
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'").replace("\u2018", "'")
    text = _NOT_WORD.sub(" ", _DASHES.sub(" ", text))
    text = _EDGE_APOSTROPHES.sub(" ", text)
    return " ".join(text.split())


def _normalized_pairs(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[list[str], list[str]]:
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise TypeError(
            "Pass lists of sentences (one per utterance), not single strings: e.g. [reference], [hypothesis]."
        )
    if len(references) != len(hypotheses):
        raise ValueError(
            f"Got {len(references)} references but {len(hypotheses)} hypotheses: pass one of each per utterance."
        )
    if not references:
        raise ValueError("No utterances to score: pass at least one reference and hypothesis.")
    refs = [normalize_text(r) for r in references]
    empty = [i for i, r in enumerate(refs) if not r]
    if empty:
        raise ValueError(
            f"References {empty[:5]} have no words after normalisation: an error rate needs words to count errors "
            "against; leave those utterances out."
        )
    return refs, [normalize_text(h) for h in hypotheses]


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus word error rate: (substitutions + deletions + insertions) / reference words, over all utterances.

    Both sides go through `normalize_text`. Can exceed 1 when the recogniser inserts words.
    """
    import jiwer

    refs, hyps = _normalized_pairs(references, hypotheses)
    return float(jiwer.wer(refs, hyps))


def char_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus character error rate over normalised text (single spaces between words count as characters)."""
    import jiwer

    refs, hyps = _normalized_pairs(references, hypotheses)
    return float(jiwer.cer(refs, hyps))


# ---------------------------------------------------------------------------------------------------------------
# The judge: Whisper, with its own English text normaliser on both sides
# ---------------------------------------------------------------------------------------------------------------

DEFAULT_JUDGE = "openai/whisper-base"
# Whisper loops on short, repetitive audio ("oh, oh, oh, ..." up to the token limit), and one such transcript would
# weigh more in a corpus WER than all the others. Speech carries at most about 5 text tokens a second (fast speech:
# 3.5 words a second), so the judge keeps at most this many tokens of a clip: 8 a second, and 10 for any clip.
JUDGE_TOKENS_PER_SECOND = 8
JUDGE_TOKEN_SLACK = 10
MAX_JUDGE_TOKENS = 220  # a 30 s clip's budget: half of Whisper's 448-token context, prompt included
OFFLINE_JUDGE = os.path.join("..", "shared", "assets", "whisper-base")


def default_judge() -> str:
    """Where the judge comes from: `$CONCEPT_TALKER_WHISPER_DIR`, else the offline copy next to the project when it
    exists (`../shared/assets/whisper-base`), else `openai/whisper-base` from the Hub."""
    for candidate in (os.environ.get("CONCEPT_TALKER_WHISPER_DIR"), OFFLINE_JUDGE):
        if candidate and os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    return DEFAULT_JUDGE


class WhisperRecognizer:
    """A real recogniser for judging what the tutor says: Whisper through transformers (float32 on the CPU),
    greedy, English, and scored with Whisper's `EnglishTextNormalizer` on both sides (so "eighteen" and "18" match).

    Args:
        name_or_path: a Whisper model (Hub id or folder; default `default_judge()`). It never downloads when given a
            folder; with a Hub id it downloads like any `from_pretrained`.
        batch_size: clips transcribed together.
    """

    sampling_rate = ASR_SAMPLING_RATE

    def __init__(self, name_or_path: str | None = None, batch_size: int = 8):
        import json

        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

        self.name_or_path = str(name_or_path or default_judge())
        try:
            self.model = WhisperForConditionalGeneration.from_pretrained(self.name_or_path, dtype=torch.float32).eval()
            self.processor = WhisperProcessor.from_pretrained(self.name_or_path)
        except (OSError, ValueError) as err:
            raise OSError(
                f"Could not load the judge (Whisper) from {self.name_or_path!r}: {err}\nPass a Whisper model's folder "
                "(offline here: ../shared/assets/whisper-base, or set CONCEPT_TALKER_WHISPER_DIR) or a Hub id."
            ) from err
        spelling = os.path.join(self.name_or_path, "normalizer.json")
        mapping = {}
        if os.path.isfile(spelling):
            with open(spelling, encoding="utf-8") as f:
                mapping = json.load(f)
        self.normalizer = EnglishTextNormalizer(mapping)
        self.batch_size = batch_size

    def describe(self) -> str:
        return f"Whisper ({os.path.basename(self.name_or_path.rstrip(os.sep)) or self.name_or_path}), greedy, " \
               "English text normaliser on both sides"

    def token_budget(self, seconds: float) -> int:
        """The most text tokens a transcript of a clip of `seconds` keeps (see `JUDGE_TOKENS_PER_SECOND`)."""
        return min(MAX_JUDGE_TOKENS, math.ceil(JUDGE_TOKENS_PER_SECOND * seconds) + JUDGE_TOKEN_SLACK)

    def transcribe_batch(self, clips, sampling_rate: int) -> list[str]:
        """Clips (float32 `[samples]` each, any length under 30 s) at `sampling_rate` -> their transcripts, each cut
        to its clip's `token_budget` (a recogniser's loop is not speech)."""
        import torch

        texts = []
        clips = [to_mono_float(np.asarray(c, dtype=np.float32), name="clip") for c in clips]
        waves = [resample(c, check_sampling_rate(sampling_rate), self.sampling_rate).numpy() for c in clips]
        special = set(self.processor.tokenizer.all_special_ids)
        for start in range(0, len(waves), self.batch_size):
            chunk = waves[start : start + self.batch_size]
            present = [i for i, w in enumerate(chunk) if len(w)]
            heard = [""] * len(chunk)
            if present:
                budgets = {i: self.token_budget(len(chunk[i]) / self.sampling_rate) for i in present}
                features = self.processor([chunk[i] for i in present], sampling_rate=self.sampling_rate,
                                          return_tensors="pt").input_features
                with torch.inference_mode():  # Whisper's generate counts max_length in text tokens (its decoder
                    # prompt apart); max_new_tokens would clash with the max_length of its generation config, and
                    # transformers warns of that on every call
                    ids = self.model.generate(features, language="en", task="transcribe",
                                              max_length=max(budgets.values()))
                for i, row in zip(present, ids.tolist()):
                    tokens = [t for t in row if t not in special][: budgets[i]]
                    heard[i] = self.processor.tokenizer.decode(tokens).strip()
            texts += heard
        return texts

    def transcribe(self, audio, sampling_rate: int) -> str:
        return self.transcribe_batch([audio], sampling_rate)[0]

    def normalize(self, text: str) -> str:
        return " ".join(self.normalizer(text).split())

    def word_error_rate(self, references: Sequence[str], hypotheses: Sequence[str]) -> float:
        """Corpus WER with Whisper's English normaliser on both sides (references without words are left out)."""
        import jiwer

        pairs = [(self.normalize(r), self.normalize(h)) for r, h in zip(references, hypotheses)]
        pairs = [(r, h) for r, h in pairs if r]
        if not pairs:
            raise ValueError("No reference has words to score.")
        return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))

    def char_error_rate(self, references: Sequence[str], hypotheses: Sequence[str]) -> float:
        import jiwer

        pairs = [(self.normalize(r), self.normalize(h)) for r, h in zip(references, hypotheses)]
        pairs = [(r, h) for r, h in pairs if r]
        return float(jiwer.cer([r for r, _ in pairs], [h for _, h in pairs]))


# ---------------------------------------------------------------------------------------------------------------
# Pronunciations
# ---------------------------------------------------------------------------------------------------------------


def _pocketsphinx():
    try:
        import pocketsphinx
    except ImportError as err:
        raise ImportError(f"The offline recogniser needs pocketsphinx: {ASR_INSTALL_HINT}.") from err
    return pocketsphinx


def bundled_model_paths() -> dict[str, str]:
    """Paths of pocketsphinx's bundled US-English model: `hmm` (acoustic model folder), `lm` and `dict`."""
    folder = os.path.join(_pocketsphinx().get_model_path(), "en-us")
    return {
        "hmm": os.path.join(folder, "en-us"),
        "lm": os.path.join(folder, "en-us.lm.bin"),
        "dict": os.path.join(folder, "cmudict-en-us.dict"),
    }


@lru_cache(maxsize=1)
def cmu_dictionary() -> dict[str, tuple[str, ...]]:
    """The bundled CMU pronouncing dictionary: word -> its pronunciations (ARPAbet phones, space-separated)."""
    entries: dict[str, list[str]] = defaultdict(list)
    with open(bundled_model_paths()["dict"], encoding="utf-8") as f:
        for line in f:
            word, _, phones = line.strip().partition(" ")
            if phones:
                entries[re.sub(r"\(\d+\)$", "", word)].append(phones.strip())
    return {word: tuple(pronunciations) for word, pronunciations in entries.items()}


_SIBILANTS = {"S", "Z", "SH", "ZH", "CH", "JH"}
_VOICELESS = {"P", "T", "K", "F", "TH", "HH"}


def pronounce(word: str, dictionary: dict[str, tuple[str, ...]] | None = None) -> tuple[str, ...]:
    """Pronunciations of a normalised word: from the dictionary, else derived from dictionary words, else `()`.

    Derived: `X's` from `X` (+ `IH Z` after a sibilant, `S` after a voiceless consonant, `Z` otherwise); a compound
    `XY` from `X` and `Y` (each at least 3 letters; the most even split wins). (`normalize_text` has already turned
    a plural possessive `printers'` into `printers`.)
    """
    dictionary = cmu_dictionary() if dictionary is None else dictionary
    if word in dictionary:
        return dictionary[word]
    if word.endswith("'s") and word[:-2] in dictionary:
        stem = dictionary[word[:-2]][0]
        last = stem.split()[-1]
        suffix = "IH Z" if last in _SIBILANTS else "S" if last in _VOICELESS else "Z"
        return (f"{stem} {suffix}",)
    splits = [
        (min(i, len(word) - i), word[:i], word[i:])
        for i in range(3, len(word) - 2)
        if word[:i] in dictionary and word[i:] in dictionary
    ]
    if splits:
        _, left, right = max(splits)
        return (f"{dictionary[left][0]} {dictionary[right][0]}",)
    return ()


def write_dictionary(path: str, pronunciations: dict[str, tuple[str, ...]]) -> None:
    """Write a pocketsphinx dictionary: one `word phones` line per pronunciation, alternates as `word(2)`."""
    with open(path, "w", encoding="utf-8") as f:
        for word in sorted(pronunciations):
            for index, phones in enumerate(pronunciations[word]):
                f.write(f"{word if index == 0 else f'{word}({index + 1})'} {phones}\n")


# ---------------------------------------------------------------------------------------------------------------
# Language models as ARPA text
# ---------------------------------------------------------------------------------------------------------------


def _kneser_ney_discount(counts: Iterable[int]) -> float:
    """The discount D = n1 / (n1 + 2 n2) of Ney et al. (n_k: n-grams seen k times), kept within [0.1, 0.9]."""
    histogram = Counter(counts)
    n1, n2 = histogram.get(1, 0), histogram.get(2, 0)
    if n1 + 2 * n2 == 0:
        return 0.5
    return min(max(n1 / (n1 + 2 * n2), 0.1), 0.9)


def build_arpa(sentences: Iterable[str], order: int = 3, vocabulary: Iterable[str] = ()) -> str:
    """An interpolated Kneser-Ney n-gram language model of `sentences`, as ARPA text (what pocketsphinx reads).

    Sentences are normalised with `normalize_text` and padded with `<s>` and `</s>`. The highest order uses raw
    counts, lower orders the Kneser-Ney continuation counts (how many distinct words precede an n-gram; raw counts
    for n-grams starting with `<s>`), each order with its own absolute discount D = n1 / (n1 + 2 n2). Unigrams are
    interpolated with a uniform distribution over the vocabulary (the corpus's words, `vocabulary` and `</s>`), so a
    word of `vocabulary` that the corpus never uses keeps a small probability; with no sentences the model is uniform.
    In back-off form, each n-gram seen in the corpus stores its interpolated probability and each history its
    interpolation weight, so the probabilities of every history sum to one.

    Args:
        sentences: the corpus, one sentence per item.
        order: n of the n-gram model (1 = unigram).
        vocabulary: extra words (normalised) to give a probability to.
    """
    if order < 1:
        raise ValueError(f"order must be at least 1 (1 = unigram), got {order}.")
    corpus = [normalize_text(s).split() for s in sentences]
    corpus = [[SENTENCE_START, *words, SENTENCE_END] for words in corpus if words]
    raw: list[Counter] = [Counter() for _ in range(order + 1)]  # raw[n][ngram tuple]
    for padded in corpus:
        for n in range(1, order + 1):
            for i in range(len(padded) - n + 1):
                raw[n][tuple(padded[i : i + n])] += 1
    # The counts each order is estimated from: raw at the highest order, continuation counts below it.
    counts: list[Counter] = [Counter() for _ in range(order + 1)]
    counts[order] = raw[order]
    for n in range(1, order):
        for ngram in raw[n + 1]:
            counts[n][ngram[1:]] += 1  # one more distinct word seen before ngram[1:]
        for ngram, count in raw[n].items():
            if ngram[0] == SENTENCE_START:
                counts[n][ngram] = count

    words = {w for (w,) in raw[1]} | {normalize_text(w) for w in vocabulary if normalize_text(w)}
    words.discard(SENTENCE_START)
    words.add(SENTENCE_END)
    for w in words:
        if " " in w:
            raise ValueError(f"Vocabulary entries must be single words, got {w!r}.")

    log10 = [dict() for _ in range(order + 1)]  # log10[n][ngram] = log10 P(last word | the others)
    backoff = [dict() for _ in range(order + 1)]  # backoff[n][ngram] = log10 weight of ngram as a history

    unigram_counts = {(w,): counts[1].get((w,), 0) for w in words}
    total = sum(unigram_counts.values())
    discount = _kneser_ney_discount(c for c in unigram_counts.values() if c)
    seen = sum(1 for c in unigram_counts.values() if c)
    uniform_mass = discount * seen / total if total else 1.0
    for ngram, count in unigram_counts.items():
        probability = (max(count - discount, 0.0) / total if total else 0.0) + uniform_mass / len(words)
        log10[1][ngram] = math.log10(probability)
    log10[1][(SENTENCE_START,)] = -99.0  # never predicted; present as the first history

    for n in range(2, order + 1):
        discount = _kneser_ney_discount(counts[n].values())
        history_total: Counter = Counter()
        history_types: Counter = Counter()
        for ngram, count in counts[n].items():
            history_total[ngram[:-1]] += count
            history_types[ngram[:-1]] += 1
        for history, count in history_total.items():
            backoff[n - 1][history] = math.log10(discount * history_types[history] / count)
        for ngram, count in counts[n].items():
            history = ngram[:-1]
            lower = 10 ** log10[n - 1][ngram[1:]]  # the suffix of a seen n-gram is always seen (KN counts)
            weight = discount * history_types[history] / history_total[history]
            log10[n][ngram] = math.log10(max(count - discount, 0.0) / history_total[history] + weight * lower)

    lines = ["\\data\\"]
    lines += [f"ngram {n}={len(log10[n])}" for n in range(1, order + 1)]
    for n in range(1, order + 1):
        lines += ["", f"\\{n}-grams:"]
        for ngram in sorted(log10[n]):
            entry = f"{log10[n][ngram]:.6f}\t{' '.join(ngram)}"
            if n < order and ngram in backoff[n]:
                entry += f"\t{backoff[n][ngram]:.6f}"
            lines.append(entry)
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The recogniser
# ---------------------------------------------------------------------------------------------------------------


class PocketsphinxRecognizer:
    """Offline English speech recognition with pocketsphinx, on float audio at any sampling rate.

    Build it with one of:
    - `PocketsphinxRecognizer()`: the general English trigram model bundled with pocketsphinx;
    - `PocketsphinxRecognizer.from_vocabulary(words)`: a unigram model giving every word the same probability;
    - `PocketsphinxRecognizer.from_corpus(sentences, order=3)`: an n-gram model of domain sentences (order=1: a
      unigram model weighted by the corpus's word counts);
    - `PocketsphinxRecognizer(language_model=path, dictionary=path)`: model and dictionary files of your own.

    Args:
        language_model: `"general"` or the path of a language model file (ARPA text or pocketsphinx binary).
        dictionary: the path of a pronouncing dictionary (default: the whole bundled CMU dictionary).
        decoder_options: any other pocketsphinx option (`lw`, `beam`, ...); logging is off unless `loglevel` is set.
    """

    def __init__(self, language_model: str = "general", dictionary: str | None = None, **decoder_options):
        pocketsphinx = _pocketsphinx()
        paths = bundled_model_paths()
        if language_model == "general":
            lm_path = paths["lm"]
        elif os.path.isfile(language_model):
            lm_path = language_model
        else:
            raise ValueError(
                f"language_model={language_model!r} is neither 'general' nor a language model file: pass 'general', "
                "the path of an ARPA file, or build one with PocketsphinxRecognizer.from_corpus(sentences)."
            )
        if dictionary is not None and not os.path.isfile(dictionary):
            raise ValueError(
                f"dictionary={dictionary!r} is not a file: pass a pronouncing dictionary or leave it unset."
            )
        self.language_model = language_model
        self.unpronounceable_words: list[str] = []  # corpus words left out of a model built by from_corpus
        self._files = None  # the temporary folder of a model built by from_corpus, kept as long as the recogniser
        options = {"loglevel": "FATAL", **decoder_options}
        self.decoder = pocketsphinx.Decoder(hmm=paths["hmm"], lm=lm_path, dict=dictionary or paths["dict"], **options)

    @classmethod
    def from_corpus(
        cls,
        sentences: Iterable[str],
        order: int = 3,
        vocabulary: Iterable[str] = (),
        save_dir: str | None = None,
        **decoder_options,
    ) -> PocketsphinxRecognizer:
        """A recogniser whose language model is an `order`-gram model of `sentences` (see `build_arpa`).

        Its dictionary holds just the model's words. Words without a pronunciation (see `pronounce`) are removed from
        the sentences first and listed in `unpronounceable_words`. `save_dir` keeps the ARPA file and the dictionary
        written (default: a temporary folder removed with the recogniser).
        """
        sentences = [normalize_text(s) for s in sentences]
        vocabulary = [w for w in (normalize_text(w) for w in vocabulary) if w]
        words = {w for s in sentences for w in s.split()} | set(vocabulary)
        if not words:
            raise ValueError("The corpus and vocabulary hold no words: pass the sentences the speech may contain.")
        dictionary = cmu_dictionary()
        pronunciations = {w: pronounce(w, dictionary) for w in sorted(words)}
        missing = sorted(w for w, p in pronunciations.items() if not p)
        pronunciations = {w: p for w, p in pronunciations.items() if p}
        if not pronunciations:
            raise ValueError(f"No word of the corpus has a pronunciation (e.g. {missing[:5]}): is it English text?")
        sentences = [" ".join(w for w in s.split() if w in pronunciations) for s in sentences]
        arpa = build_arpa(sentences, order=order, vocabulary=[w for w in vocabulary if w in pronunciations])

        files = None
        if save_dir is None:
            files = tempfile.TemporaryDirectory(prefix="concept-talker-asr-")
            save_dir = files.name
        os.makedirs(save_dir, exist_ok=True)
        lm_path = os.path.join(save_dir, f"{order}gram.arpa")
        dict_path = os.path.join(save_dir, f"{order}gram.dict")
        with open(lm_path, "w", encoding="utf-8") as f:
            f.write(arpa)
        write_dictionary(dict_path, pronunciations)
        recognizer = cls(lm_path, dictionary=dict_path, **decoder_options)
        recognizer._files = files
        recognizer.unpronounceable_words = missing
        return recognizer

    @classmethod
    def from_vocabulary(
        cls, words: Iterable[str], save_dir: str | None = None, **decoder_options
    ) -> PocketsphinxRecognizer:
        """A recogniser whose language model gives each word of `words` the same probability, in any order."""
        return cls.from_corpus([], order=1, vocabulary=words, save_dir=save_dir, **decoder_options)

    def transcribe(self, audio, sampling_rate: int) -> str:
        """Words heard in one clip (lowercase, no punctuation; `""` if none), from a fresh acoustic front end.

        Args:
            audio: one mono or multichannel clip (numpy array, tensor or list; float in [-1, 1] or int16/int32 PCM).
            sampling_rate: its rate in Hz; it is resampled to 16 kHz.
        """
        wave = to_mono_float(audio)
        wave = resample(wave, check_sampling_rate(sampling_rate), ASR_SAMPLING_RATE)
        pcm = (torch.clamp(wave, -1.0, 1.0) * 32767.0).round().to(torch.int16).numpy()
        # Reset the noise estimate and cepstral mean that pocketsphinx carries from one utterance to the next, so a
        # clip's transcript does not depend on what was transcribed before it.
        self.decoder.reinit_feat()
        self.decoder.start_utt()
        self.decoder.process_raw(np.ascontiguousarray(pcm).tobytes(), no_search=False, full_utt=True)
        self.decoder.end_utt()
        hypothesis = self.decoder.hyp()
        return "" if hypothesis is None else " ".join(hypothesis.hypstr.split())

    def transcribe_batch(self, clips: Iterable, sampling_rate: int) -> list[str]:
        """`transcribe` each clip of `clips` (all at `sampling_rate` Hz)."""
        return [self.transcribe(clip, sampling_rate) for clip in clips]


__all__ = [
    "ASR_SAMPLING_RATE",
    "PocketsphinxRecognizer",
    "build_arpa",
    "char_error_rate",
    "cmu_dictionary",
    "normalize_text",
    "pronounce",
    "word_error_rate",
]
