"""Lyra v2 SoundStream codec backend: Google's pretrained speech codec, three TFLite models run with ai-edge-litert.

The folder given as `LyraCodecConfig.model_dir` (Lyra's `lyra/model_coeffs`) holds:

- `soundstream_encoder.tflite`: one frame of audio `[1, 320]` (16 kHz, float in [-1, 1]) -> latent `[1, 1, 64]`.
- `quantizer.tflite`: residual vector quantiser with two signatures.
  `encode(input_frames [1, 1, 64] float32, num_quantizers int32)` -> `output_0` `[46, 1, 1]` int32 codebook indices
  (the first `num_quantizers` filled, -1 after) and `output_1`, the bits per quantizer (4, so 16 entries).
  `decode(encoding_indices [46, 1, 1] int32)` -> the quantised latent `[1, 1, 64]`: the sum of the chosen codewords,
  index -1 adding nothing. It has no state.
- `lyragan.tflite`: quantised latent `[1, 1, 64]` -> one frame of audio `[1, 320]`.

What was found by running them (ai-edge-litert 2.3.0):

- Every signature has fixed batch-1, one-frame shapes, so audio is run frame by frame (50 Hz) and a batch item by item.
- The encoder and LyraGAN are streaming causal networks: they keep their past in TFLite resource variables across
  `invoke()` calls (the same frame twice gives different outputs). `Interpreter.reset_all_variables()` does not bring
  them back to their initial state, so each independent sequence gets a fresh interpreter, built in 2-4 ms from the
  model bytes held in memory. Fresh interpreters are deterministic, so a sequence encodes or decodes to the same
  numbers however it is chunked: streaming is exact.
- Decoded audio is aligned with the input (no lag between the input and the round trip) and can exceed [-1, 1]
  slightly; it is returned unclipped, as float32.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .codec import AudioCodec, StreamingCodecDecoder, StreamingCodecEncoder, register_codec

LYRA_FILES = ("soundstream_encoder.tflite", "quantizer.tflite", "lyragan.tflite")
LYRA_INSTALL_HINT = 'pip install "concept-talker[lyra]" (which pins ai-edge-litert==2.3.0)'
LYRA_SAMPLING_RATE = 16000  # Hz: the models do not record it, so it is checked against the config here


# Where this project keeps its offline copy of the Lyra models, next to a source checkout (../shared/assets).
SHARED_LYRA_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared", "assets", "lyra-soundstream"
)
LYRA_DIR_VARIABLE = "CONCEPT_TALKER_LYRA_DIR"


def is_lyra_model_dir(path) -> bool:
    """True if `path` is a folder holding the three Lyra SoundStream TFLite models."""
    return os.path.isdir(str(path)) and all(os.path.isfile(os.path.join(str(path), f)) for f in LYRA_FILES)


def default_lyra_model_dir() -> str | None:
    """The Lyra models on this machine when a checkpoint does not say where: `$CONCEPT_TALKER_LYRA_DIR`, else the
    shared offline copy next to a source checkout (`../shared/assets/lyra-soundstream`) where it exists; else None."""
    if os.environ.get(LYRA_DIR_VARIABLE):
        return os.environ[LYRA_DIR_VARIABLE]
    return SHARED_LYRA_DIR if is_lyra_model_dir(SHARED_LYRA_DIR) else None


def _interpreter_class():
    """ai-edge-litert's `Interpreter`, imported only when a Lyra codec is built.

    The import sits in a `try` block on purpose: transformers' remote-code loader treats every import outside one as
    a hard requirement, and this file ships with every checkpoint, whatever its codec.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as err:
        raise ImportError(
            f"The Lyra SoundStream codec runs TFLite models with ai-edge-litert, which is not installed: "
            f"{LYRA_INSTALL_HINT}."
        ) from err
    return Interpreter


def _missing_model_dir_error(model_dir, problem: str) -> ValueError:
    return ValueError(
        f"{problem}. The Lyra codec needs a folder holding {', '.join(LYRA_FILES)} (Lyra v2's lyra/model_coeffs). "
        "For a checkpoint, pass it to from_pretrained(path, codec_model_dir='/path/to/lyra-soundstream') or set "
        f"{LYRA_DIR_VARIABLE}=/path/to/lyra-soundstream; for a preset, set codec_config.model_dir, e.g. "
        "load_preset('tiny-lyra', codec_config={'model_type': 'lyra_soundstream', 'model_dir': "
        "'/path/to/lyra-soundstream'})."
    )


class _FrameModel:
    """One TFLite model with a single batch-1 input and output, invoked frame by frame on a fresh interpreter."""

    def __init__(self, interpreter_class, model_bytes: bytes):
        self.interpreter = interpreter_class(model_content=model_bytes, num_threads=1)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], frame.reshape(self.input["shape"]))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"]).reshape(-1)


class _Quantizer:
    """The residual vector quantiser's `encode` and `decode` signatures, one frame at a time."""

    def __init__(self, interpreter_class, model_bytes: bytes):
        interpreter = interpreter_class(model_content=model_bytes, num_threads=1)
        self._encode = interpreter.get_signature_runner("encode")
        self._decode = interpreter.get_signature_runner("decode")
        self.max_quantizers = int(self._decode.get_input_details()["encoding_indices"]["shape"][0])
        self.latent_dim = int(np.prod(self._encode.get_input_details()["input_frames"]["shape"]))

    def encode(self, latent: np.ndarray, num_quantizers: int) -> np.ndarray:
        """Latent `[latent_dim]` -> codebook indices `[num_quantizers]`."""
        result = self._encode(
            input_frames=latent.reshape(1, 1, -1).astype(np.float32), num_quantizers=np.array(num_quantizers, np.int32)
        )
        return result["output_0"].reshape(-1)[:num_quantizers]

    def bits_per_quantizer(self) -> int:
        latent = np.zeros(self.latent_dim, np.float32)
        result = self._encode(input_frames=latent.reshape(1, 1, -1), num_quantizers=np.array(1, np.int32))
        return int(result["output_1"])

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Codebook indices `[num_quantizers]` -> quantised latent `[latent_dim]` (unused quantizers get -1)."""
        full = np.full((self.max_quantizers, 1, 1), -1, np.int32)
        full[: len(indices), 0, 0] = indices
        return self._decode(encoding_indices=full)["output_0"].reshape(-1)


@register_codec("lyra_soundstream")
class LyraCodec(AudioCodec):
    """Lyra v2 SoundStream: 16 kHz speech, 320-sample frames (50 Hz), residual codebooks of 16 entries (4 bits).

    `num_codebooks` of the 46 quantizers are used (8 = 1.6 kbps, 16 = 3.2 kbps). The codec has no torch weights:
    it holds the bytes of its three TFLite models (read from `codec_config.model_dir` when it is built), so it is an
    `nn.Module` with an empty state dict and survives `save_pretrained` / `from_pretrained` of the model around it
    through the config's `model_dir` alone.

    Args:
        codec_config ([`LyraCodecConfig`]): `model_dir` and the codec's facts (checked against the models).
        num_codebooks (`int`): quantizers used, from `ConceptTalkerConfig.codec_num_codebooks`.
    """

    def __init__(self, codec_config, num_codebooks: int):
        super().__init__()
        self.model_dir = codec_config.model_dir
        self.sampling_rate = int(codec_config.sampling_rate)
        self.hop_length = int(codec_config.hop_length)
        self.codebook_size = int(codec_config.codebook_size)
        self.latent_dim = int(codec_config.latent_dim)
        self.max_num_codebooks = int(codec_config.max_num_quantizers)
        self.num_codebooks = int(num_codebooks)
        if self.sampling_rate != LYRA_SAMPLING_RATE:
            raise ValueError(
                f"codec_config.sampling_rate={self.sampling_rate}, but Lyra v2 SoundStream runs at "
                f"{LYRA_SAMPLING_RATE} Hz: leave sampling_rate at {LYRA_SAMPLING_RATE} (audio is resampled to it)."
            )
        if not 1 <= self.num_codebooks <= self.max_num_codebooks:
            raise ValueError(
                f"num_codebooks={self.num_codebooks}: Lyra has {self.max_num_codebooks} quantizers, choose 1 to "
                f"{self.max_num_codebooks} (8 = 1.6 kbps, 16 = 3.2 kbps)."
            )
        self._interpreter_class = _interpreter_class()
        self._model_bytes = self._read_models(self.model_dir)
        self._check_models()
        self._codebooks: dict[torch.device, torch.Tensor] = {}  # built on first use, per device (not saved)

    # ---- loading -------------------------------------------------------------------------------------------
    @staticmethod
    def _read_models(model_dir) -> dict[str, bytes]:
        if model_dir is None:
            raise _missing_model_dir_error(model_dir, "codec_config.model_dir is not set")
        model_dir = os.fspath(model_dir)
        if not os.path.isdir(model_dir):
            raise _missing_model_dir_error(model_dir, f"The Lyra model folder {model_dir!r} does not exist")
        missing = [name for name in LYRA_FILES if not os.path.isfile(os.path.join(model_dir, name))]
        if missing:
            raise _missing_model_dir_error(model_dir, f"The Lyra model folder {model_dir!r} lacks {', '.join(missing)}")
        model_bytes = {}
        for name in LYRA_FILES:
            with open(os.path.join(model_dir, name), "rb") as f:
                model_bytes[name] = f.read()
        return model_bytes

    def _check_models(self) -> None:
        """Open each model once and check its shapes against the config; a wrong or corrupt file fails here."""
        expected = {
            "soundstream_encoder.tflite": ([1, self.hop_length], self.latent_dim),
            "lyragan.tflite": ([1, 1, self.latent_dim], self.hop_length),
        }
        for name, (input_shape, output_size) in expected.items():
            model = self._open(name, lambda data: _FrameModel(self._interpreter_class, data))
            got_input = [int(n) for n in model.input["shape"]]
            got_output = int(np.prod(model.output["shape"]))
            if got_input != input_shape or got_output != output_size:
                raise ValueError(
                    f"{os.path.join(self.model_dir, name)} takes {got_input} and gives {got_output} values, but a Lyra "
                    f"SoundStream {name} takes {input_shape} and gives {output_size} (codec_config: hop_length="
                    f"{self.hop_length}, latent_dim={self.latent_dim}): is the file from another model, or the "
                    "config from another codec?"
                )
        quantizer = self._new_quantizer()
        bits = quantizer.bits_per_quantizer()
        found = (quantizer.latent_dim, 2**bits, quantizer.max_quantizers)
        wanted = (self.latent_dim, self.codebook_size, self.max_num_codebooks)
        if found != wanted:
            raise ValueError(
                f"{os.path.join(self.model_dir, 'quantizer.tflite')} quantises {found[0]}-dim latents with up to "
                f"{found[2]} codebooks of {found[1]} entries, but codec_config says latent_dim={wanted[0]}, "
                f"codebook_size={wanted[1]}, max_num_quantizers={wanted[2]}: fix the config to match the models."
            )

    def _open(self, name: str, build):
        try:
            return build(self._model_bytes[name])
        except (ValueError, RuntimeError) as err:
            raise ValueError(
                f"{os.path.join(self.model_dir, name)} could not be opened as the Lyra SoundStream model it should be "
                f"({err}); the folder must hold Lyra v2's {', '.join(LYRA_FILES)}."
            ) from err

    def _new_encoder(self) -> _FrameModel:
        """A SoundStream encoder with fresh state: frames `[hop_length]` -> latents `[latent_dim]`, in order."""
        return self._open("soundstream_encoder.tflite", lambda data: _FrameModel(self._interpreter_class, data))

    def _new_decoder(self) -> _FrameModel:
        """A LyraGAN decoder with fresh state: latents `[latent_dim]` -> frames `[hop_length]`, in order."""
        return self._open("lyragan.tflite", lambda data: _FrameModel(self._interpreter_class, data))

    def _new_quantizer(self) -> _Quantizer:
        """The residual vector quantiser (stateless); a model without its `encode`/`decode` signatures fails here."""
        return self._open("quantizer.tflite", lambda data: _Quantizer(self._interpreter_class, data))

    def extra_repr(self) -> str:
        return f"model_dir={self.model_dir!r}, num_codebooks={self.num_codebooks}, frame_rate={self.frame_rate:g} Hz"

    # ---- one frame sequence, shared by one-shot and streaming paths ------------------------------------------
    def _encode_frames(self, encoder: _FrameModel, quantizer: _Quantizer, frames: np.ndarray) -> np.ndarray:
        """Frames `[n, hop_length]` through a running encoder -> codes `[num_codebooks, n]` (int64)."""
        codes = np.empty((self.num_codebooks, frames.shape[0]), np.int64)
        for index, frame in enumerate(frames):
            codes[:, index] = quantizer.encode(encoder(frame), self.num_codebooks)
        return codes

    def _decode_frames(self, decoder: _FrameModel, quantizer: _Quantizer, codes: np.ndarray) -> np.ndarray:
        """Codes `[num_codebooks, n]` through a running LyraGAN -> audio `[n * hop_length]` (float32)."""
        audio = np.empty((codes.shape[1], self.hop_length), np.float32)
        for index in range(codes.shape[1]):
            audio[index] = decoder(quantizer.decode(codes[:, index]))
        return audio.reshape(-1)

    def _frames_of(self, audio: torch.Tensor) -> np.ndarray:
        """Audio `[batch, samples]` -> zero-padded frames `[batch, frames, hop_length]` as float32 numpy."""
        if audio.ndim != 2:
            raise ValueError(
                f"audio must be [batch, samples] at {self.sampling_rate} Hz, got shape {tuple(audio.shape)}: "
                "prepare clips with modeling_concept_talker.audio.prepare_audio and stack them."
            )
        frames = self.num_frames(audio.shape[-1])
        wave = audio.detach().to(device="cpu", dtype=torch.float32).numpy()
        wave = np.pad(wave, ((0, 0), (0, frames * self.hop_length - wave.shape[-1])))
        return wave.reshape(wave.shape[0], frames, self.hop_length)

    # ---- AudioCodec ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio `[batch, samples]` (16 kHz, float in [-1, 1]) -> codes `[batch, num_codebooks, ceil(samples / 320)]`.

        The last partial frame is zero-padded. Each clip is encoded from a fresh encoder state, so a clip gives the
        same codes alone as in a batch, and its valid frames the same codes whatever padding follows them.
        """
        frames = self._frames_of(audio)
        quantizer = self._new_quantizer()
        codes = np.zeros((frames.shape[0], self.num_codebooks, frames.shape[1]), np.int64)
        for row, clip in enumerate(frames):
            codes[row] = self._encode_frames(self._new_encoder(), quantizer, clip)
        return torch.from_numpy(codes).to(audio.device)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `[batch, num_codebooks, frames]` -> quantised latents `[batch, frames, 64]` (float32).

        The sum of the chosen codewords, as the quantiser's `decode` signature computes it (to float rounding of the
        sum, ~1e-5), gathered from a codeword table in torch so a whole batch is one gather on the codes' device.
        """
        codes = self.check_codes(codes)
        table = self._codebook_table(codes.device)  # [num_codebooks, codebook_size, latent_dim]
        offsets = torch.arange(self.num_codebooks, device=codes.device)[None, :, None] * self.codebook_size
        flat = table.reshape(-1, self.latent_dim)[codes + offsets]  # [batch, codebooks, frames, latent_dim]
        return flat.sum(dim=1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `[batch, num_codebooks, frames]` -> audio `[batch, frames * 320]` at 16 kHz, float32, unclipped.

        Each clip is decoded from a fresh LyraGAN state, frame by frame, exactly as `streaming_decoder()` decodes it.
        """
        codes = self.check_codes(codes)
        quantizer = self._new_quantizer()
        audio = np.zeros((codes.shape[0], codes.shape[-1] * self.hop_length), np.float32)
        for row, clip in enumerate(codes.cpu().numpy()):
            audio[row] = self._decode_frames(self._new_decoder(), quantizer, clip)
        return torch.from_numpy(audio).to(codes.device)

    def streaming_encoder(self, batch_size: int = 1) -> StreamingCodecEncoder:
        return LyraStreamingEncoder(self, batch_size)

    def streaming_decoder(self, batch_size: int = 1) -> StreamingCodecDecoder:
        return LyraStreamingDecoder(self, batch_size)

    def _codebook_table(self, device: torch.device) -> torch.Tensor:
        """Codewords `[num_codebooks, codebook_size, latent_dim]`, read from the quantiser's `decode` signature.

        Decoding a single index with every other quantizer at -1 gives that codeword alone; the quantiser's decode is
        their sum (checked to float rounding), so the table reproduces it.
        """
        if device not in self._codebooks:
            cpu = self._codebooks.get(torch.device("cpu"))
            if cpu is None:
                quantizer = self._new_quantizer()
                table = np.empty((self.num_codebooks, self.codebook_size, self.latent_dim), np.float32)
                for k in range(self.num_codebooks):
                    for entry in range(self.codebook_size):
                        indices = np.full(k + 1, -1, np.int32)
                        indices[k] = entry
                        table[k, entry] = quantizer.decode(indices)
                cpu = self._codebooks[torch.device("cpu")] = torch.from_numpy(table)
            self._codebooks[device] = cpu.to(device)
        return self._codebooks[device]


class LyraStreamingEncoder(StreamingCodecEncoder):
    """Encodes audio pieces `[batch, samples]` as they arrive, one fresh encoder state per batch row.

    `push` returns the codes `[batch, num_codebooks, new_frames]` of every frame completed so far; `flush` zero-pads
    the partial frame, returns its codes (`[batch, num_codebooks, 0 or 1]`) and starts a new, independent sequence.
    The codes equal `LyraCodec.encode` of the concatenated pieces, exactly.
    """

    def __init__(self, codec: LyraCodec, batch_size: int = 1):
        self.codec = codec
        self.batch_size = int(batch_size)
        self.quantizer = codec._new_quantizer()
        self.reset()

    def reset(self) -> None:
        """Forget everything pushed: the next push starts a new sequence."""
        self.encoders = [self.codec._new_encoder() for _ in range(self.batch_size)]
        self.pending = np.zeros((self.batch_size, 0), np.float32)  # samples not yet making a whole frame
        self.device = torch.device("cpu")

    @torch.no_grad()
    def push(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.ndim != 2 or audio.shape[0] != self.batch_size:
            raise ValueError(
                f"push audio as [batch={self.batch_size}, samples] at {self.codec.sampling_rate} Hz, got shape "
                f"{tuple(audio.shape)}: make a streaming_encoder(batch_size=...) for another batch size."
            )
        self.device = audio.device
        wave = audio.detach().to(device="cpu", dtype=torch.float32).numpy()
        buffer = np.concatenate([self.pending, wave], axis=1)
        whole = buffer.shape[1] // self.codec.hop_length * self.codec.hop_length
        self.pending = buffer[:, whole:]
        return self._encode(buffer[:, :whole])

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        tail = np.pad(self.pending, ((0, 0), (0, -self.pending.shape[1] % self.codec.hop_length)))
        codes = self._encode(tail)
        self.reset()
        return codes

    def _encode(self, wave: np.ndarray) -> torch.Tensor:
        frames = wave.reshape(self.batch_size, -1, self.codec.hop_length)
        codes = np.zeros((self.batch_size, self.codec.num_codebooks, frames.shape[1]), np.int64)
        for row, (encoder, clip) in enumerate(zip(self.encoders, frames)):
            codes[row] = self.codec._encode_frames(encoder, self.quantizer, clip)
        return torch.from_numpy(codes).to(self.device)


class LyraStreamingDecoder(StreamingCodecDecoder):
    """Decodes codes `[batch, num_codebooks, frames]` as they arrive, one fresh LyraGAN state per batch row.

    `push` returns the audio `[batch, frames * 320]` of the pushed frames, final at once (Lyra needs no look-ahead);
    `flush` returns nothing new (`[batch, 0]`) and starts a new, independent sequence. The samples equal
    `LyraCodec.decode` of the concatenated codes, exactly.
    """

    def __init__(self, codec: LyraCodec, batch_size: int = 1):
        self.codec = codec
        self.batch_size = int(batch_size)
        self.quantizer = codec._new_quantizer()
        self.reset()

    def reset(self) -> None:
        """Forget everything pushed: the next push starts a new sequence."""
        self.decoders = [self.codec._new_decoder() for _ in range(self.batch_size)]
        self.device = torch.device("cpu")

    @torch.no_grad()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        codes = self.codec.check_codes(codes)
        if codes.shape[0] != self.batch_size:
            raise ValueError(
                f"push codes as [batch={self.batch_size}, codebooks, frames], got batch {codes.shape[0]}: make a "
                "streaming_decoder(batch_size=...) for another batch size."
            )
        self.device = codes.device
        audio = np.zeros((self.batch_size, codes.shape[-1] * self.codec.hop_length), np.float32)
        for row, (decoder, clip) in enumerate(zip(self.decoders, codes.cpu().numpy())):
            audio[row] = self.codec._decode_frames(decoder, self.quantizer, clip)
        return torch.from_numpy(audio).to(self.device)

    def flush(self) -> torch.Tensor:
        device = self.device
        self.reset()
        return torch.zeros(self.batch_size, 0, device=device)


__all__ = ["LYRA_FILES", "LyraCodec", "LyraStreamingDecoder", "LyraStreamingEncoder", "is_lyra_model_dir"]
