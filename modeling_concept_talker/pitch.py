"""The pitch (F0) of speech, for the talker's reference voice and for the tutor metrics.

`estimate_f0` is de Cheveigné & Kawahara's YIN on 40 ms frames (20 ms hop), computed for all frames at once: the
difference function comes from the frames' energies and an FFT cross-correlation, so a 5 s clip takes
milliseconds. `voice_pitch_features` turns a clip's median F0 into the two numbers the talker reads.
"""

from __future__ import annotations

import math

import numpy as np
import torch

PITCH_REFERENCE_HZ = 150.0  # log2(F0 / this) is the pitch feature: 0 at 150 Hz, -1 an octave below, +1 above
VOICE_PITCH_FEATURES = 2  # a voiced flag and log2(F0 / PITCH_REFERENCE_HZ)


def estimate_f0(audio, sampling_rate: int, fmin: float = 60.0, fmax: float = 400.0, frame_seconds: float = 0.04,
                threshold: float = 0.15) -> np.ndarray:
    """Fundamental frequency (Hz) of each voiced frame of mono `audio` `[samples]` (unvoiced frames left out).

    The cumulative-mean-normalised difference function is computed per frame; the first lag below `threshold`
    (refined to its local minimum, then parabolically interpolated) gives the period. Frames quieter than 30 dB
    below the clip's loudest are not voiced.
    """
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    frame = int(frame_seconds * sampling_rate)
    hop = frame // 2
    min_lag, max_lag = int(sampling_rate / fmax), int(sampling_rate / fmin)
    if len(audio) < frame + max_lag:
        return np.zeros(0)
    starts = np.arange(0, len(audio) - frame - max_lag, hop)
    if not len(starts):
        return np.zeros(0)
    windows = audio[starts[:, None] + np.arange(frame)]  # [frames, frame]
    energies = np.sqrt(np.mean(windows**2, axis=1))
    loud = energies > energies.max() * 10 ** (-30 / 20)
    starts, windows = starts[loud], windows[loud]
    if not len(starts):
        return np.zeros(0)
    lags = np.arange(max_lag + 1)
    segments = audio[starts[:, None] + np.arange(frame + max_lag)]  # [frames, frame + max_lag]
    # d(lag) = sum x^2 + sum y_lag^2 - 2 sum x y_lag, with y_lag the frame shifted by lag.
    size = 1 << math.ceil(math.log2(frame + max_lag + frame))
    cross = np.fft.irfft(np.fft.rfft(segments, size) * np.conj(np.fft.rfft(windows, size)), size)[:, : max_lag + 1]
    power = np.concatenate([np.zeros((len(starts), 1)), np.cumsum(segments**2, axis=1)], axis=1)
    shifted_energy = power[:, lags + frame] - power[:, lags]
    diff = np.maximum(shifted_energy[:, :1] + shifted_energy - 2 * cross, 0.0)
    normalised = np.ones_like(diff)
    cumulative = np.maximum(np.cumsum(diff[:, 1:], axis=1), 1e-12)
    normalised[:, 1:] = diff[:, 1:] * lags[1:] / cumulative
    below = normalised[:, min_lag:] < threshold
    voiced = below.any(axis=1)
    first = min_lag + below.argmax(axis=1)
    # Walk down to the local minimum: the first lag >= first whose successor is not lower.
    rising = np.ones_like(normalised, dtype=bool)
    rising[:, :-1] = normalised[:, 1:] >= normalised[:, :-1]
    rising &= lags[None] >= first[:, None]
    lag = rising.argmax(axis=1)
    rows = np.arange(len(lag))
    inner = (lag >= 1) & (lag < max_lag)
    a = normalised[rows, np.maximum(lag - 1, 0)]
    b = normalised[rows, lag]
    c = normalised[rows, np.minimum(lag + 1, max_lag)]
    curve = a - 2 * b + c
    shift = np.where(inner & (curve != 0), 0.5 * (a - c) / np.where(curve != 0, curve, 1.0), 0.0)
    period = lag + np.clip(shift, -1, 1)
    return (sampling_rate / period)[voiced]


def median_f0(audio, sampling_rate: int) -> float | None:
    """Median F0 (Hz) of the voiced frames of mono `audio`, or None with fewer than 3 voiced frames."""
    values = estimate_f0(audio, sampling_rate)
    return float(np.median(values)) if len(values) >= 3 else None


def voice_pitch_features(f0_hz: torch.Tensor) -> torch.Tensor:
    """Median F0 per clip `[batch]` (Hz; 0 or NaN where the clip has no voiced frames) -> `[batch, 2]`: a voiced
    flag, and log2(F0 / 150 Hz) (0 where unvoiced)."""
    f0_hz = torch.nan_to_num(f0_hz.float(), nan=0.0)
    voiced = f0_hz > 0
    octaves = torch.where(voiced, torch.log2(f0_hz.clamp(min=1.0) / PITCH_REFERENCE_HZ), 0.0)
    return torch.stack([voiced.float(), octaves], dim=-1)


def clips_median_f0(waves: torch.Tensor, lengths: torch.Tensor | None, sampling_rate: int) -> torch.Tensor:
    """Median F0 (Hz) of each clip, `[batch, samples]` (`lengths` real samples per row) -> `[batch]`, 0 unvoiced."""
    values = []
    for row in range(waves.shape[0]):
        wave = waves[row] if lengths is None else waves[row, : int(lengths[row])]
        f0 = median_f0(wave.detach().float().cpu().numpy(), sampling_rate)
        values.append(0.0 if f0 is None else f0)
    return torch.tensor(values, dtype=torch.float32)
