"""Evaluation on held-out voices and items (the test split), written to `eval_results.json` by a training run.

    stage1_cer              character error rate of the greedy transcripts of the spoken questions (stage 1's task)
    stage1_wer              the same in words
    stage2_reply_accuracy   fraction of spoken questions whose greedy reply text is the reference reply, after
                            normalisation (case, punctuation); per skill in `stage2_reply_accuracy_by_skill`
    stage2_reply_wer        word error rate of the replies against the references
    audio_code_accuracy     teacher-forced talker accuracy over all codebooks (per codebook as `audio_code_accuracy_k`)

Text metrics go through the project's `error_rate` metric and code accuracy through `code_accuracy`
(`trainers/metrics`, loaded with `evaluate`).
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np
import torch

from modeling_concept_talker import build_prompt
from trainers.collators import TRANSCRIBE_TASK, SpokenTurnCollator, codes_tensor


def spoken_turn_inputs(processor, rows: list[dict], num_codebooks: int, task: str) -> dict:
    """Left-padded generation inputs for rows' spoken questions (precomputed codes), for `task` "transcribe" or "reply"."""
    from trainers.collators import pad_codes

    clips = [codes_tensor(row["question_codes"], "question_codes", num_codebooks) for row in rows]
    prompts = [build_prompt(task=TRANSCRIBE_TASK) if task == "transcribe" else build_prompt(row.get("instruction") or None)
               for row in rows]
    texts = processor.expand_audio_placeholders(prompts, [c.shape[1] for c in clips])
    batch = dict(processor.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt",
                                     add_special_tokens=False))
    batch["input_audio_codes"], batch["input_audio_codes_mask"] = pad_codes(clips, 0)
    return batch


def decode_replies(processor, token_rows: list[list[int]]) -> list[str]:
    return [processor.decode(tokens, skip_special_tokens=True).strip() for tokens in token_rows]


def greedy_texts(model, processor, rows: list[dict], task: str, max_new_tokens: int, batch_size: int = 16) -> list[str]:
    from modeling_concept_talker.generation import greedy_text

    texts = []
    for start in range(0, len(rows), batch_size):
        batch = spoken_turn_inputs(processor, rows[start : start + batch_size], model.config.codec_num_codebooks, task)
        texts += decode_replies(processor, greedy_text(model, batch, max_new_tokens))
    return texts


def normalized(text: str) -> str:
    from trainers.asr import normalize_text

    return normalize_text(text)


@torch.no_grad()
def audio_code_accuracy(model, processor, rows: list[dict], voice: bool = False, batch_size: int = 16) -> dict:
    """Teacher-forced accuracy of the talker's codes per codebook (delayed targets, EOS included)."""
    from trainers.metrics import load_metric

    collator = SpokenTurnCollator(processor, "reply", model.config.codec_num_codebooks, voice=voice)
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
    result = load_metric("code_accuracy").compute(predictions=predictions, references=references)
    return {("audio_" + k): v for k, v in result.items()}


def evaluate_model(model_dir: str, dataset, settings: dict, processor=None) -> dict:
    """Every metric of a trained model on the test split (held-out voices and items).

    Args:
        model_dir: a checkpoint folder (`<out>/final`).
        dataset: the `DatasetDict` (its test split is scored; all replies make the recogniser's language model).
        settings: the recipe's `eval` section (`max_examples`, `max_new_tokens`; `speech`: spoken WER through the
            recogniser, `speech_examples` rows; `voice`: the tutor-control metrics, `voice_examples` rows).
    """
    from modeling_concept_talker import ConceptTalkerForConditionalGeneration, ConceptTalkerProcessor
    from trainers.metrics import load_metric

    model = ConceptTalkerForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = processor or ConceptTalkerProcessor.from_pretrained(model_dir)
    test_split = dataset["test"]
    count = min(len(test_split), int(settings.get("max_examples") or len(test_split)))
    rows = [test_split[i] for i in range(count)]
    error_rate = load_metric("error_rate")
    max_new_tokens = int(settings.get("max_new_tokens", 48))
    results: dict = {"test_examples": count, "model": os.path.abspath(model_dir)}

    transcripts = greedy_texts(model, processor, rows, "transcribe", max_new_tokens)
    rates = error_rate.compute(predictions=transcripts, references=[row["question_text"] for row in rows])
    results["stage1_cer"], results["stage1_wer"] = rates["cer"], rates["wer"]

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
            results.update(speech_metrics(model, processor, dataset, rows, settings, voice))
        if settings.get("voice"):
            results.update(tutor_metrics(model, processor, test_split, rows, settings, voice))
    if settings.get("speech") or settings.get("voice"):
        from trainers.eval_speech import talker_sampling

        results["talker_sampling"] = talker_sampling(model)
    return results


def speech_metrics(model, processor, dataset, rows, settings, voice: bool) -> dict:
    """Spoken WER of the model and of the codec's ceiling (see `trainers.eval_speech`)."""
    from trainers.eval_speech import build_recognizer, language_model_description, speech_intelligibility

    kind = settings.get("speech_lm", "corpus")
    sentences = sorted({text for name in dataset for text in dataset[name]["reply_text"]})
    recognizer = build_recognizer(kind, sentences)
    chosen = rows[: int(settings.get("speech_examples", 40))]
    results = speech_intelligibility(model, processor, chosen, recognizer, voice=voice)
    results["speech_examples_scored"] = len(chosen)
    results["recognizer"] = language_model_description(kind)
    return results


def tutor_metrics(model, processor, test_split, rows, settings, voice: bool) -> dict:
    """Speaking rate, reference voice and "repeat after me" (see `trainers.tutor_metrics`)."""
    from trainers.tutor_metrics import (
        distinct_voice_references,
        rate_duration_ratio,
        reference_codes,
        reference_f0,
        repeat_exact,
        voice_f0_match,
    )

    chosen = [row for row in rows if row["skill"] != "repeat"][: int(settings.get("voice_examples", 12))]

    def style_for(row):
        if not voice:
            return None
        return model.get_voice_concepts(reference_codes(model, row))

    results = rate_duration_ratio(model, processor, chosen, style_for)
    results.update(repeat_exact(model, processor, rows, int(settings.get("max_new_tokens", 48))))
    if voice:
        pool = [test_split[i] for i in range(min(len(test_split), 60))]
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
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
