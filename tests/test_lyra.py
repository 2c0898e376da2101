"""The Lyra v2 SoundStream codec backend, on the real TFLite models in ../shared/assets/lyra-soundstream."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch

from modeling_concept_talker import ConceptTalkerForConditionalGeneration, LyraCodecConfig
from modeling_concept_talker.audio import load_audio, prepare_audio
from modeling_concept_talker.lyra import LYRA_FILES, LyraCodec, is_lyra_model_dir

HOP = 320


@pytest.fixture(scope="module")
def lyra_dir(assets):
    return str(assets / "lyra-soundstream")


@pytest.fixture(scope="module")
def codec(lyra_dir):
    return LyraCodec(LyraCodecConfig(model_dir=lyra_dir), num_codebooks=8)


@pytest.fixture(scope="module")
def speech(assets) -> torch.Tensor:
    """Two real utterances (LJSpeech) at 16 kHz, cut to 1.5 s each: `[2, 24000]`."""
    clips = []
    for clip_id in ("LJ001-0008", "LJ001-0002"):
        audio, rate = load_audio(str(assets / "speech" / "ljspeech-dev" / "wavs" / f"{clip_id}.flac"))
        clips.append(prepare_audio(audio, rate, 16000)[:24000])
    return torch.stack(clips)


def test_the_assets_folder_is_a_lyra_model_dir(lyra_dir, tmp_path):
    assert is_lyra_model_dir(lyra_dir)
    assert not is_lyra_model_dir(tmp_path)


def test_encode_gives_one_frame_per_320_samples_zero_padding_the_last(codec, speech):
    audio = speech[:, :1000]  # 3.125 frames
    codes = codec.encode(audio)
    assert codes.shape == (2, 8, 4) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 16
    padded = torch.nn.functional.pad(audio, (0, 4 * HOP - 1000))
    assert torch.equal(codec.encode(padded), codes)
    assert codec.encode(speech[:, :0]).shape == (2, 8, 0)


def test_each_clip_starts_from_a_fresh_state(codec, speech):
    """The encoder is stateful across frames; a batch row, a clip alone and a repeated call must all agree."""
    together = codec.encode(speech)
    assert torch.equal(codec.encode(speech[1:]), together[1:])
    assert torch.equal(codec.encode(speech), together)
    # The state matters: the same frame after different pasts gets different codes.
    frame = speech[0, :HOP]
    after_speech = codec.encode(torch.cat([speech[1, : 10 * HOP], frame])[None])[..., -1]
    alone = codec.encode(frame[None])[..., -1]
    assert not torch.equal(after_speech, alone)


def test_embed_codes_is_the_quantizers_decode(codec, speech):
    codes = codec.encode(speech)
    latents = codec.embed_codes(codes)
    assert latents.shape == (2, codes.shape[-1], 64) and latents.dtype == torch.float32
    quantizer = codec._new_quantizer()
    for row, frame in [(0, 0), (0, 37), (1, 74)]:
        reference = quantizer.decode(codes[row, :, frame].numpy())
        # The table sums the same float32 codewords in another order: differences of float rounding only.
        np.testing.assert_allclose(latents[row, frame].numpy(), reference, rtol=0, atol=1e-4)
    assert latents.abs().max() > 1.0  # real codewords, not zeros


def test_round_trip_is_aligned_speech(codec, speech):
    codes = codec.encode(speech)
    audio = codec.decode(codes)
    assert audio.shape == (2, codes.shape[-1] * HOP) and audio.dtype == torch.float32
    original, decoded = speech[0], audio[0, : speech.shape[-1]]
    correlation = torch.dot(original, decoded) / (original.norm() * decoded.norm())
    shifted = torch.dot(original[:-HOP], decoded[HOP:]) / (original[:-HOP].norm() * decoded[HOP:].norm())
    assert correlation > 0.5, f"the round trip does not follow the waveform (correlation {correlation:.2f})"
    assert abs(shifted) < 0.3  # aligned at lag 0, not one frame late


def test_streaming_decoder_gives_the_one_shot_samples(codec, speech):
    codes = codec.encode(speech)
    reference = codec.decode(codes)
    stream = codec.streaming_decoder(batch_size=2)
    for _ in range(2):  # the second sequence must not hear the first one
        pieces, start = [], 0
        for size in (1, 2, 5, 13, codes.shape[-1]):
            piece = stream.push(codes[..., start : start + size])
            assert piece.shape == (2, codes[..., start : start + size].shape[-1] * HOP)
            pieces.append(piece)
            start += size
        pieces.append(stream.flush())
        # Same TFLite kernels, same state, same inputs: exactly equal, not merely close.
        assert torch.equal(torch.cat(pieces, dim=-1), reference)


def test_streaming_encoder_gives_the_one_shot_codes(codec, speech):
    audio = speech[:, :10_000]  # 31.25 frames: the flush encodes a partial frame
    reference = codec.encode(audio)
    stream = codec.streaming_encoder(batch_size=2)
    for _ in range(2):
        pieces, start = [], 0
        for size in (100, 517, 3, 2000, 7380):
            pieces.append(stream.push(audio[:, start : start + size]))
            start += size
        pieces.append(stream.flush())
        assert torch.equal(torch.cat(pieces, dim=-1), reference)


def test_codes_outside_the_codebooks_are_refused(codec):
    codes = torch.zeros(1, 8, 3, dtype=torch.long)
    codes[0, 2, 1] = 16
    for call in (codec.decode, codec.embed_codes, codec.streaming_decoder().push):
        with pytest.raises(ValueError, match="outside this codec's codebook of 16 entries"):
            call(codes)
    with pytest.raises(ValueError, match="8 codebooks"):
        codec.decode(torch.zeros(1, 16, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        codec.embed_codes(torch.zeros(1, 8, 3))


def test_audio_of_the_wrong_shape_is_refused(codec, speech):
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        codec.encode(speech[0])
    with pytest.raises(ValueError, match="batch=2"):
        codec.streaming_encoder(batch_size=2).push(speech[:1])


def test_missing_or_wrong_model_files_say_which_folder_and_files(lyra_dir, tmp_path):
    with pytest.raises(ValueError, match="model_dir is not set"):
        LyraCodec(LyraCodecConfig(), 8)
    with pytest.raises(ValueError, match="does not exist"):
        LyraCodec(LyraCodecConfig(model_dir=str(tmp_path / "nowhere")), 8)
    shutil.copy(f"{lyra_dir}/quantizer.tflite", tmp_path)
    with pytest.raises(ValueError) as error:
        LyraCodec(LyraCodecConfig(model_dir=str(tmp_path)), 8)
    message = str(error.value)
    assert str(tmp_path) in message and "lacks soundstream_encoder.tflite, lyragan.tflite" in message
    assert all(name in message for name in LYRA_FILES)
    # A model in the wrong place is caught by its shapes; a corrupt file when it is opened.
    shutil.copy(f"{lyra_dir}/lyragan.tflite", tmp_path / "soundstream_encoder.tflite")
    shutil.copy(f"{lyra_dir}/lyragan.tflite", tmp_path)
    with pytest.raises(ValueError, match="soundstream_encoder.tflite takes"):
        LyraCodec(LyraCodecConfig(model_dir=str(tmp_path)), 8)
    shutil.copy(f"{lyra_dir}/soundstream_encoder.tflite", tmp_path)
    shutil.copy(f"{lyra_dir}/lyragan.tflite", tmp_path / "quantizer.tflite")
    with pytest.raises(ValueError, match=r"quantizer.tflite could not be opened.*signature"):
        LyraCodec(LyraCodecConfig(model_dir=str(tmp_path)), 8)
    (tmp_path / "soundstream_encoder.tflite").write_bytes(b"not a model" * 100)
    with pytest.raises(ValueError, match="soundstream_encoder.tflite could not be opened"):
        LyraCodec(LyraCodecConfig(model_dir=str(tmp_path)), 8)
    with pytest.raises(ValueError, match="runs at 16000 Hz"):
        LyraCodec(LyraCodecConfig(model_dir=lyra_dir, sampling_rate=24000), 8)


def test_without_ai_edge_litert_the_module_imports_and_building_says_what_to_install(lyra_dir, monkeypatch):
    from transformers.dynamic_module_utils import get_imports

    import modeling_concept_talker.lyra as lyra

    # The Hub's remote-code loader must not demand ai-edge-litert from users of other codecs.
    assert "ai_edge_litert" not in get_imports(lyra.__file__)
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(ImportError, match=r'pip install "concept-talker\[lyra\]"'):
        LyraCodec(LyraCodecConfig(model_dir=lyra_dir), 8)


def test_a_model_with_the_lyra_codec_saves_and_loads(lyra_dir, tmp_path, monkeypatch):
    from transformers import AutoConfig

    from modeling_concept_talker import lyra

    from configuration import load_preset

    codec_config = {"model_type": "lyra_soundstream", "model_dir": lyra_dir}
    config = load_preset("tiny", codec_config=codec_config, codec_num_codebooks=16)
    torch.manual_seed(0)
    model = ConceptTalkerForConditionalGeneration(config).eval()
    assert isinstance(model.codec, LyraCodec) and model.codec.num_codebooks == 16
    assert not [key for key in model.state_dict() if key.startswith("codec.")]
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "lyra.py").is_file()  # shipped with the remote code

    loaded = ConceptTalkerForConditionalGeneration.from_pretrained(tmp_path / "saved").eval()
    assert isinstance(loaded.codec, LyraCodec) and loaded.codec.model_dir == lyra_dir
    audio = torch.randn(2, 16000) * 0.1
    codes = model.codec.encode(audio)
    assert torch.equal(loaded.codec.encode(audio), codes)
    with torch.no_grad():
        assert torch.equal(loaded.get_concepts(codes)[0], model.get_concepts(codes)[0])

    # Loaded where the saved model_dir does not exist (and no other copy is found): the error says how to point it
    # elsewhere.
    monkeypatch.delenv("CONCEPT_TALKER_LYRA_DIR", raising=False)
    monkeypatch.setattr(lyra, "SHARED_LYRA_DIR", str(tmp_path / "no-lyra"))
    moved = AutoConfig.from_pretrained(tmp_path / "saved")
    moved.codec_config.model_dir = str(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="codec_model_dir="):
        ConceptTalkerForConditionalGeneration.from_pretrained(tmp_path / "saved", config=moved)


def test_the_tiny_lyra_preset(lyra_dir):
    from configuration import load_preset

    config = load_preset("tiny-lyra")
    assert config.codec_type == "lyra_soundstream" and config.codec_config.model_dir is None
    assert config.frame_rate == 50 and config.window_frames == 50 and config.codec_num_codebooks == 8
    assert config.talker_config.num_codebooks == 8 and config.talker_config.codebook_size == 16
    with pytest.raises(ValueError, match="model_dir is not set"):
        ConceptTalkerForConditionalGeneration(config)
    config.codec_config.model_dir = lyra_dir
    model = ConceptTalkerForConditionalGeneration(config)
    assert model.codec.num_codebooks == 8 and model.codec.frame_rate == 50
