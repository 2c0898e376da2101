"""The reference voice and the talker's conditioning: style concepts from the concept adapter, the voice's measured
pitch, clip checks, the version-1 way of reading a voice, and the talker's history dropout."""

from __future__ import annotations

import math

import pytest
import torch

from modeling_concept_talker import ConceptTalkerForConditionalGeneration, ConceptTalkerProcessor, build_prompt
from modeling_concept_talker.pitch import voice_pitch_features
from concept_talker.data.collators import SpokenTurnCollator


@pytest.fixture
def voice_config():
    from configuration import load_preset

    return load_preset("tiny", talker_config={"num_style_concepts": 4})


@pytest.fixture
def voice_model(voice_config):
    torch.manual_seed(0)
    model = ConceptTalkerForConditionalGeneration(voice_config).eval()
    with torch.no_grad():  # big enough that the style changes what the talker writes
        model.talker.style_proj.weight.normal_(std=1.0)
        model.concept_adapter.style_queries.normal_(std=1.0)
        if model.concept_adapter.voice_frame_proj is not None:  # the clip's codec latents, read for the voice
            model.concept_adapter.voice_frame_proj.weight.normal_(std=1.0)
        for name, p in model.talker.named_parameters():  # and that the talker attends to it (tiny: 64 wide)
            if p.ndim == 2 and "proj" in name and "style" not in name:
                p.normal_(std=0.3)
    return model


@pytest.fixture
def voice_processor(voice_config, tokenizer_dir):
    return ConceptTalkerProcessor.from_config(voice_config, tokenizer_dir)


def speech_like(seconds: float, rate: int, f0: float = 150.0) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    envelope = 0.5 * (1 + torch.sin(2 * math.pi * 3 * t))  # syllable-rate loudness
    return 0.3 * envelope * sum(torch.sin(2 * math.pi * f0 * h * t) / h for h in range(1, 5))


def test_style_concepts_have_a_fixed_count_whatever_the_clip_length(voice_model, voice_processor):
    rate = voice_processor.voice_sampling_rate  # the codec's: reference clips are read by the codec
    for seconds in (1.0, 2.5, 5.0):
        codes, mask = voice_model.encode_audio(speech_like(seconds, rate)[None], None)
        style = voice_model.get_voice_concepts(codes, mask)
        assert style.shape == (1, 4, voice_model.config.thinker_config.hidden_size)
        assert torch.isfinite(style).all()


def test_padded_clips_give_the_same_style_as_alone(voice_model, voice_processor):
    rate = voice_processor.voice_sampling_rate  # the codec's: reference clips are read by the codec
    short, long = speech_like(1.3, rate, 120.0), speech_like(3.7, rate, 220.0)
    batch = voice_processor(text=["a", "b"], voice=[short, long], sampling_rate=rate)
    together = voice_model.voice_style(batch["voice_values"], batch["voice_values_mask"])
    alone = voice_model.voice_style(voice_processor(text="a", voice=short, sampling_rate=rate)["voice_values"])
    # The voice is read from the codec's continuous latents, which the codec's convolutions compute from the padding
    # too near a clip's end: the padded clip's style is the clip's own up to a small fraction of what tells two voices
    # apart.
    padding_effect = (together[0] - alone[0]).norm()
    two_voices = (together[0] - together[1]).norm()
    assert padding_effect < 0.05 * two_voices


def test_the_talker_learns_from_the_style_queries(voice_model, voice_processor):
    rate = voice_processor.voice_sampling_rate  # the codec's: reference clips are read by the codec
    codes, mask = voice_model.encode_audio(speech_like(2.0, rate)[None], None)
    voice_model.get_voice_concepts(codes, mask).sum().backward()
    assert voice_model.concept_adapter.style_queries.grad.abs().sum() > 0
    assert voice_model.concept_adapter.queries.grad is None  # the content queries do not read voices


def test_generate_speaks_in_the_given_voice(voice_model, voice_processor):
    rate = voice_processor.voice_sampling_rate  # the codec's: reference clips are read by the codec
    prompt = build_prompt()
    question = speech_like(1.5, rate)
    replies = []
    for f0 in (100.0, 260.0):
        inputs = voice_processor(text=prompt, audio=question, voice=speech_like(2.0, rate, f0), sampling_rate=rate)
        replies.append(voice_model.generate(**inputs, thinker_max_new_tokens=4, max_audio_seconds=1.0, seed=0,
                                            tokenizer=voice_processor.tokenizer))
    assert replies[0].sequences.tolist() == replies[1].sequences.tolist()  # the voice does not change the words
    assert not torch.equal(replies[0].audio_codes[0], replies[1].audio_codes[0])  # but it does change the audio


def test_bad_reference_clips_are_refused_with_what_to_do(voice_processor):
    rate = voice_processor.voice_sampling_rate  # the codec's: reference clips are read by the codec
    with pytest.raises(ValueError, match=r"0.50 s long; give at least 1 s"):
        voice_processor(text="a", voice=speech_like(0.5, rate), sampling_rate=rate)
    with pytest.raises(ValueError, match="silent.*recording of the voice"):
        voice_processor(text="a", voice=torch.zeros(2 * rate), sampling_rate=rate)
    with pytest.raises(ValueError, match="one voice clip per text: 1 clips for 2 texts"):
        voice_processor(text=["a", "b"], voice=[speech_like(2.0, rate)], sampling_rate=rate)
    # Too long: cut to its first 5 s. Another rate: resampled to the codec's.
    long = voice_processor(text="a", voice=speech_like(8.0, rate), sampling_rate=rate)
    assert long["voice_values"].shape[-1] == 5 * rate
    other = voice_processor(text="a", voice=speech_like(2.0, 2 * rate), sampling_rate=2 * rate)
    assert other["voice_values"].shape[-1] == 2 * rate


def test_a_model_without_style_concepts_says_how_to_get_one(tiny_model):
    with pytest.raises(ValueError, match="no reference-voice input.*num_style_concepts > 0"):
        tiny_model.get_voice_concepts(torch.zeros(1, tiny_model.config.codec_num_codebooks, 80, dtype=torch.long))


# ---- the voice's pitch (talker_config.voice_pitch) -------------------------------------------------------------


@pytest.fixture
def pitch_model(voice_config):
    voice_config.talker_config.voice_pitch = True
    torch.manual_seed(0)
    return ConceptTalkerForConditionalGeneration(voice_config).eval()


def test_pitch_features_are_octaves_from_150_hz_with_a_voiced_flag():
    features = voice_pitch_features(torch.tensor([150.0, 300.0, 75.0, 0.0, float("nan")]))
    torch.testing.assert_close(features, torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, -1.0], [0.0, 0.0], [0.0, 0.0]]))


def test_the_clips_pitch_is_measured_and_read_as_one_more_style_position(pitch_model, voice_processor):
    rate = voice_processor.voice_sampling_rate  # the codec's: reference clips are read by the codec
    clips = [speech_like(2.0, rate, 110.0), speech_like(3.0, rate, 230.0)]
    batch = voice_processor(text=["a", "b"], voice=clips, sampling_rate=rate)
    with torch.no_grad():
        style = pitch_model.voice_style(batch["voice_values"], batch["voice_values_mask"])
        expected = pitch_model.talker.pitch_concept(torch.tensor([110.0, 230.0]))[:, 0]
        unvoiced = pitch_model.talker.pitch_concept(torch.tensor([0.0]))[0, 0]
    assert style.shape == (2, 5, pitch_model.config.thinker_config.hidden_size)  # 4 style concepts + the pitch
    torch.testing.assert_close(style[:, -1], expected, rtol=0, atol=1e-3)  # each clip's own pitch, measured (YIN)
    assert not torch.allclose(style[0, -1], unvoiced, atol=1e-3)


def test_a_measured_pitch_is_used_as_given_and_codes_alone_are_decoded_to_measure_it(pitch_model, monkeypatch):
    """Training passes the dataset's `reference_f0` (no decoding per batch); codes alone are decoded."""
    k, size = pitch_model.config.codec_num_codebooks, pitch_model.config.codebook_size
    codes, mask = torch.randint(0, size, (2, k, 120)), torch.ones(2, 120, dtype=torch.bool)
    decoded = []
    real_decode = pitch_model.codec.decode
    monkeypatch.setattr(pitch_model.codec, "decode", lambda c: decoded.append(c.shape) or real_decode(c))
    with torch.no_grad():
        given = pitch_model.get_voice_concepts(codes, mask, voice_f0=torch.tensor([120.0, 0.0]))
        torch.testing.assert_close(given[:, -1], pitch_model.talker.pitch_concept(torch.tensor([120.0, 0.0]))[:, 0])
        assert decoded == []
        pitch_model.get_voice_concepts(codes, mask)
    assert decoded == [(2, k, 120)]
    with pytest.raises(ValueError, match=r"one median F0 \(Hz\) per reference clip, shape \[2\]"):
        pitch_model.get_voice_concepts(codes, mask, voice_f0=torch.tensor([120.0]))


def test_the_collator_passes_the_datasets_measured_pitch(voice_processor, voice_config):
    import numpy as np

    from modeling_concept_talker.phonemes import reply_symbols

    k = voice_config.codec_num_codebooks
    spoken = reply_symbols("Hello.")
    shares = np.diff(np.round(np.linspace(0, 20, len(spoken.symbols) + 1))).astype(int).tolist()
    row = {"id": "r0", "instruction": "", "question_text": "hi", "reply_text": "Hello.", "voice_given": True,
           "question_features": np.zeros((30, voice_config.ear_config.d_model), np.float32),
           "question_word_spans": [[0, 2]], "question_word_seconds": [[0.1, 0.4]],
           "reply_phonemes": spoken.symbols, "reply_phoneme_chars": list(spoken.chars), "reply_phoneme_frames": shares,
           "reply_codes": [[2] * 20] * k, "reference_codes": [[3] * 60] * k}
    collate = SpokenTurnCollator(voice_processor, "reply", voice_config, voice=True)
    batch = collate([{**row, "reference_f0": 182.5}, {**row, "reference_f0": 0.0}])
    assert batch["voice_f0"].tolist() == [182.5, 0.0]
    assert "voice_f0" not in collate([row, row])  # older datasets: the model measures the pitch itself


def test_voice_pitch_needs_style_concepts():
    from configuration import load_preset

    with pytest.raises(ValueError, match="needs num_style_concepts > 0"):
        ConceptTalkerForConditionalGeneration(load_preset("tiny", talker_config={"voice_pitch": True}))
