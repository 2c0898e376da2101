"""One interface over the neural audio codecs Concept-Talker can speak through.

A codec turns mono audio at its sampling rate into discrete codes `[batch, codebooks, frames]` and back.
The rest of the package sees only `AudioCodec`: sampling rate (Hz), frame rate (Hz), hop length (samples per
frame), number of codebooks used, codebook size, and the width of the quantised latent that the concept adapter
reads. Codecs are frozen: they never train and always run in eval mode.

Backends:
- `EncodecCodec`: transformers' `EncodecModel` (24 kHz, 75 Hz, 1024 entries per codebook). Causal, so it streams
  exactly in both directions: `streaming_encoder()` / `streaming_decoder()` carry convolution, transposed
  convolution and LSTM state across chunks and give the samples and codes of a one-shot pass.
- `MimiCodec`: transformers' `MimiModel` (24 kHz, 12.5 Hz, 2048 entries). Streams by re-decoding with left context.
- `LyraCodec` (in `lyra.py`): Lyra v2 SoundStream, TFLite models run with `ai-edge-litert` (16 kHz, 50 Hz, 16 entries).

Each backend registers itself under its config's `model_type` (`@register_codec`); `build_codec` looks the type up, so
this module knows no backend outside it (`lyra.py` imports this one, never the other way round).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .audio import count_frames

# codec config `model_type` -> the AudioCodec subclass that runs it (`register_codec`).
CODECS: dict[str, type] = {}


def register_codec(model_type: str):
    """Class decorator: `build_codec` builds this `AudioCodec` for codec configs of `model_type`."""

    def register(codec_class: type) -> type:
        CODECS[model_type] = codec_class
        return codec_class

    return register


class AudioCodec(nn.Module):
    """Interface of a frozen neural audio codec. Subclasses set the attributes and implement the methods."""

    sampling_rate: int  # Hz
    hop_length: int  # samples per frame
    num_codebooks: int  # residual codebooks used
    codebook_size: int  # entries per codebook
    latent_dim: int  # width of the quantised latent (`embed_codes`)

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.sampling_rate / self.hop_length

    def train(self, mode: bool = True):
        # A codec is frozen: it stays in eval mode whatever the model around it does.
        return super().train(False)

    def num_frames(self, num_samples: int) -> int:
        return count_frames(num_samples, self.hop_length)

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio `[batch, samples]` (float, at `sampling_rate`) -> codes `[batch, codebooks, ceil(samples / hop)]`.

        Clips shorter than the batch are zero-padded on the right; a causal codec gives their valid frames the
        same codes as encoding them alone.
        """
        raise NotImplementedError

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `[batch, codebooks, frames]` -> quantised latents `[batch, frames, latent_dim]` (sum over codebooks)."""
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `[batch, codebooks, frames]` -> audio `[batch, frames * hop_length]`, float32."""
        raise NotImplementedError

    def streaming_encoder(self, batch_size: int = 1) -> StreamingCodecEncoder:
        raise NotImplementedError(f"{type(self).__name__} cannot encode in a stream.")

    def streaming_decoder(self, batch_size: int = 1) -> StreamingCodecDecoder:
        raise NotImplementedError(f"{type(self).__name__} cannot decode in a stream.")

    def check_codes(self, codes: torch.Tensor, name: str = "codes") -> torch.Tensor:
        """Raise a clear error unless `codes` is `[batch, num_codebooks, frames]` of ints in `[0, codebook_size)`."""
        if codes.ndim != 3 or codes.shape[1] != self.num_codebooks:
            raise ValueError(
                f"{name} must be [batch, {self.num_codebooks} codebooks, frames], got shape {tuple(codes.shape)}: "
                f"the codec is set to use {self.num_codebooks} codebooks."
            )
        if codes.is_floating_point():
            raise TypeError(f"{name} must hold integer codebook indices, got {codes.dtype}.")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"{name} holds values from {int(codes.min())} to {int(codes.max())}, outside this codec's codebook of "
                f"{self.codebook_size} entries [0, {self.codebook_size - 1}]: were they made by another codec or "
                "with another number of codebooks?"
            )
        return codes.long()


class StreamingCodecEncoder:
    """Feed audio pieces `[batch, samples]` with `push`; get the codes `[batch, codebooks, new_frames]` that are
    complete. `flush()` zero-pads the last partial frame and returns its codes."""

    def push(self, audio: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def flush(self) -> torch.Tensor:
        raise NotImplementedError


class StreamingCodecDecoder:
    """Feed codes `[batch, codebooks, frames]` with `push`; get the audio `[batch, samples]` that is final."""

    def push(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def flush(self) -> torch.Tensor:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------------
# EnCodec
# ---------------------------------------------------------------------------------------------------------------


@register_codec("encodec")
class EncodecCodec(AudioCodec):
    """transformers' `EncodecModel`, using its first `num_codebooks` residual codebooks."""

    def __init__(self, codec_config, num_codebooks: int):
        super().__init__()
        from transformers import EncodecModel

        self.model = EncodecModel(codec_config)
        self.sampling_rate = int(codec_config.sampling_rate)
        self.hop_length = int(math.prod(codec_config.upsampling_ratios))
        self.num_codebooks = num_codebooks
        self.codebook_size = int(codec_config.codebook_size)
        self.latent_dim = int(codec_config.codebook_dim)
        if codec_config.normalize or codec_config.chunk_length_s is not None:
            raise ValueError(
                "Concept-Talker streams the codec, so it needs the causal EnCodec without loudness normalisation "
                "or chunking (the 24 kHz model, normalize=False, chunk_length_s=None)."
            )
        self._init_random_codebooks()
        self.requires_grad_(False)

    @torch.no_grad()
    def _init_random_codebooks(self) -> None:
        """Make a randomly initialised EnCodec's codes follow its input.

        A freshly built `EncodecModel` expects pretrained weights: its codebooks are zero and its encoder's output is
        dominated by its biases, so every frame would get the same code. Here the encoder's biases are zeroed and each
        residual codebook is spread at the scale of what it quantises (measured on noise). Pretrained weights, loaded
        afterwards, replace all of it. Skipped on the meta device (`from_pretrained` loads real weights).
        """
        if any(p.is_meta for p in self.model.parameters()):
            return
        for name, parameter in self.model.encoder.named_parameters():
            if "bias" in name:
                parameter.zero_()
        residual = self.model.encoder(0.1 * torch.randn(1, 1, 50 * self.hop_length))
        for layer in self.model.quantizer.layers:
            codebook = layer.codebook
            codebook.embed.copy_(torch.randn_like(codebook.embed) * residual.std())
            residual = residual - layer.decode(layer.encode(residual))

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        frames = self.num_frames(audio.shape[-1])
        audio = nn.functional.pad(audio, (0, frames * self.hop_length - audio.shape[-1]))
        return self.quantize(self.model.encoder(audio[:, None, :].to(self._dtype)))

    def quantize(self, latents: torch.Tensor) -> torch.Tensor:
        """Encoder latents `[batch, dim, frames]` -> codes `[batch, codebooks, frames]` (residual VQ, first K codebooks)."""
        residual, codes = latents, []
        for layer in self.model.quantizer.layers[: self.num_codebooks]:
            indices = layer.encode(residual)
            residual = residual - layer.decode(indices)
            codes.append(indices)
        return torch.stack(codes, dim=1)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        latents = self.model.quantizer.decode(codes.transpose(0, 1))  # [batch, dim, frames]
        return latents.transpose(1, 2)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        latents = self.model.quantizer.decode(codes.transpose(0, 1))
        return self.model.decoder(latents.to(self._dtype))[:, 0].float()

    @property
    def _dtype(self) -> torch.dtype:
        return self.model.decoder.layers[0].conv.bias.dtype

    def streaming_encoder(self, batch_size: int = 1) -> StreamingCodecEncoder:
        return _EncodecStreamingEncoder(self, batch_size)

    def streaming_decoder(self, batch_size: int = 1) -> StreamingCodecDecoder:
        return _EncodecStreamingDecoder(self, batch_size)


class _SeanetStream:
    """State of a SEANet stack (EnCodec's encoder or decoder) run chunk by chunk.

    Each causal convolution keeps the input it has not consumed yet (at least its receptive field minus its stride);
    each transposed convolution keeps the tail of its output that overlaps the next chunk; each LSTM keeps (h, c).
    The first chunk is left-padded exactly as the one-shot pass pads (reflection), so a stream gives the outputs of
    a one-shot pass over the concatenated input, up to float rounding.
    """

    def __init__(self, stack: nn.Module):
        self.stack = stack
        self.state: dict[int, object] = {}

    def __call__(self, hidden: torch.Tensor, final: bool = False) -> torch.Tensor:
        for layer in self.stack.layers:
            hidden = self._layer(layer, hidden, final)
        return hidden

    def _layer(self, layer: nn.Module, hidden: torch.Tensor, final: bool) -> torch.Tensor:
        from transformers.models.encodec.modeling_encodec import (
            EncodecConv1d,
            EncodecConvTranspose1d,
            EncodecLSTM,
            EncodecResnetBlock,
        )

        if isinstance(layer, EncodecConv1d):
            return self._conv(layer, hidden, final)
        if isinstance(layer, EncodecConvTranspose1d):
            return self._conv_transpose(layer, hidden, final)
        if isinstance(layer, EncodecLSTM):
            if hidden.shape[-1] == 0:
                return hidden
            sequence = hidden.permute(2, 0, 1)
            output, state = layer.lstm(sequence, self.state.get(id(layer)))
            self.state[id(layer)] = state
            return (output + sequence).permute(1, 2, 0)
        if isinstance(layer, EncodecResnetBlock):
            residual = self._layer(layer.shortcut, hidden, final)
            for sub in layer.block:
                hidden = self._layer(sub, hidden, final)
            # The block may hold samples back (waiting for its first left context); hold the shortcut back too.
            pending = self.state.get(id(layer))
            if pending is not None:
                residual = torch.cat([pending, residual], dim=-1)
            self.state[id(layer)] = residual[..., hidden.shape[-1] :]
            return residual[..., : hidden.shape[-1]] + hidden
        if isinstance(layer, nn.ELU | nn.Identity):
            return layer(hidden)
        raise TypeError(f"No streaming rule for {type(layer).__name__}")

    def _conv(self, layer, hidden: torch.Tensor, final: bool) -> torch.Tensor:
        stride = layer.conv.stride[0]
        kernel = (layer.conv.kernel_size[0] - 1) * layer.conv.dilation[0] + 1
        pad = kernel - stride
        key = id(layer)
        started, buffer = self.state.get(key, (False, hidden[..., :0]))
        buffer = torch.cat([buffer, hidden], dim=-1)
        nothing = buffer.new_zeros(buffer.shape[0], layer.conv.out_channels, 0)
        if not started:
            # The one-shot pass reflects the first `pad` samples on the left; wait until they exist.
            if buffer.shape[-1] <= pad and not final:
                self.state[key] = (False, buffer)
                return nothing
            buffer = layer._pad1d(buffer, (pad, 0), mode=layer.pad_mode)
            started = True
        count = (buffer.shape[-1] - kernel) // stride + 1 if buffer.shape[-1] >= kernel else 0
        if count == 0:
            self.state[key] = (started, buffer)
            return nothing
        output = layer.conv(buffer[..., : (count - 1) * stride + kernel])
        if layer.norm_type == "time_group_norm":
            output = layer.norm(output)
        self.state[key] = (started, buffer[..., count * stride :])
        return output

    def _conv_transpose(self, layer, hidden: torch.Tensor, final: bool) -> torch.Tensor:
        stride = layer.conv.stride[0]
        overlap = layer.conv.kernel_size[0] - stride
        key = id(layer)
        if hidden.shape[-1] == 0:
            return hidden.new_zeros(hidden.shape[0], layer.conv.out_channels, 0)
        output = layer.conv(hidden)  # [batch, channels, frames * stride + overlap]
        bias = layer.conv.bias[None, :, None] if layer.conv.bias is not None else 0.0
        tail = self.state.get(key)
        if tail is not None:
            output[..., :overlap] += tail
        # The overlapping tail gets the bias again from the next chunk, so keep it without.
        self.state[key] = output[..., -overlap:] - bias
        return output[..., :-overlap]


class _EncodecStreamingEncoder(StreamingCodecEncoder):
    def __init__(self, codec: EncodecCodec, batch_size: int):
        self.codec = codec
        self.batch_size = batch_size
        self.stream = _SeanetStream(codec.model.encoder)
        self.pending = 0  # samples pushed that do not yet make a whole frame

    @torch.no_grad()
    def push(self, audio: torch.Tensor) -> torch.Tensor:
        self.pending = (self.pending + audio.shape[-1]) % self.codec.hop_length
        latents = self.stream(audio[:, None, :].to(self.codec._dtype))
        return self._quantize(latents)

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        missing = (-self.pending) % self.codec.hop_length
        latents = self.stream(torch.zeros(self.batch_size, 1, missing, dtype=self.codec._dtype), final=True)
        self.pending = 0
        return self._quantize(latents)

    def _quantize(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.shape[-1] == 0:
            return torch.zeros(latents.shape[0], self.codec.num_codebooks, 0, dtype=torch.long)
        return self.codec.quantize(latents)


class _EncodecStreamingDecoder(StreamingCodecDecoder):
    def __init__(self, codec: EncodecCodec, batch_size: int):
        self.codec = codec
        self.batch_size = batch_size
        self.stream = _SeanetStream(codec.model.decoder)

    @torch.no_grad()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        latents = self.codec.model.quantizer.decode(codes.transpose(0, 1))
        return self.stream(latents.to(self.codec._dtype))[:, 0].float()

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        dim = self.codec.latent_dim
        empty = torch.zeros(self.batch_size, dim, 0, dtype=self.codec._dtype)
        return self.stream(empty, final=True)[:, 0].float()


# ---------------------------------------------------------------------------------------------------------------
# Mimi
# ---------------------------------------------------------------------------------------------------------------


@register_codec("mimi")
class MimiCodec(AudioCodec):
    """transformers' `MimiModel` (the codec of Moshi), using its first `num_codebooks` codebooks."""

    def __init__(self, codec_config, num_codebooks: int):
        super().__init__()
        from transformers import MimiModel

        self.model = MimiModel(codec_config)
        self.sampling_rate = int(codec_config.sampling_rate)
        self.hop_length = int(round(codec_config.sampling_rate / codec_config.frame_rate))
        self.num_codebooks = num_codebooks
        self.codebook_size = int(codec_config.codebook_size)
        self.latent_dim = int(codec_config.hidden_size)
        self.requires_grad_(False)

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        frames = self.num_frames(audio.shape[-1])
        audio = nn.functional.pad(audio, (0, frames * self.hop_length - audio.shape[-1]))
        codes = self.model.encode(audio[:, None, :], num_quantizers=self.num_codebooks).audio_codes
        return codes[..., :frames].contiguous()

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.quantizer.decode(codes).transpose(1, 2)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decode(codes).audio_values[:, 0].float()

    def streaming_decoder(self, batch_size: int = 1) -> StreamingCodecDecoder:
        return _ContextStreamingDecoder(self, context_frames=int(2 * self.frame_rate))


class _ContextStreamingDecoder(StreamingCodecDecoder):
    """Streams a codec that has no exact streaming state by re-decoding each chunk with `context_frames` of the
    codes before it and keeping only the new samples. Close to, not equal to, one-shot decoding."""

    def __init__(self, codec: AudioCodec, context_frames: int):
        self.codec = codec
        self.context_frames = context_frames
        self.codes: torch.Tensor | None = None

    @torch.no_grad()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        new = codes.shape[-1]
        self.codes = codes if self.codes is None else torch.cat([self.codes, codes], dim=-1)
        window = self.codes[..., -(new + self.context_frames) :]
        self.codes = self.codes[..., -self.context_frames :]
        if new == 0:
            return torch.zeros(codes.shape[0], 0)
        return self.codec.decode(window)[:, -new * self.codec.hop_length :]

    def flush(self) -> torch.Tensor:
        batch = 1 if self.codes is None else self.codes.shape[0]
        return torch.zeros(batch, 0)


def build_codec(config) -> AudioCodec:
    """The codec of a `ConceptTalkerConfig`, with random weights (pretrained ones are loaded by the caller)."""
    codec_type = config.codec_config.model_type
    if codec_type not in CODECS:
        raise ValueError(f"Unknown codec {codec_type!r}: use one of {sorted(CODECS)}.")
    return CODECS[codec_type](config.codec_config, config.codec_num_codebooks)
