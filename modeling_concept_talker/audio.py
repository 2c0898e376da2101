"""Audio preparation shared by the processor, generation and the data pipeline.

Everything here works on mono float32 waveforms in [-1, 1]. Errors say what was wrong and what to pass instead,
so that bad audio never reaches the codec as an obscure shape or NaN error.

Loudness: a whole clip whose float samples peak above `MAX_PEAK` (2.0, far outside [-1, 1]: typically int16 values
passed as floats) is scaled down to peak 1.0 with a warning (`prepare_audio`); a streamed piece cannot be scaled the
same way as the rest of its turn, so `SpokenTurn.feed` refuses one. A clip whose peak is below `SILENCE_PEAK`
(-60 dBFS) holds no speech (`is_silent`).
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache

import numpy as np
import torch

MAX_CHANNELS = 8
# Float samples are meant to lie in [-1, 1]; codecs and resampling overshoot a little. A peak above this is a clip in
# the wrong units (int16 values as floats: peaks in the thousands), which the codec would clip into noise.
MAX_PEAK = 2.0
# A clip whose loudest sample is below -60 dBFS holds no speech.
SILENCE_PEAK = 1e-3


def check_sampling_rate(sampling_rate, name: str = "sampling_rate") -> int:
    """Return `sampling_rate` as a positive int (Hz), or raise a `ValueError`/`TypeError` that says what to pass."""
    if sampling_rate is None:
        raise ValueError(f"{name} is required: pass the rate of your audio in Hz, e.g. {name}=16000.")
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, numbers.Real):
        raise TypeError(
            f"{name} must be a number of samples per second (an int such as 16000), got "
            f"{type(sampling_rate).__name__} {sampling_rate!r}."
        )
    if isinstance(sampling_rate, torch.Tensor | np.ndarray):
        sampling_rate = sampling_rate.item()
    if not math.isfinite(sampling_rate) or sampling_rate != int(sampling_rate) or sampling_rate <= 0:
        raise ValueError(f"{name} must be a positive whole number of Hz, got {sampling_rate!r}.")
    return int(sampling_rate)


def to_mono_float(audio, name: str = "audio") -> torch.Tensor:
    """Convert one clip to a mono float32 tensor `[samples]`.

    Accepts a numpy array, a torch tensor or a list, shaped `[samples]`, `[channels, samples]` or
    `[samples, channels]` (the axis with at most 8 entries is taken as channels); channels are averaged.
    Integer PCM (int16, int32) is scaled to [-1, 1].
    """
    if isinstance(audio, list | tuple):
        audio = np.asarray(audio, dtype=np.float32)
    if isinstance(audio, np.ndarray):
        if audio.dtype == np.int16:
            audio = audio.astype(np.float32) / 32768.0
        elif audio.dtype == np.int32:
            audio = audio.astype(np.float32) / 2147483648.0
        elif not np.issubdtype(audio.dtype, np.floating):
            raise TypeError(f"{name} has dtype {audio.dtype}; pass float samples in [-1, 1] or int16/int32 PCM.")
        audio = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    elif isinstance(audio, torch.Tensor):
        if audio.dtype == torch.int16:
            audio = audio.float() / 32768.0
        elif audio.dtype == torch.int32:
            audio = audio.float() / 2147483648.0
        elif not audio.is_floating_point():
            raise TypeError(f"{name} has dtype {audio.dtype}; pass float samples in [-1, 1] or int16/int32 PCM.")
        audio = audio.detach().to(device="cpu", dtype=torch.float32)
    else:
        raise TypeError(f"{name} must be a numpy array, a torch tensor or a list of samples, got {type(audio).__name__}.")

    if audio.ndim == 2:
        channels_first = audio.shape[0] <= MAX_CHANNELS and audio.shape[0] <= audio.shape[1]
        channels_last = audio.shape[1] <= MAX_CHANNELS and audio.shape[1] < audio.shape[0]
        if channels_first:
            audio = audio.mean(dim=0)
        elif channels_last:
            audio = audio.mean(dim=1)
        else:
            raise ValueError(
                f"{name} has shape {tuple(audio.shape)}: expected [samples], [channels, samples] or "
                f"[samples, channels] with at most {MAX_CHANNELS} channels."
            )
    elif audio.ndim != 1:
        raise ValueError(
            f"{name} has shape {tuple(audio.shape)}: pass one clip as [samples] or [channels, samples]; "
            "pass several clips as a list."
        )
    if audio.numel() == 0:
        raise ValueError(f"{name} is empty (0 samples): pass at least one codec frame of audio.")
    if not torch.isfinite(audio).all():
        bad = int((~torch.isfinite(audio)).sum())
        raise ValueError(f"{name} has {bad} NaN or infinite samples: clean the recording (e.g. np.nan_to_num) first.")
    return audio.contiguous()


@lru_cache(maxsize=32)
def _resampling_kernel(orig: int, new: int, zero_crossings: int, rolloff: float) -> tuple[torch.Tensor, int]:
    """Polyphase windowed-sinc kernel `[new, 1, taps]` for rates reduced by their gcd, and its half width."""
    cutoff = 0.5 * rolloff * min(orig, new) / orig  # cycles per input sample
    half_width = math.ceil(zero_crossings / (2 * cutoff))
    offsets = torch.arange(-half_width, half_width + orig, dtype=torch.float64)  # input-sample offsets j
    phases = torch.arange(new, dtype=torch.float64)[:, None] * orig / new  # fractional position of each output
    x = phases - offsets[None, :]
    window = torch.where(x.abs() <= half_width, torch.cos(math.pi * x / (2 * half_width)) ** 2, torch.zeros(()))
    kernel = 2 * cutoff * torch.sinc(2 * cutoff * x) * window
    return kernel.to(torch.float32)[:, None, :], half_width


def resample(wave: torch.Tensor, orig_sampling_rate: int, new_sampling_rate: int) -> torch.Tensor:
    """Band-limited resampling of `wave` `[..., samples]` from `orig_sampling_rate` to `new_sampling_rate` Hz.

    A polyphase windowed-sinc filter (Hann window, 16 zero crossings, cut-off at 0.97 of the lower Nyquist).
    Output length is `ceil(samples * new / orig)`.
    """
    if orig_sampling_rate == new_sampling_rate:
        return wave
    g = math.gcd(orig_sampling_rate, new_sampling_rate)
    orig, new = orig_sampling_rate // g, new_sampling_rate // g
    kernel, half_width = _resampling_kernel(orig, new, 16, 0.97)
    shape = wave.shape
    flat = wave.reshape(-1, 1, shape[-1]).to(torch.float32)
    # Output q*new + p reads input samples q*orig + j for j in [-half_width, half_width + orig).
    padded = torch.nn.functional.pad(flat, (half_width, half_width + orig))
    # conv1d correlates: tap i of phase p multiplies input offset j = i - half_width.
    out = torch.nn.functional.conv1d(padded, kernel, stride=orig)  # [N, new, Q]
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)
    length = math.ceil(shape[-1] * new / orig)
    return out[:, :length].reshape(*shape[:-1], length).to(wave.dtype)


def peak(wave: torch.Tensor) -> float:
    """The largest absolute sample of `wave` (linear, 1.0 = full scale)."""
    return float(wave.abs().max()) if wave.numel() else 0.0


def is_silent(wave: torch.Tensor) -> bool:
    """True when `wave` `[samples]` holds no speech: its peak is below `SILENCE_PEAK` (-60 dBFS)."""
    return peak(wave) < SILENCE_PEAK


def question_too_long_message(name: str, seconds: float, max_seconds: float) -> str:
    """The error for a question longer than the model takes, naming the setting that limits it."""
    return (
        f"{name} is {seconds:.1f} s long, longer than {max_seconds:g} s: this model takes spoken questions of at most "
        f"{max_seconds:g} s (the "
        "question limit is the checkpoint's max_audio_seconds, in its config and processor): split the recording "
        f"into shorter turns, or load both with a higher limit: from_pretrained(path, max_audio_seconds={math.ceil(seconds)}) "
        f"and ConceptTalkerProcessor.from_pretrained(path, max_audio_seconds={math.ceil(seconds)}) (the model was "
        "trained on shorter questions). The generation setting max_audio_seconds (chat's --max-reply-seconds) "
        "limits the reply, not the question."
    )


def prepare_audio(
    audio, sampling_rate, target_sampling_rate: int, max_seconds: float | None = None, name: str = "audio"
) -> torch.Tensor:
    """One clip to mono float32 `[samples]` at `target_sampling_rate` Hz, with every check of this module.

    A clip whose peak is above `MAX_PEAK` is scaled to peak 1.0, with a warning (see the module docstring).
    """
    import warnings

    sampling_rate = check_sampling_rate(sampling_rate)
    wave = to_mono_float(audio, name=name)
    if max_seconds is not None and wave.numel() / sampling_rate > max_seconds + 1e-9:
        raise ValueError(question_too_long_message(name, wave.numel() / sampling_rate, max_seconds))
    loudest = peak(wave)
    if loudest > MAX_PEAK:
        warnings.warn(
            f"{name} has samples up to {loudest:g}, far outside [-1, 1] (int16 values passed as floats?): it was "
            "scaled to peak 1.0. Pass float samples in [-1, 1], or the int16 array itself.",
            stacklevel=3,
        )
        wave = wave / loudest
    return resample(wave, sampling_rate, target_sampling_rate)


def count_frames(num_samples: int, hop_length: int) -> int:
    """Codec frames for `num_samples` of audio: `ceil(num_samples / hop_length)` (the last frame is padded)."""
    return -(-int(num_samples) // hop_length)


def count_concept_slots(num_frames: int, window_frames: int, concepts_per_window: int) -> int:
    """Concept tokens the adapter makes from `num_frames` codec frames: one group per (possibly partial) window."""
    return -(-int(num_frames) // window_frames) * concepts_per_window


def load_audio(path: str) -> tuple[np.ndarray, int]:
    """Read an audio file (WAV, FLAC, OGG) with `soundfile`: float32 `[samples]` or `[samples, channels]`, rate in Hz."""
    try:
        import soundfile
    except ImportError as err:  # pragma: no cover - soundfile is a dependency of the package
        raise ImportError("Reading audio files needs soundfile: pip install soundfile") from err
    try:
        data, sampling_rate = soundfile.read(path, dtype="float32", always_2d=False)
    except RuntimeError as err:
        raise ValueError(f"Could not read {path!r} as audio ({err}); pass a WAV or FLAC file.") from err
    return data, int(sampling_rate)


def apply_umask(path: str) -> None:
    """Give `path` the permissions a newly created file gets (0666 less the user's umask): temporary files are
    created 0600, which would leave a renamed reply unreadable to the user's group where the umask allows it."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_audio(path: str, wave, sampling_rate: int) -> None:
    """Write mono float audio `[samples]` to a 16-bit WAV file, atomically (a temporary file, then a rename), with
    the permissions of any new file (the user's umask)."""
    import os
    import tempfile

    import soundfile

    wave = np.asarray(wave.detach().cpu() if isinstance(wave, torch.Tensor) else wave, dtype=np.float32)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".wav", dir=directory)
    os.close(fd)
    try:
        soundfile.write(tmp, np.clip(wave, -1.0, 1.0), sampling_rate, subtype="PCM_16", format="WAV")
        apply_umask(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class StreamingResampler:
    """`resample` for audio arriving in pieces: `push` returns the output samples that are final, `flush` the rest.

    The pieces joined give the samples of `resample` on the whole recording (up to float rounding).
    """

    def __init__(self, orig_sampling_rate: int, new_sampling_rate: int):
        g = math.gcd(orig_sampling_rate, new_sampling_rate)
        self.orig, self.new = orig_sampling_rate // g, new_sampling_rate // g
        self.identity = self.orig == self.new
        if not self.identity:
            self.kernel, self.half_width = _resampling_kernel(self.orig, self.new, 16, 0.97)
        # Input padded on the left as `resample` pads it; blocks of `orig` inputs make `new` outputs.
        self.buffer = torch.zeros(0 if self.identity else self.half_width)
        self.samples_in = 0
        self.samples_out = 0

    def _blocks(self, final: bool) -> torch.Tensor:
        taps = self.kernel.shape[-1]
        if self.buffer.numel() < taps:
            return torch.zeros(0)
        count = (self.buffer.numel() - taps) // self.orig + 1
        used = self.buffer[: (count - 1) * self.orig + taps]
        out = torch.nn.functional.conv1d(used[None, None], self.kernel, stride=self.orig)[0].T.reshape(-1)
        self.buffer = self.buffer[count * self.orig :]
        if final:
            out = out[: max(0, math.ceil(self.samples_in * self.new / self.orig) - self.samples_out)]
        self.samples_out += out.numel()
        return out

    def push(self, wave: torch.Tensor) -> torch.Tensor:
        """Mono float32 `[samples]` at the original rate -> the output samples now final."""
        self.samples_in += wave.numel()
        if self.identity:
            return wave
        self.buffer = torch.cat([self.buffer, wave.to(torch.float32)])
        return self._blocks(final=False)

    def flush(self) -> torch.Tensor:
        """End of the recording: the remaining output samples (the right edge zero-padded as `resample` does)."""
        if self.identity:
            return torch.zeros(0)
        self.buffer = torch.cat([self.buffer, torch.zeros(self.half_width + self.orig)])
        return self._blocks(final=True)
