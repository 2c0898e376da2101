"""Spoken turns as the evaluation feeds them to a model: generation inputs from dataset rows (their stored ear frames
or codec codes, or recordings heard through the model's ear), greedy transcripts and replies, text normalised as the
judge normalises it. Every evaluation module builds on these; they import nothing else of the evaluation."""

from __future__ import annotations

import numpy as np
import torch

from modeling_concept_talker import build_prompt
from concept_talker.data.collators import TRANSCRIBE_TASK, codes_tensor, pad_codes, pad_frames
from concept_talker.evaluation.asr import normalize_text


def spoken_turn_inputs(processor, rows: list[dict], config, task: str, waves: list | None = None,
                       sampling_rate: int | None = None) -> dict:
    """Left-padded generation inputs for rows' spoken questions, for `task` "transcribe" or "reply".

    The questions are the rows' stored ear frames (`question_features`) or codec codes (`question_codes`), or, with
    `waves` (one clip per row at `sampling_rate`), those recordings heard through the model's own ear.
    """
    prompts = [build_prompt(task=TRANSCRIBE_TASK) if task == "transcribe" else build_prompt(row.get("instruction") or None)
               for row in rows]
    if waves is not None:
        inputs = processor(text=prompts, audio=list(waves), sampling_rate=sampling_rate, padding_side="left")
        return dict(inputs)
    if config.ear_type != "codec":
        clips = [np.asarray(row["question_features"]) for row in rows]
        frames = [c.shape[0] for c in clips]
    else:
        clips = [codes_tensor(row["question_codes"], "question_codes", config.codec_num_codebooks) for row in rows]
        frames = [c.shape[1] for c in clips]
    texts = processor.expand_audio_placeholders(prompts, frames)
    batch = dict(processor.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt",
                                     add_special_tokens=False))
    if config.ear_type != "codec":
        batch["input_features"], batch["input_features_mask"] = pad_frames(clips)
    else:
        batch["input_audio_codes"], batch["input_audio_codes_mask"] = pad_codes(clips, 0)
    return batch


def decode_replies(processor, token_rows: list[list[int]]) -> list[str]:
    return [processor.decode(tokens, skip_special_tokens=True).strip() for tokens in token_rows]


def greedy_texts(model, processor, rows: list[dict], task: str, max_new_tokens: int, batch_size: int = 16,
                 waves: list | None = None, sampling_rate: int | None = None) -> list[str]:
    """Greedy reply texts (or transcripts, `task="transcribe"`) of rows' spoken questions (see `spoken_turn_inputs`)."""
    from modeling_concept_talker.generation import greedy_text

    texts = []
    for start in range(0, len(rows), batch_size):
        chunk = None if waves is None else waves[start : start + batch_size]
        batch = spoken_turn_inputs(processor, rows[start : start + batch_size], model.config, task, chunk,
                                   sampling_rate)
        texts += decode_replies(processor, greedy_text(model, batch, max_new_tokens))
    return texts


def normalized(text: str) -> str:
    return normalize_text(text)


def reference_codes(model, row: dict) -> torch.Tensor:
    """A row's reference clip as codes `[1, codebooks, frames]`."""
    return codes_tensor(row["reference_codes"], "reference_codes", model.config.codec_num_codebooks)[None]
