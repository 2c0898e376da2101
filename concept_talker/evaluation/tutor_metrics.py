"""Measures of the tutor's controls (speaking rate, reference voice, "repeat after me"), on held-out data.

    rate_duration_ratio   the same reply text spoken after "Speak slowly." and after "Speak quickly.":
                          median over items of duration(slow) / duration(fast). Target >= 1.3.
    voice_f0_match        replies spoken with a reference clip from one of several held-out voices: the fraction
                          whose median pitch (F0) is nearer to that clip's than to every other candidate's.
                          Target >= 0.8. A voice here is a held-out TTS voice at a pitch, as a clip conveys it;
                          the candidates' F0s lie at least 20% apart (`distinct_voice_references`), since two
                          voices of nearly the same pitch cannot be told apart by pitch at all.
    repeat_exact          "repeat after me" questions: the fraction whose greedy reply text is the user's sentence
                          (after normalisation). Target >= 0.9.

Durations count speech, not silence: audio is trimmed of leading and trailing frames 35 dB below its loudest.
The talker samples with the checkpoint's own settings (`generation_config.json`, e.g. its recipe's
`talker_temperature`), as `chat` does. F0 is estimated with YIN on 40 ms frames
(`modeling_concept_talker.pitch.estimate_f0`, which the talker's reference voice also uses).
"""

from __future__ import annotations

import numpy as np
import torch

from modeling_concept_talker.pitch import median_f0
from concept_talker.evaluation.turns import greedy_texts, normalized, reference_codes, spoken_turn_inputs

SLOW, FAST = "Speak slowly.", "Speak quickly."


def speech_seconds(audio: np.ndarray, sampling_rate: int, floor_db: float = 35.0) -> float:
    """Seconds from the first to the last 10 ms frame within `floor_db` of the loudest (silence trimmed)."""
    audio = np.asarray(audio, dtype=np.float64)
    hop = max(1, sampling_rate // 100)
    frames = len(audio) // hop
    if frames == 0:
        return 0.0
    rms = np.sqrt(np.mean(audio[: frames * hop].reshape(frames, hop) ** 2, axis=1))
    active = np.nonzero(rms > rms.max() * 10 ** (-floor_db / 20))[0]
    return 0.0 if not len(active) else (active[-1] - active[0] + 1) * hop / sampling_rate


def _speak(model, processor, row: dict, instruction: str | None, reply_text: str, style=None, seed: int = 0):

    inputs = spoken_turn_inputs(processor, [{**row, "instruction": instruction or ""}], model.config, "reply")
    ids = processor.tokenizer(reply_text + "<|im_end|>", add_special_tokens=False).input_ids
    reply = model.generate(**inputs, style_embeds=style, reply_token_ids=[ids], max_audio_seconds=20.0, seed=seed,
                           tokenizer=processor.tokenizer)
    return reply.waveforms[0]


@torch.no_grad()
def rate_duration_ratio(model, processor, rows: list[dict], style_for=None) -> dict:
    """Median of duration(slow) / duration(fast) over rows, each reply text spoken both ways."""
    ratios = []
    rate = model.codec.sampling_rate
    for row in rows:
        style = style_for(row) if style_for else None
        slow = speech_seconds(_speak(model, processor, row, SLOW, row["reply_text"], style), rate)
        fast = speech_seconds(_speak(model, processor, row, FAST, row["reply_text"], style), rate)
        if fast > 0:
            ratios.append(slow / fast)
    return {"rate_duration_ratio": float(np.median(ratios)) if ratios else None, "rate_items": len(ratios)}


def reference_f0(model, row: dict) -> float | None:
    """Median F0 (Hz) of a row's reference clip, decoded by the model's codec; None when unvoiced."""
    return median_f0(model.codec.decode(reference_codes(model, row))[0].numpy(), model.codec.sampling_rate)


def distinct_voice_references(rows, clip_f0, count: int = 4, min_ratio: float = 1.2) -> dict[str, dict]:
    """Up to `count` reference rows whose clips' median F0s lie pairwise at least `min_ratio` apart.

    Rows are taken in order; a row joins when its clip is voiced and far enough in pitch from every row already
    chosen, preferring voices not chosen yet (a second pass allows a chosen voice at another pitch).

    Args:
        rows: dataset rows with `reply_voice`, `reply_pitch` and `reference_codes`.
        clip_f0: row -> median F0 (Hz) of its reference clip, or None when unvoiced.

    Returns:
        `"<voice> pitch <p>"` -> row.
    """
    pitched = [(row, f0) for row in rows if (f0 := clip_f0(row)) is not None]
    chosen: dict[str, tuple[dict, float]] = {}
    for new_voices_only in (True, False):
        for row, f0 in pitched:
            name = f"{row['reply_voice']} pitch {row['reply_pitch']}"
            voices = {r["reply_voice"] for r, _ in chosen.values()}
            if len(chosen) == count or name in chosen or (new_voices_only and row["reply_voice"] in voices):
                continue
            if all(max(f0, other) / min(f0, other) >= min_ratio for _, other in chosen.values()):
                chosen[name] = (row, f0)
    return {name: row for name, (row, _) in chosen.items()}


@torch.no_grad()
def voice_f0_match(model, processor, rows: list[dict], references: dict[str, dict]) -> dict:
    """For each row and each candidate voice, speak the row's reply with that voice's reference clip; count the
    replies whose median F0 is nearest the clip's own.

    Args:
        references: voice name -> a dataset row whose `reference_codes` is that voice's clip.
    """
    rate = model.codec.sampling_rate
    clip_f0, styles = {}, {}
    for voice, ref_row in references.items():
        codes = reference_codes(model, ref_row)
        clip_f0[voice] = reference_f0(model, ref_row)
        # The talker reads the pitch measured here (decoded once); 0 Hz is how it is told a clip is unvoiced.
        styles[voice] = model.get_voice_concepts(codes, voice_f0=torch.tensor([clip_f0[voice] or 0.0]))
    candidates = {v: f for v, f in clip_f0.items() if f is not None}
    hits, trials = 0, 0
    for row in rows:
        for voice in candidates:
            f0 = median_f0(_speak(model, processor, row, None, row["reply_text"], styles[voice]), rate)
            if f0 is None:
                trials += 1
                continue
            nearest = min(candidates, key=lambda v: abs(np.log(candidates[v]) - np.log(f0)))
            hits += nearest == voice
            trials += 1
    return {"voice_f0_match": hits / trials if trials else None, "voice_trials": trials,
            "voice_candidates_f0": candidates}


def repeat_exact(model, processor, rows: list[dict], max_new_tokens: int = 48) -> dict:
    """Fraction of "repeat after me" rows whose greedy reply is the user's sentence."""

    repeat_rows = [row for row in rows if row["skill"] == "repeat"]
    if not repeat_rows:
        return {"repeat_exact": None, "repeat_items": 0}
    replies = greedy_texts(model, processor, repeat_rows, "reply", max_new_tokens)
    exact = [normalized(reply) == normalized(row["question_text"]) for reply, row in zip(replies, repeat_rows)]
    return {"repeat_exact": float(np.mean(exact)), "repeat_items": len(exact)}
