"""`concept-talker eval-speech`: is what the model says understandable? WER through a real recogniser.

    concept-talker eval-speech --model runs/tiny-lyra/final --data runs/tiny-lyra/data --json speech.json

On the test split (held-out voices and items), for each spoken question:

    ceiling_wer   the reference reply's audio (the house voice, then the codec's round trip: the dataset's reply codes
                  decoded) -> judge -> WER against the reference reply text. The best the codec allows.
    wer           the model speaking the same reference reply text (its thinker reads the reference tokens, its
                  talker writes the audio) -> judge -> WER against that text. Same sentences as the ceiling;
                  `wer_unseen_words` / `wer_seen_words` split it by whether a reply holds a word no training reply
                  holds (so the talker never heard it).
    free_wer      the model's own spoken reply (its thinker chooses the words) -> WER against the words it wrote.
    garbage_wer   the model's spoken replies played backwards: a control that must stay near 1.

The judge is Whisper (`--judge`: a Whisper folder or Hub id; default `../shared/assets/whisper-base` when present,
else `openai/whisper-base`) with its English text normaliser on both sides; `--judge pocketsphinx` uses the offline
pocketsphinx recogniser with a trigram language model of the dataset's reply sentences instead. The results say
which. Needs a codec with real weights (Lyra, or EnCodec's pretrained model) to mean anything.
"""

from __future__ import annotations


from concept_talker.data.collators import codes_tensor
from concept_talker.evaluation.turns import reference_codes, spoken_turn_inputs


class PocketsphinxJudge:
    """The offline pocketsphinx recogniser with a trigram LM of the dataset's replies, behind the judge's interface."""

    def __init__(self, sentences: list[str]):
        from concept_talker.evaluation.asr import PocketsphinxRecognizer

        self.recognizer = PocketsphinxRecognizer.from_corpus(sentences, order=3)

    def describe(self) -> str:
        return "pocketsphinx, trigram LM of the dataset's reply sentences (all splits)"

    def transcribe_batch(self, clips, sampling_rate: int) -> list[str]:
        return [self.recognizer.transcribe(c, sampling_rate) if len(c) else "" for c in clips]

    def word_error_rate(self, references, hypotheses) -> float:
        from concept_talker.evaluation.asr import word_error_rate

        return word_error_rate(references, hypotheses)

    def char_error_rate(self, references, hypotheses) -> float:
        from concept_talker.evaluation.asr import char_error_rate

        return char_error_rate(references, hypotheses)


def build_judge(spec: str | None, sentences: list[str]):
    """The recogniser that judges the spoken replies: Whisper (`spec` a folder or Hub id; None: `default_judge()`)
    or `"pocketsphinx"`."""
    if spec == "pocketsphinx":
        return PocketsphinxJudge(sentences)
    from concept_talker.evaluation.asr import WhisperRecognizer

    return WhisperRecognizer(spec)


def reply_sentences(dataset) -> list[str]:
    """Every reply sentence of the dataset (all splits): the pocketsphinx judge's language model."""
    return sorted({text for name in dataset for text in dataset[name]["reply_text"] if text})


def unseen_words(references: list[str], training_replies: list[str], judge) -> list[bool]:
    """Whether each reference reply holds a word (after the judge's normalisation) that no training reply holds."""
    normalize = getattr(judge, "normalize", lambda t: " ".join(t.lower().split()))
    known = {word for text in training_replies if text for word in normalize(text).split()}
    return [any(word not in known for word in normalize(r).split()) for r in references]


def speech_intelligibility(model, processor, rows: list[dict], judge, voice: bool = False, seed: int = 0,
                           training_replies: list[str] | None = None, free_replies: bool = True) -> dict:
    """WERs of the ceiling, the model on the reference texts, the model's free replies, and the garbage control (the
    free replies played backwards; with `free_replies=False` the model speaks only the reference texts, and the
    garbage control plays those backwards)."""

    codec, k = model.codec, model.config.codec_num_codebooks
    rate = codec.sampling_rate
    references, ceiling_audio, forced_audio, free_texts, free_audio = [], [], [], [], []
    # The talker samples with the checkpoint's own settings (its generation_config.json), as `chat` does.
    settings = dict(thinker_max_new_tokens=64, max_audio_seconds=15.0, seed=seed, tokenizer=processor.tokenizer)
    for row in rows:
        reference = row["reply_text"]
        references.append(reference)
        ceiling_audio.append(codec.decode(codes_tensor(row["reply_codes"], "reply_codes", k)[None])[0].numpy())
        inputs = spoken_turn_inputs(processor, [row], model.config, "reply")
        if voice and row.get("voice_given") and row.get("reference_codes") is not None:
            inputs["style_embeds"] = model.get_voice_concepts(reference_codes(model, row))
        reply_ids = processor.tokenizer(reference + "<|im_end|>", add_special_tokens=False).input_ids
        forced_audio.append(model.generate(**inputs, reply_token_ids=[reply_ids], **settings).waveforms[0])
        if free_replies:
            free = model.generate(**inputs, **settings)
            free_texts.append(processor.decode(free.sequences[0], skip_special_tokens=True).strip())
            free_audio.append(free.waveforms[0])
    ceiling_heard = judge.transcribe_batch(ceiling_audio, rate)
    forced_heard = judge.transcribe_batch(forced_audio, rate)
    if not free_replies:
        backwards_heard = judge.transcribe_batch([w[::-1].copy() for w in forced_audio], rate)
        return {"ceiling_wer": judge.word_error_rate(references, ceiling_heard),
                "wer": judge.word_error_rate(references, forced_heard),
                "garbage_wer": judge.word_error_rate(references, backwards_heard), "judge": judge.describe()}
    free_heard = judge.transcribe_batch(free_audio, rate)
    backwards_heard = judge.transcribe_batch([w[::-1].copy() for w in free_audio], rate)
    spoken = [i for i, text in enumerate(free_texts) if text.strip()]  # free replies with words to score
    written = [free_texts[i] for i in spoken]
    results = {
        "ceiling_wer": judge.word_error_rate(references, ceiling_heard),
        "wer": judge.word_error_rate(references, forced_heard),
        "free_wer": judge.word_error_rate(written, [free_heard[i] for i in spoken]) if spoken else None,
        "garbage_wer": judge.word_error_rate(written, [backwards_heard[i] for i in spoken]) if spoken else None,
        "judge": judge.describe(),
        "speech_examples": [
            {"reference": r, "ceiling_heard": c, "model_heard": f, "free_reply": t, "free_heard": h}
            for r, c, f, t, h in list(zip(references, ceiling_heard, forced_heard, free_texts, free_heard))[:8]
        ],
    }
    if training_replies:
        unseen = unseen_words(references, training_replies, judge)
        for name, chosen in (("unseen_words", True), ("seen_words", False)):
            picked = [i for i, flag in enumerate(unseen) if flag == chosen]
            results[f"wer_{name}"] = (judge.word_error_rate([references[i] for i in picked],
                                                            [forced_heard[i] for i in picked]) if picked else None)
            results[f"replies_{name}"] = len(picked)
    return results


def talker_sampling(model) -> dict:
    """How the talker samples when not told otherwise (the checkpoint's defaults): what the figures were made with."""
    from modeling_concept_talker.generation import SpokenGenerationConfig

    settings = SpokenGenerationConfig.for_model(model, {})
    return {"talker_do_sample": settings.talker_do_sample, "talker_temperature": settings.talker_temperature,
            "talker_top_k": settings.talker_top_k}
