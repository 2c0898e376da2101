"""Evaluation on held-out voices and items (the test split), written to `eval_results.json` by a training run.

    stage1_cer              character error rate of the greedy transcripts of the spoken questions (stage 1's task),
                            held-out espeak-ng voices; `stage1_cer_house_voice`: the same questions spoken by the house
                            voice (which never speaks a training question); `stage1_cer_real_speech`: real recordings
                            (LJSpeech, out of the tutoring domain)
    stage1_wer              the same in words
    judge_question_cer      the listening ceiling of a frozen Whisper ear: the judge (Whisper, whose encoder is the
                            ear) transcribes the same test questions' audio with its own decoder; scored with the
                            judge's normaliser on both sides, next to the model's transcripts scored the same way
                            (`stage1_cer_judge_normalised`), so the two compare
    concept_accuracy        share of concept slots whose nearest token (through the thinker's embeddings) is the one
                            spoken in their stretch of time
    stage2_reply_accuracy   fraction of spoken questions whose greedy reply text is the reference reply, after
                            normalisation (case, punctuation); per skill in `stage2_reply_accuracy_by_skill`
    stage2_reply_wer        word error rate of the replies against the references
    audio_code_accuracy     teacher-forced talker accuracy over all codebooks (per codebook as `audio_code_accuracy_k`),
                            next to two baselines: the previous frame's code (`audio_copy_previous_accuracy`) and
                            each codebook's most frequent code (`audio_unigram_accuracy`)

Text metrics go through the project's `error_rate` metric and code accuracy through `code_accuracy`
(`concept_talker/evaluation/metrics`, loaded with `evaluate`); spoken replies are judged by Whisper (`concept_talker.evaluation.speech`).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict

import numpy as np
import torch

from concept_talker.data.collators import SpokenTurnCollator
from concept_talker.data.dataset import with_features
from concept_talker.files import atomic_path
from concept_talker.evaluation.speech import build_judge, reply_sentences
from concept_talker.evaluation.turns import greedy_texts, normalized

logger = logging.getLogger(__name__)


@torch.no_grad()
def audio_code_accuracy(model, processor, rows: list[dict], voice: bool = False, batch_size: int = 16) -> dict:
    """Teacher-forced accuracy of the talker's codes per codebook, next to two trivial baselines over the same
    frames: the previous frame's code (`copy_previous`) and each codebook's most frequent code in these replies
    (`unigram`). A talker that learnt nothing scores about the better of the two."""
    from concept_talker.evaluation.metrics import load_metric

    collator = SpokenTurnCollator(processor, "reply", model.config, voice=voice, concept_labels=False)
    predictions, references = [], []
    for start in range(0, len(rows), batch_size):
        batch = collator(rows[start : start + batch_size])
        out = model(**batch)
        guess = out.audio_logits.argmax(-1).permute(0, 2, 1)  # [batch, codebooks, steps]
        for row in range(guess.shape[0]):
            target = out.audio_targets[row]
            steps = int((target != -100).any(0).nonzero().max()) + 1
            predictions.append(guess[row, :, :steps].tolist())
            references.append(target[:, :steps].tolist())
    result = {("audio_" + k): v for k, v in load_metric("code_accuracy").compute(
        predictions=predictions, references=references).items()}
    frames = [np.asarray(row["reply_codes"], dtype=np.int64) for row in rows]  # [codebooks, frames] each
    k = frames[0].shape[0]
    counts = np.stack([np.bincount(np.concatenate([f[c] for f in frames]), minlength=model.talker.codebook_size)
                       for c in range(k)])
    copy_hits = sum(int((f[:, 1:] == f[:, :-1]).sum()) for f in frames)
    unigram_hits = sum(int((f[:, 1:] == counts.argmax(1)[:, None]).sum()) for f in frames)
    scored = sum(f[:, 1:].size for f in frames)
    result["audio_copy_previous_accuracy"] = copy_hits / scored
    result["audio_unigram_accuracy"] = unigram_hits / scored
    return result


@torch.no_grad()
def concept_accuracy(model, processor, rows: list[dict], batch_size: int = 16) -> dict:
    """How often each concept slot's nearest token is the one spoken in its stretch of time (held-out voices)."""
    collator = SpokenTurnCollator(processor, "transcribe", model.config)
    hits = total = 0.0
    for start in range(0, len(rows), batch_size):
        batch = collator(rows[start : start + batch_size])
        out = model(**{k: v for k, v in batch.items() if k not in ("labels",)})
        count = int((batch["concept_labels"] != -100).sum())
        hits += float(out.concept_accuracy) * count
        total += count
    return {"concept_accuracy": hits / total if total else None}


def evaluate_model(model_dir: str, dataset, settings: dict, processor=None) -> dict:
    """Every metric of a trained model on the test split (held-out voices and items).

    Args:
        model_dir: a checkpoint folder (`<out>/final`).
        dataset: the `DatasetDict` (its test split is scored; its train split says which words were heard).
        settings: the recipe's `eval` section (`max_examples`, `max_new_tokens`; `speech`: spoken WER through the
            judge (`judge`: a Whisper folder or Hub id, default the offline whisper-base), `speech_examples` rows;
            `voice`: the tutor-control metrics, `voice_examples` rows; `house_voice_questions`: that many test
            questions spoken by the house voice, transcribed; `real_speech`: an LJSpeech-layout folder of real
            recordings, transcribed).
    """
    from modeling_concept_talker import ConceptTalkerForConditionalGeneration, ConceptTalkerProcessor
    from concept_talker.evaluation.metrics import load_metric

    model = ConceptTalkerForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = processor or ConceptTalkerProcessor.from_pretrained(model_dir)
    test_split = with_features(dataset["test"])
    count = min(len(test_split), int(settings.get("max_examples") or len(test_split)))
    rows = [test_split[i] for i in range(count)]
    error_rate = load_metric("error_rate")
    max_new_tokens = int(settings.get("max_new_tokens", 48))
    results: dict = {"test_examples": count, "model": os.path.abspath(model_dir)}

    transcripts = greedy_texts(model, processor, rows, "transcribe", max_new_tokens)
    rates = error_rate.compute(predictions=transcripts, references=[row["question_text"] for row in rows])
    results["stage1_cer"], results["stage1_wer"] = rates["cer"], rates["wer"]
    results.update(concept_accuracy(model, processor, rows))
    results.update(listening_elsewhere(model, processor, rows, settings, max_new_tokens, error_rate))

    replies = greedy_texts(model, processor, rows, "reply", max_new_tokens)
    references = [row["reply_text"] for row in rows]
    correct = [normalized(reply) == normalized(reference) for reply, reference in zip(replies, references)]
    results["stage2_reply_accuracy"] = float(np.mean(correct))
    results["stage2_reply_wer"] = error_rate.compute(predictions=replies, references=references)["wer"]
    by_skill = defaultdict(list)
    for row, ok in zip(rows, correct):
        by_skill[row["skill"]].append(ok)
    results["stage2_reply_accuracy_by_skill"] = {skill: float(np.mean(v)) for skill, v in sorted(by_skill.items())}
    results["examples"] = [
        {"question": row["question_text"], "instruction": row.get("instruction"), "transcript": transcript,
         "reply": reply, "reference": row["reply_text"]}
        for row, transcript, reply in list(zip(rows, transcripts, replies))[:8]
    ]

    voice = bool(settings.get("voice")) and model.config.talker_config.num_style_concepts > 0
    results.update(audio_code_accuracy(model, processor, rows, voice=voice))
    with torch.inference_mode():
        if settings.get("speech"):
            judge = build_judge(settings.get("judge"), reply_sentences(dataset))
            waves = question_waves(dataset, rows, processor.sampling_rate)
            if waves is not None:
                results.update(listening_ceiling(rows, transcripts, judge, waves, processor.sampling_rate))
            results.update(speech_metrics(model, processor, dataset, rows, settings, judge))
        if settings.get("voice"):
            results.update(tutor_metrics(model, processor, test_split, rows, settings, voice))
    if settings.get("speech") or settings.get("voice"):
        from concept_talker.evaluation.speech import talker_sampling

        results["talker_sampling"] = talker_sampling(model)
    return results


def listening_elsewhere(model, processor, rows, settings, max_new_tokens: int, error_rate) -> dict:
    """Transcripts of speech the model never trained on, beyond the held-out espeak-ng voices: the test questions
    spoken by the house voice (`house_voice_questions` of them), and real recordings (`real_speech`, an LJSpeech
    folder: out of the tutoring domain, so read as how far listening carries, not as a target)."""
    results = {}
    count = int(settings.get("house_voice_questions") or 0)
    if count and model.ear is not None:
        from concept_talker.data.tts import load_tts, render

        voice = load_tts("piper")
        chosen = rows[:count]
        waves = [render(voice, row["question_text"], 16000) for row in chosen]
        heard = greedy_texts(model, processor, chosen, "transcribe", max_new_tokens, waves=waves, sampling_rate=16000)
        rates = error_rate.compute(predictions=heard, references=[row["question_text"] for row in chosen])
        results["stage1_cer_house_voice"], results["stage1_wer_house_voice"] = rates["cer"], rates["wer"]
        results["house_voice_questions"] = len(chosen)
    folder = settings.get("real_speech")
    if folder and model.ear is not None and os.path.isdir(folder):
        from modeling_concept_talker.audio import load_audio
        from concept_talker.data.ljspeech import _audio_path, read_metadata

        entries = read_metadata(folder)[: int(settings.get("real_speech_examples", 40))]
        waves, texts = [], []
        for utterance_id, text in entries:
            audio, rate = load_audio(_audio_path(folder, utterance_id))
            waves.append(processor.prepare_audio(audio, rate))
            texts.append(text)
        fake_rows = [{"instruction": ""} for _ in texts]
        heard = greedy_texts(model, processor, fake_rows, "transcribe", max_new_tokens, waves=waves,
                             sampling_rate=processor.sampling_rate)
        rates = error_rate.compute(predictions=heard, references=texts)
        results["stage1_cer_real_speech"], results["stage1_wer_real_speech"] = rates["cer"], rates["wer"]
        results["real_speech_examples"] = [{"reference": r, "heard": h} for r, h in list(zip(texts, heard))[:4]]
    return results


def question_waves(dataset, rows: list[dict], sampling_rate: int) -> list | None:
    """The rows' question audio at `sampling_rate` Hz: stored (`question_audio`), or rendered again from each row's
    voice, rate, pitch, speed and noise by the dataset's question TTS (recipes keep no audio); None when neither
    can be had (a TTS this machine lacks)."""
    if rows and rows[0].get("question_audio") is not None:
        return [np.asarray(row["question_audio"], dtype=np.float32) for row in rows]
    from concept_talker.data.dataset import load_synth_info
    from concept_talker.data.synth import render_question
    from concept_talker.data.tts import load_tts

    try:
        tts = load_tts(load_synth_info(dataset)["tts"]["questions"]["backend"])
    except (ValueError, KeyError, OSError) as err:
        logger.warning("No listening ceiling: the dataset's questions cannot be rendered again here (%s).", err)
        return None
    return [render_question(tts, row, sampling_rate, max_seconds=None)[0] for row in rows]


def listening_ceiling(rows: list[dict], transcripts: list[str], judge, waves: list, sampling_rate: int) -> dict:
    """What the ear's own recogniser reads from the same speech: the judge transcribes the rows' questions (`waves`,
    float32 at `sampling_rate` Hz), scored against the question text with the judge's normaliser; the model's
    `transcripts` of the same rows are scored the same way. With the judge's Whisper as the frozen ear, its CER is
    about as well as listening through that ear can be expected to do."""
    references = [row["question_text"] for row in rows]
    heard = judge.transcribe_batch(waves, sampling_rate)
    return {"judge_question_cer": judge.char_error_rate(references, heard),
            "judge_question_wer": judge.word_error_rate(references, heard),
            "stage1_cer_judge_normalised": judge.char_error_rate(references, transcripts),
            "judge_question_examples": [{"question": r, "judge_heard": h, "model_heard": t}
                                        for r, h, t in list(zip(references, heard, transcripts))[:4]]}


def speech_metrics(model, processor, dataset, rows, settings, judge) -> dict:
    """Spoken WER of the model and of the codec's ceiling, judged by `judge` (see `concept_talker.evaluation.speech`)."""
    from concept_talker.evaluation.speech import speech_intelligibility

    from concept_talker.data.synth import HOUSE_PITCH

    # The house voice's own replies (not the pitch-shifted voice rows, which the voice metric scores), spoken by the
    # model in its house voice: the ceiling is then the same sentences in the same voice through the codec.
    house = [row for row in rows if row.get("reply_pitch") in (None, HOUSE_PITCH)]
    chosen = house[: int(settings.get("speech_examples", 40))]
    training = dataset["train"]["reply_text"] if "train" in dataset else None
    results = speech_intelligibility(model, processor, chosen, judge, voice=False, training_replies=training)
    results["speech_examples_scored"] = len(chosen)
    return results


def tutor_metrics(model, processor, test_split, rows, settings, voice: bool) -> dict:
    """Speaking rate, reference voice and "repeat after me" (see `concept_talker.evaluation.tutor_metrics`)."""
    from concept_talker.evaluation.tutor_metrics import (
        distinct_voice_references,
        rate_duration_ratio,
        reference_codes,
        reference_f0,
        repeat_exact,
        voice_f0_match,
    )

    chosen = [row for row in rows if row["skill"] != "repeat"][: int(settings.get("voice_examples", 12))]

    def style_for(row):
        if not voice or row.get("reference_codes") is None:
            return None  # the house voice
        return model.get_voice_concepts(reference_codes(model, row))

    results = rate_duration_ratio(model, processor, chosen, style_for)
    results.update(repeat_exact(model, processor, rows, int(settings.get("max_new_tokens", 48))))
    if voice:
        pool = [row for row in (test_split[i] for i in range(min(len(test_split), 120)))
                if row.get("reference_codes") is not None]
        references = distinct_voice_references(pool, lambda row: reference_f0(model, row))
        results.update(voice_f0_match(model, processor, chosen, references))
    return results


def plot_loss_curves(histories: dict[str, list[dict]], path: str) -> None:
    """Training loss (and its text / audio parts) of each stage against the step, one panel per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(histories), figsize=(5 * len(histories), 3.6), squeeze=False)
    for axis, (stage, history) in zip(axes[0], histories.items()):
        for key, style in (("loss", "-"), ("text_loss", "--"), ("audio_loss", ":"), ("eval_loss", "o-")):
            points = [(h["step"], h[key]) for h in history if key in h and "step" in h]
            if points:
                steps, values = zip(*points)
                axis.plot(steps, values, style, label=key, markersize=3)
        axis.set_title(f"stage: {stage}")
        axis.set_xlabel("step")
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    axes[0][0].set_ylabel("cross-entropy (nats)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
