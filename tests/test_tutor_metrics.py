"""The measures behind the tutor's controls: pitch, speech duration, and the choice of reference voices."""

from __future__ import annotations

import numpy as np
import pytest

from modeling_concept_talker.pitch import estimate_f0, median_f0
from concept_talker.evaluation.tutor_metrics import distinct_voice_references, speech_seconds

RATE = 16000


def voiced(f0: float, seconds: float, rate: int = RATE) -> np.ndarray:
    """A glottal-like tone: harmonics of `f0` with falling amplitude, as in voiced speech."""
    t = np.arange(int(seconds * rate)) / rate
    return sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6)).astype(np.float32) * 0.2


@pytest.mark.parametrize("f0", [90.0, 140.0, 220.0, 310.0])
def test_f0_of_a_harmonic_tone(f0):
    assert median_f0(voiced(f0, 1.0), RATE) == pytest.approx(f0, rel=0.02)


def test_silence_and_noise_have_no_pitch():
    assert median_f0(np.zeros(RATE, dtype=np.float32), RATE) is None
    noise = np.random.default_rng(0).standard_normal(RATE).astype(np.float32)
    assert len(estimate_f0(noise, RATE)) < 5  # white noise has no period
    assert len(estimate_f0(np.zeros(100, dtype=np.float32), RATE)) == 0  # shorter than one frame


def test_speech_seconds_trims_leading_and_trailing_silence():
    tone = voiced(150.0, 1.5)
    padded = np.concatenate([np.zeros(RATE // 2), tone, 1e-5 * np.ones(RATE)]).astype(np.float32)
    assert speech_seconds(padded, RATE) == pytest.approx(1.5, abs=0.02)
    slow = np.concatenate([tone, np.zeros(RATE // 4), tone]).astype(np.float32)  # a pause inside counts
    assert speech_seconds(slow, RATE) == pytest.approx(3.25, abs=0.02)
    assert speech_seconds(np.zeros(RATE, dtype=np.float32), RATE) == 0.0


def _row(voice: str, pitch: int, f0):
    return {"reply_voice": voice, "reply_pitch": pitch, "f0": f0}


def test_reference_voices_are_apart_in_pitch():
    rows = [
        _row("en+f5", 40, 190.0), _row("gb+f5", 40, 182.0),  # same pitch, other voice: indistinguishable
        _row("en+m6", 40, 118.0), _row("en+m6", 60, 150.0), _row("gb+m6", 30, 88.0), _row("gb+f5", 70, 240.0),
        _row("en+f5", 50, None),  # unvoiced clip
    ]
    chosen = distinct_voice_references(rows, lambda row: row["f0"], count=4, min_ratio=1.2)
    f0s = sorted(row["f0"] for row in chosen.values())
    assert len(chosen) == 4
    assert all(high / low >= 1.2 for low, high in zip(f0s, f0s[1:]))
    # Every voice is used once before any voice a second time.
    assert {row["reply_voice"] for row in chosen.values()} == {"en+f5", "en+m6", "gb+m6", "gb+f5"}
    assert "gb+f5 pitch 40" not in chosen


def test_reference_voices_when_too_few_are_distinct():
    rows = [_row("a", 40, 100.0), _row("b", 40, 105.0), _row("c", 40, None)]
    chosen = distinct_voice_references(rows, lambda row: row["f0"], count=4)
    assert list(chosen) == ["a pitch 40"]
