"""The ear: a pretrained speech encoder (Whisper's) that turns the user's audio into frames the concept adapter reads.

    audio [clips, samples] at 16 kHz
      -> padded with silence to whole adapter windows (1 s)
      -> log-mel spectrogram (Whisper's: 80 bins, 10 ms hop, normalised per clip)    [clips, 80, 100/s]
      -> Whisper's encoder, frozen, on the clip's own length                           [clips, 50/s, d_model]

Whisper's encoder was trained on 30 s of features and transformers' `WhisperEncoder.forward` insists on them. Here it
runs on the clip's length instead, with its position table cut to that length (as Ultravox does): a 3 s question
costs a tenth of a 30 s pass, and the encoder's transcripts of the cut features are as good (see
`tests/test_ear.py` and the README).

Two ways to hear a question, by `ConceptTalkerConfig.ear_context_windows`:
- `0`: the whole clip at once, when the user has finished speaking (each window's frames see the whole question);
- `n > 0`: window by window as the user speaks, each window encoded with the `n` windows before it as left context
  and its own frames kept, so a window's frames never depend on later audio: the ear streams, and the frames made
  in training are the frames made live.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

# Where a Whisper model is found on this machine when a checkpoint names a Hub id: $CONCEPT_TALKER_WHISPER_DIR, else
# this project's offline copy of Whisper base next to a source checkout (../shared/assets/whisper-base).
WHISPER_DIR_VARIABLE = "CONCEPT_TALKER_WHISPER_DIR"
SHARED_WHISPER_DIRS = {
    "openai/whisper-base": os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared", "assets",
        "whisper-base"),
}


def local_whisper(name_or_path: str) -> str:
    """Where to read the Whisper model `name_or_path` from: a folder as given; for a Hub id,
    `$CONCEPT_TALKER_WHISPER_DIR` where set, else the shared offline copy of that model where it exists, else the id
    (the Hub, or its cache)."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.environ.get(WHISPER_DIR_VARIABLE):
        return os.environ[WHISPER_DIR_VARIABLE]
    shared = SHARED_WHISPER_DIRS.get(name_or_path)
    if shared and os.path.isfile(os.path.join(shared, "config.json")):
        return shared
    return name_or_path


class WhisperEar(nn.Module):
    """Whisper's encoder as the ear (weights frozen; built from a `WhisperConfig`, loaded by `from_pretrained_parts`).

    Args:
        config: a `WhisperConfig` (its encoder fields are used).
        window_seconds: the concept adapter's window; clips are padded with silence to whole windows.
        context_windows: 0 to encode whole clips, or the number of earlier windows each window is encoded with
            (streaming).
    """

    sampling_rate = 16000
    mel_hop_length = 160  # samples per log-mel frame (10 ms); the encoder halves the frame rate

    def __init__(self, config, window_seconds: float = 1.0, context_windows: int = 0):
        super().__init__()
        from transformers import WhisperFeatureExtractor
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        self.config = config
        self.encoder = WhisperEncoder(config)
        self.window_samples = int(round(window_seconds * self.sampling_rate))
        self.context_windows = int(context_windows)
        self.n_fft = WhisperFeatureExtractor(feature_size=config.num_mel_bins).n_fft
        mel_filters, stft_window = self.compute_buffers()
        self.register_buffer("mel_filters", mel_filters, persistent=False)
        self.register_buffer("stft_window", stft_window, persistent=False)
        self.requires_grad_(False)

    def compute_buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Whisper's mel filter bank `[n_fft // 2 + 1, mel bins]` and STFT window `[n_fft]` (not saved: rebuilt)."""
        from transformers import WhisperFeatureExtractor

        extractor = WhisperFeatureExtractor(feature_size=self.config.num_mel_bins, sampling_rate=self.sampling_rate,
                                            hop_length=self.mel_hop_length)
        return torch.tensor(extractor.mel_filters, dtype=torch.float32), torch.hann_window(extractor.n_fft)

    @property
    def frame_rate(self) -> float:
        """Encoder frames per second (50 for Whisper)."""
        return self.sampling_rate / (self.mel_hop_length * self.encoder.conv2.stride[0])

    @property
    def hop_length(self) -> int:
        """Audio samples per encoder frame (320)."""
        return self.mel_hop_length * self.encoder.conv2.stride[0]

    @property
    def feature_size(self) -> int:
        """Width of the frames it gives (Whisper base: 512)."""
        return self.config.d_model

    @property
    def max_seconds(self) -> float:
        return self.config.max_source_positions / self.frame_rate

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: dropout stays off

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """One clip `[samples]` (whole windows) -> Whisper's normalised log-mel `[mel bins, samples / 160]`."""
        spectrum = torch.stft(wave.float(), self.n_fft, self.mel_hop_length, window=self.stft_window.float(),
                              return_complex=True)
        power = spectrum[..., :-1].abs() ** 2
        mel = (self.mel_filters.float().T @ power).clamp(min=1e-10).log10()
        mel = torch.maximum(mel, mel.max() - 8.0)
        return (mel + 4.0) / 4.0

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """One clip `[samples]` -> encoder frames `[samples / 320, d_model]`, positions cut to its length."""
        encoder = self.encoder
        mel = self.log_mel(wave)[None].to(encoder.conv1.weight.dtype)
        hidden = F.gelu(encoder.conv1(mel))
        hidden = F.gelu(encoder.conv2(hidden)).transpose(1, 2)
        if hidden.shape[1] > encoder.embed_positions.weight.shape[0]:
            raise ValueError(
                f"The ear hears at most {self.max_seconds:g} s at once; this clip is "
                f"{wave.numel() / self.sampling_rate:.1f} s: split it, or stream it with ear_context_windows > 0."
            )
        hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
        for layer in encoder.layers:
            hidden = layer(hidden, None)
        return encoder.layer_norm(hidden)[0]

    def window_frames(self, wave: torch.Tensor, first_window: int = 0) -> torch.Tensor:
        """Frames of windows `first_window, ...` of one clip `[samples]` (whole windows), each encoded with its
        `context_windows` earlier windows (or, with 0, the whole clip at once) -> `[windows * 50, d_model]`."""
        windows = wave.numel() // self.window_samples
        if not self.context_windows:
            return self.encode(wave)[first_window * self.window_samples // self.hop_length :]
        per_window = self.window_samples // self.hop_length
        frames = []
        for window in range(first_window, windows):
            start = max(0, window - self.context_windows) * self.window_samples
            encoded = self.encode(wave[start : (window + 1) * self.window_samples])
            frames.append(encoded[-per_window:])
        return torch.cat(frames) if frames else wave.new_zeros(0, self.feature_size)

    @torch.no_grad()
    def forward(self, input_values: torch.Tensor, input_values_mask: torch.Tensor | None = None):
        """Clips `[clips, samples]` at 16 kHz (right-padded; `input_values_mask` marks real samples) -> frames
        `[clips, frames, d_model]` (each clip encoded alone, padded with silence to whole windows) and their mask
        `[clips, frames]` (True for frames of the clip's windows)."""
        lengths = (torch.full((input_values.shape[0],), input_values.shape[-1], device=input_values.device)
                   if input_values_mask is None else input_values_mask.sum(-1))
        clips = []
        for wave, length in zip(input_values, lengths.tolist()):
            windows = max(1, -(-int(length) // self.window_samples))
            padded = F.pad(wave[: int(length)], (0, windows * self.window_samples - int(length)))
            clips.append(self.window_frames(padded))
        longest = max(c.shape[0] for c in clips)
        frames = input_values.new_zeros(len(clips), longest, self.feature_size, dtype=clips[0].dtype)
        mask = torch.zeros(len(clips), longest, dtype=torch.bool, device=input_values.device)
        for i, clip in enumerate(clips):
            frames[i, : clip.shape[0]] = clip
            mask[i, : clip.shape[0]] = True
        return frames, mask


class EarStream:
    """The ear fed in pieces while the user speaks (`SpokenTurn`): `push` audio (16 kHz) and get the frames of the
    windows that are ready, `flush` at the end of speech for the rest. With `context_windows` > 0 a window's frames
    come as soon as the window is complete; with 0 the whole question is encoded at `flush`. Either way the frames are
    the ones `WhisperEar.forward` makes from the whole recording."""

    def __init__(self, ear: WhisperEar):
        self.ear = ear
        self.audio = torch.zeros(0)
        self.windows_done = 0

    @torch.no_grad()
    def push(self, wave: torch.Tensor) -> torch.Tensor:
        """`[samples]` at 16 kHz -> frames `[n, d_model]` of the windows completed (none while encoding whole)."""
        self.audio = torch.cat([self.audio, wave.to(self.audio.dtype)])
        complete = self.audio.numel() // self.ear.window_samples
        if not self.ear.context_windows or complete <= self.windows_done:
            return self.audio.new_zeros(0, self.ear.feature_size)
        frames = self.ear.window_frames(self.audio[: complete * self.ear.window_samples], self.windows_done)
        self.windows_done = complete
        return frames

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """The end of speech: frames of every window not yet given (the last one padded with silence)."""
        windows = max(1, -(-self.audio.numel() // self.ear.window_samples))
        padded = F.pad(self.audio, (0, windows * self.ear.window_samples - self.audio.numel()))
        frames = self.ear.window_frames(padded, self.windows_done)
        self.windows_done = windows
        return frames


__all__ = ["EarStream", "WhisperEar"]
