"""The offline recogniser (pocketsphinx), the language models built for it, and WER/CER."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modeling_concept_talker.audio import load_audio, prepare_audio, resample
from concept_talker.evaluation.asr import (
    PocketsphinxRecognizer,
    build_arpa,
    char_error_rate,
    normalize_text,
    pronounce,
    word_error_rate,
)

# Three short LJSpeech utterances (1.8-2.6 s), so that the real checks take a few seconds.
SHORT_CLIPS = ("LJ001-0008", "LJ001-0002", "LJ001-0013")


# ---- text and error rates ------------------------------------------------------------------------------------


def test_normalize_text():
    assert normalize_text("“Well-known,” the PRINTER’s 'quote' -- don't stop!") == (
        "well known the printer's quote don't stop"
    )
    assert normalize_text("  In 1850:\tCafé/bar. ") == "in 1850 café bar"
    assert normalize_text("...!") == ""


def test_word_and_char_error_rates():
    references = ["The cat sat.", "a dog"]
    assert word_error_rate(references, ["the cat sat", "A DOG!"]) == 0.0
    # One insertion and one deletion over five reference words.
    assert word_error_rate(references, ["the cat sat down", "a"]) == pytest.approx(2 / 5)
    assert word_error_rate(["a b"], [""]) == 1.0
    # "abc" -> "abd": one substitution over 3 characters.
    assert char_error_rate(["abc"], ["abd"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_error_rate(references, ["x"])
    with pytest.raises(ValueError, match="no words after normalisation"):
        word_error_rate(["?!"], ["x"])
    with pytest.raises(TypeError, match="lists of sentences"):
        word_error_rate("the cat", "the cat")


# ---- pronunciations ---------------------------------------------------------------------------------------------


def test_pronounce_derives_possessives_and_compounds():
    assert pronounce("printer")[0] == "P R IH N T ER"  # with its alternates
    assert pronounce("bradshaw's") == ("B R AE D SH AO Z",)  # Z after a vowel
    assert pronounce("ship's")[0].endswith("SH IH P S")  # S after a voiceless stop
    assert pronounce("woodcutters") == ("W UH D K AH T ER Z",)  # wood + cutters
    assert pronounce("zzxqv") == ()


# ---- language models --------------------------------------------------------------------------------------------


def _read_arpa(text: str):
    """ARPA text -> ({ngram: log10 p}, {ngram: log10 backoff}, declared counts)."""
    probabilities, backoffs, declared = {}, {}, {}
    section = None
    for line in text.splitlines():
        if line.startswith("ngram "):
            order, count = line[6:].split("=")
            declared[int(order)] = int(count)
        elif line.startswith("\\") and line.endswith("-grams:"):
            section = int(line[1])
        elif section and line.strip() and not line.startswith("\\"):
            fields = line.split("\t")
            ngram = tuple(fields[1].split())
            probabilities[ngram] = float(fields[0])
            if len(fields) > 2:
                backoffs[ngram] = float(fields[2])
    return probabilities, backoffs, declared


def _probability(probabilities, backoffs, history: tuple, word: str) -> float:
    """P(word | history) of a back-off model, computed the way a decoder reads ARPA."""
    if history + (word,) in probabilities:
        return 10 ** probabilities[history + (word,)]
    if not history:
        return 0.0
    return 10 ** backoffs.get(history, 0.0) * _probability(probabilities, backoffs, history[1:], word)


def test_kneser_ney_model_is_a_distribution_for_every_history():
    corpus = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "the cat ran"]
    arpa = build_arpa(corpus, order=3, vocabulary=["zebra"])
    probabilities, backoffs, declared = _read_arpa(arpa)
    assert {n: sum(len(g) == n for g in probabilities) for n in (1, 2, 3)} == declared
    vocabulary = {g[0] for g in probabilities if len(g) == 1} - {"<s>"}
    assert {"zebra", "</s>", "cat"} <= vocabulary
    histories = [(), ("<s>",), ("<s>", "the"), ("the", "cat"), ("sat", "on"), ("cat",), ("zebra",), ("mat", "the")]
    for history in histories:
        total = sum(_probability(probabilities, backoffs, history, w) for w in vocabulary)
        assert total == pytest.approx(1.0, abs=1e-4), f"P(. | {history}) sums to {total}"
    # What the corpus says is more likely than what it never says; an unused word still gets a little.
    assert _probability(probabilities, backoffs, ("sat", "on"), "the") > 0.5
    assert 0 < _probability(probabilities, backoffs, ("sat", "on"), "zebra") < 0.05


def test_unigram_models():
    probabilities, _, _ = _read_arpa(build_arpa([], order=1, vocabulary=["yes", "no", "maybe"]))
    assert all(math.isclose(10 ** probabilities[(w,)], 1 / 4, rel_tol=1e-5) for w in ("yes", "no", "maybe", "</s>"))
    probabilities, _, _ = _read_arpa(build_arpa(["yes yes yes no"], order=1))
    assert probabilities[("yes",)] > probabilities[("no",)]
    with pytest.raises(ValueError, match="order must be at least 1"):
        build_arpa(["a"], order=0)


def test_corpus_words_without_a_pronunciation_are_left_out_and_listed(tmp_path):
    recognizer = PocketsphinxRecognizer.from_corpus(["the zzxqv sat", "the woodcutters sat"], save_dir=tmp_path)
    assert recognizer.unpronounceable_words == ["zzxqv"]
    assert "zzxqv" not in (tmp_path / "3gram.arpa").read_text()
    assert "woodcutters W UH D K AH T ER Z" in (tmp_path / "3gram.dict").read_text()


# ---- the recogniser on real speech --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ljspeech(assets):
    folder = assets / "speech" / "ljspeech-dev"
    with open(folder / "metadata.csv", encoding="utf-8") as f:
        transcripts = dict(line.rstrip("\n").split("|")[::2] for line in f if line.strip())
    clips = []
    for clip_id in SHORT_CLIPS:
        audio, rate = load_audio(str(folder / "wavs" / f"{clip_id}.flac"))
        clips.append(prepare_audio(audio, rate, 16000))
    return clips, [transcripts[clip_id] for clip_id in SHORT_CLIPS], list(transcripts.values())


@pytest.fixture(scope="module")
def domain_recognizer(ljspeech):
    """A trigram model of the 100 LJSpeech transcripts (the scored ones included)."""
    return PocketsphinxRecognizer.from_corpus(ljspeech[2], order=3)


def test_lyra_round_trip_stays_intelligible_and_reversed_speech_does_not(ljspeech, domain_recognizer, assets):
    from modeling_concept_talker import LyraCodecConfig
    from modeling_concept_talker.lyra import LyraCodec

    clips, references, _ = ljspeech
    codec = LyraCodec(LyraCodecConfig(model_dir=str(assets / "lyra-soundstream")), num_codebooks=8)
    round_trips = [codec.decode(codec.encode(clip[None]))[0, : clip.shape[-1]] for clip in clips]

    original = word_error_rate(references, domain_recognizer.transcribe_batch(clips, 16000))
    through_lyra = word_error_rate(references, domain_recognizer.transcribe_batch(round_trips, 16000))
    reversed_speech = word_error_rate(references, [domain_recognizer.transcribe(c.flip(-1), 16000) for c in clips])
    # Measured: 0%, 0% and about 115% (see benchmarks/lyra_ceiling.py for all 100 clips).
    assert original <= 0.2
    assert through_lyra <= original + 0.15
    assert reversed_speech >= 0.8


def test_general_language_model_and_any_sampling_rate(ljspeech):
    clips, references, _ = ljspeech
    recognizer = PocketsphinxRecognizer()
    at_24k = resample(clips[1], 16000, 24000)
    hypothesis = recognizer.transcribe(at_24k.numpy(), sampling_rate=24000)
    assert hypothesis == recognizer.transcribe(resample(at_24k, 24000, 16000), 16000)
    # The general model hears "in being comparatively ..." (it lacks the sentence; LJSpeech WER ~20-30%).
    assert word_error_rate(references[1:2], [hypothesis]) <= 0.5
    # Transcripts do not depend on what was transcribed before (pocketsphinx adapts its front end otherwise).
    recognizer.transcribe(clips[0].flip(-1), 16000)
    assert recognizer.transcribe(clips[1], 16000) == hypothesis


def test_a_bad_language_model_path_says_what_to_pass():
    with pytest.raises(ValueError, match="neither 'general' nor a language model file"):
        PocketsphinxRecognizer("no/such/file.arpa")


def test_spoken_replies_reports_what_the_judge_heard_against_the_text(assets):
    """`benchmarks/spoken_replies.py` on the embedded model: every reply is judged, and the WER is the judge's."""
    from benchmarks.spoken_replies import spoken_replies
    from concept_talker.loading import EMBEDDED_MODEL

    results = spoken_replies(str(EMBEDDED_MODEL), questions=("What does brave mean?",),
                             judge=str(assets / "whisper-base"), max_new_tokens=12)
    (row,) = results["replies"]
    assert row["question"] == "What does brave mean?" and isinstance(row["heard"], str)
    assert results["wer"] == row["wer"] and "whisper-base" in results["judge"]
    assert results["thinker_repetition_penalty"] is None  # the checkpoint's own setting
    penalised = spoken_replies(str(EMBEDDED_MODEL), questions=("What does brave mean?",),
                               judge=str(assets / "whisper-base"), max_new_tokens=12, repetition_penalty=50.0)
    tokens = penalised["replies"][0]["reply"].split()
    assert penalised["thinker_repetition_penalty"] == 50.0 and len(tokens) == len(set(tokens))  # no word twice
    # the plain reply ends on a token it already wrote ("question." ... "area."): the penalty must change it
    assert row["reply"].count(".") == 2 and penalised["replies"][0]["reply"] != row["reply"]


def test_the_listening_ceiling_is_what_the_ears_own_recogniser_reads(ljspeech, assets):
    """The evaluation's listening ceiling: the judge transcribes the questions' own audio (here real recordings),
    and the model's transcripts of the same rows are scored with the same normaliser, so the two figures compare."""
    from concept_talker.evaluation.asr import WhisperRecognizer
    from concept_talker.evaluation.evaluate import listening_ceiling

    clips, texts, _ = ljspeech
    rows = [{"question_text": text} for text in texts[:2]]
    judge = WhisperRecognizer(str(assets / "whisper-base"))
    model_heard = [texts[0], "the cat sat on the mat"]  # one transcript right, one wrong
    results = listening_ceiling(rows, model_heard, judge, clips[:2], 16000)
    assert results["judge_question_cer"] < 0.1 and results["judge_question_wer"] < 0.15
    right = judge.char_error_rate(texts[:1], model_heard[:1])
    assert right == 0.0 and results["stage1_cer_judge_normalised"] > 0.3
    assert [example["question"] for example in results["judge_question_examples"]] == texts[:2]


def test_the_whisper_judge_hears_real_speech_and_cuts_its_own_loops(ljspeech, assets):
    """Whisper base hears LJSpeech clips nearly word for word; a transcript that runs on past what a clip can hold
    (Whisper's loop on short repetitive audio) is cut to the clip's token budget."""
    from concept_talker.evaluation.asr import WhisperRecognizer

    judge = WhisperRecognizer(str(assets / "whisper-base"))
    clips, texts, _ = ljspeech
    heard = judge.transcribe_batch(clips[:2], 16000)
    assert judge.word_error_rate(texts[:2], heard) < 0.15

    generate = judge.model.generate
    oh = judge.processor.tokenizer(" oh,", add_special_tokens=False).input_ids
    asked = {}

    def looping(features, max_length, **kwargs):  # what Whisper does on "K, O, O, opus": "oh, oh, oh, ..."
        asked["max_new_tokens"] = max_length  # Whisper counts it in text tokens
        prompt = generate(features, max_length=1, **kwargs)[:, :-1]
        return torch.cat([prompt, torch.tensor(oh * max_length)[None].repeat(len(prompt), 1)], dim=1)

    judge.model.generate = looping
    one_second, three_seconds = clips[0][:16000], np.tile(clips[0], 3)[:48000]
    short, longer = judge.transcribe_batch([one_second, three_seconds], 16000)
    assert asked["max_new_tokens"] == judge.token_budget(3.0) == 34
    assert len(judge.processor.tokenizer(short, add_special_tokens=False).input_ids) <= judge.token_budget(1.0) == 18
    assert short.startswith("oh, oh") and len(longer.split()) > len(short.split())
