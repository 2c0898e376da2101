"""The codec interface: EnCodec encodes and decodes in a stream exactly as in one go; Mimi plugs in the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeling_concept_talker.audio import load_audio, resample
from modeling_concept_talker.codec import build_codec

# A stream runs the same float32 convolutions on slices of the same signal as a one-shot pass: the samples agree to
# rounding (observed ~1e-7 of full scale). 1e-5 (-100 dBFS) is far below audibility and far above rounding.
SAMPLE_TOLERANCE = 1e-5


@pytest.fixture
def speech(assets) -> torch.Tensor:
    """Two seconds of real speech at 24 kHz."""
    wave, rate = load_audio(str(assets / "speech" / "ljspeech-dev" / "wavs" / "LJ001-0001.flac"))
    return resample(torch.from_numpy(wave), rate, 24000)[: 2 * 24000]


@pytest.fixture
def encodec(tiny_config):
    torch.manual_seed(0)
    return build_codec(tiny_config).eval()


def chunks_of(total: int, sizes: list[int]):
    start = 0
    for size in sizes:
        yield slice(start, min(total, start + size))
        start += size
    yield slice(start, total)


def test_random_codec_codes_follow_the_audio(encodec, speech):
    codes = encodec.encode(speech[None])
    assert codes.shape == (1, 4, encodec.num_frames(speech.numel()))
    assert codes.min() >= 0 and codes.max() < encodec.codebook_size
    assert len(torch.unique(codes[0, 0])) > 20  # not one code for every frame
    other = encodec.encode(torch.flip(speech, [0])[None])
    assert not torch.equal(codes, other)


def test_streaming_encoder_gives_the_one_shot_codes(encodec, speech):
    whole = encodec.encode(speech[None])
    stream = encodec.streaming_encoder(1)
    pieces = [stream.push(speech[None, part]) for part in chunks_of(speech.numel(), [1, 500, 7000, 3, 0, 15000])]
    pieces.append(stream.flush())
    assert torch.equal(torch.cat(pieces, dim=-1), whole)


def test_streaming_decoder_gives_the_one_shot_samples(encodec, speech):
    codes = encodec.encode(speech[None])
    whole = encodec.decode(codes)
    stream = encodec.streaming_decoder(1)
    pieces = [stream.push(codes[..., part]) for part in chunks_of(codes.shape[-1], [1, 2, 9, 16, 5, 16])]
    pieces.append(stream.flush())
    joined = torch.cat(pieces, dim=-1)
    assert joined.shape == whole.shape == (1, codes.shape[-1] * encodec.hop_length)
    assert (joined - whole).abs().max() < SAMPLE_TOLERANCE


def test_no_clicks_at_chunk_joins(encodec, speech):
    """A click is a jump at a join that the one-shot signal does not have."""
    codes = encodec.encode(speech[None])
    whole = encodec.decode(codes)[0]
    stream = encodec.streaming_decoder(1)
    pieces = [stream.push(codes[..., part])[0] for part in chunks_of(codes.shape[-1], [16] * 9)]
    joined = torch.cat(pieces)
    joins = np.cumsum([len(p) for p in pieces])[:-1]
    for join in joins:
        if 0 < join < len(joined):
            jump = (joined[join] - joined[join - 1]).abs()
            expected = (whole[join] - whole[join - 1]).abs()
            assert (jump - expected).abs() < SAMPLE_TOLERANCE


def test_short_replies_stream_too(encodec):
    codes = torch.randint(0, encodec.codebook_size, (1, 4, 3))
    stream = encodec.streaming_decoder(1)
    joined = torch.cat([stream.push(codes[..., :2]), stream.push(codes[..., 2:]), stream.flush()], dim=-1)
    assert (joined - encodec.decode(codes)).abs().max() < SAMPLE_TOLERANCE


def test_batch_encoding_equals_encoding_alone(encodec, speech):
    short = speech[:30000]
    alone = encodec.encode(short[None])
    padded = torch.stack([torch.nn.functional.pad(short, (0, speech.numel() - short.numel())), speech])
    together = encodec.encode(padded)
    assert torch.equal(together[:1, :, : alone.shape[-1]], alone)


def test_codes_are_checked(encodec):
    with pytest.raises(ValueError, match=r"\[batch, 4 codebooks, frames\]"):
        encodec.check_codes(torch.zeros(1, 8, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"outside this codec's codebook of 1024 entries"):
        encodec.check_codes(torch.full((1, 4, 5), 1024))
    with pytest.raises(TypeError, match="integer codebook indices"):
        encodec.check_codes(torch.zeros(1, 4, 5))


def test_codec_stays_frozen_and_in_eval_mode(tiny_model):
    tiny_model.train()
    assert not tiny_model.codec.training
    assert not any(p.requires_grad for p in tiny_model.codec.parameters())


def test_mimi_codec_plugs_in(tiny_config):
    from configuration import load_preset

    from modeling_concept_talker import ConceptTalkerForConditionalGeneration

    config = load_preset(
        "tiny",
        codec_config={"model_type": "mimi", "num_hidden_layers": 1, "intermediate_size": 256, "num_quantizers": 8},
        adapter_config={"window_seconds": 0.8}, ear_config=None,  # the codec is the ear: windows of its frames
    )
    model = ConceptTalkerForConditionalGeneration(config).eval()
    codec = model.codec
    assert (codec.sampling_rate, codec.frame_rate, codec.codebook_size) == (24000, 12.5, 2048)
    assert config.window_frames == 10
    audio = torch.randn(2, 24000) * 0.1
    codes = codec.encode(audio)
    assert codes.shape == (2, 4, 13)
    assert codec.embed_codes(codes).shape == (2, 13, codec.latent_dim)
    whole = codec.decode(codes)
    assert whole.shape == (2, 13 * 1920)
    stream = codec.streaming_decoder(1)
    joined = torch.cat([stream.push(codes[:1, :, :4]), stream.push(codes[:1, :, 4:])], dim=-1)
    assert (joined - whole[:1]).abs().max() < 1e-4


def test_a_presets_random_codec_is_the_same_at_any_thread_count():
    """A dataset made by `synth` with the tiny preset's random codec records its fingerprint; a run at another thread
    count must build the same codec (two threads rounded the init's reductions differently: CI refused its own data)."""
    from concept_talker.data.codecs import codec_fingerprint, resolve_codec

    previous = torch.get_num_threads()
    try:
        fingerprints = set()
        for threads in (1, 2):
            torch.set_num_threads(threads)
            fingerprints.add(codec_fingerprint(resolve_codec("tiny")))
            assert torch.get_num_threads() == threads  # left as the caller set it
    finally:
        torch.set_num_threads(previous)
    assert len(fingerprints) == 1
