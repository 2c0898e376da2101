"""Bad input gets an error that says what to do, never a shape error from deep inside."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeling_concept_talker import ConceptTalkerConfig, ConceptTalkerForConditionalGeneration, build_prompt


def test_empty_audio(tiny_processor):
    with pytest.raises(ValueError, match=r"empty \(0 samples\).*at least one codec frame"):
        tiny_processor(text=build_prompt(), audio=np.zeros(0, np.float32), sampling_rate=16000)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_samples(tiny_processor, bad):
    audio = np.zeros(16000, np.float32)
    audio[100] = bad
    with pytest.raises(ValueError, match="NaN or infinite.*nan_to_num"):
        tiny_processor(text=build_prompt(), audio=audio, sampling_rate=16000)


@pytest.mark.parametrize("rate", ["16000", None, 16000.5, -8000, True, [16000]])
def test_unsupported_sampling_rate(tiny_processor, rate):
    with pytest.raises((TypeError, ValueError), match="sampling_rate"):
        tiny_processor(text=build_prompt(), audio=np.zeros(1600, np.float32), sampling_rate=rate)


def test_audio_longer_than_the_maximum(tiny_processor):
    audio = np.zeros(int(16000 * (tiny_processor.max_audio_seconds + 1)), np.float32)
    with pytest.raises(ValueError, match=r"31.0 s long.*at most 30 s.*split the recording"):
        tiny_processor(text=build_prompt(), audio=audio, sampling_rate=16000)


def test_text_without_placeholder(tiny_processor):
    with pytest.raises(ValueError, match=r"0 audio placeholder.*1 audio clip.*one <\|audio_pad\|> in the text for each clip"):
        tiny_processor(text="Hello there", audio=np.zeros(1600, np.float32), sampling_rate=16000)


def test_text_with_too_many_placeholders(tiny_processor):
    with pytest.raises(ValueError, match=r"2 audio placeholder.*1 audio clip"):
        tiny_processor(text=build_prompt() + "<|audio_pad|>", audio=np.zeros(1600, np.float32), sampling_rate=16000)


def test_model_refuses_slot_count_mismatch(tiny_model, tiny_processor):
    batch = tiny_processor(text=build_prompt(), audio=np.zeros(16000, np.float32), sampling_rate=16000)
    # Audio three times as long as the text has slots for.
    batch["input_values"] = torch.zeros(1, 3 * 24000)
    batch["input_values_mask"] = torch.ones(1, 3 * 24000, dtype=torch.long)
    with pytest.raises(ValueError, match=r"<\|audio_pad\|> slots but the audio makes.*ConceptTalkerProcessor"):
        tiny_model(**batch)


def test_model_refuses_placeholders_without_audio(tiny_model, tiny_processor):
    batch = tiny_processor(text=build_prompt(), audio=np.zeros(16000, np.float32), sampling_rate=16000)
    batch.pop("input_values"), batch.pop("input_values_mask")
    with pytest.raises(ValueError, match="placeholders but no audio was given"):
        tiny_model(**batch)


def test_codec_and_talker_disagree_on_codebooks(tiny_config):
    fields = tiny_config.to_dict()
    fields["talker_config"]["num_codebooks"] = 8
    with pytest.raises(ValueError, match=r"talker predicts 8 codebooks but the codec is set to use 4.*num_codebooks=4"):
        ConceptTalkerConfig(**fields)
    fields["talker_config"]["num_codebooks"] = 4
    fields["talker_config"]["codebook_size"] = 2048
    with pytest.raises(ValueError, match=r"2048 entries but the encodec codec's have 1024"):
        ConceptTalkerConfig(**fields)


def test_too_many_codebooks_for_the_codec(tiny_config):
    fields = tiny_config.to_dict()
    fields["codec_num_codebooks"] = 64
    fields["talker_config"]["num_codebooks"] = None
    with pytest.raises(ValueError, match=r"codec_num_codebooks=64.*has 32 codebooks"):
        ConceptTalkerConfig(**fields)


def test_window_not_a_whole_number_of_frames():
    with pytest.raises(ValueError, match=r"window_seconds=1.0 is 12.5 frames.*whole number of frames"):
        ConceptTalkerConfig(codec_config={"model_type": "mimi"}, codec_num_codebooks=8)


def test_audio_codes_out_of_range(tiny_processor):
    from configuration import load_preset

    # A model that hears through its codec's codes (a config of its own: the adapter's sizes follow the ear).
    model = ConceptTalkerForConditionalGeneration(load_preset("tiny", ear_config=None)).eval()
    batch = tiny_processor(text=build_prompt(), audio=np.zeros(16000, np.float32), sampling_rate=16000)
    batch.pop("input_values"), batch.pop("input_values_mask")
    batch["input_audio_codes"] = torch.full((1, 4, 75), 5000)
    with pytest.raises(ValueError, match=r"outside this codec's codebook of 1024 entries"):
        model(**batch)


def test_audio_labels_without_text_labels(tiny_model, tiny_processor):
    batch = tiny_processor(text=build_prompt(), audio=np.zeros(16000, np.float32), sampling_rate=16000)
    with pytest.raises(ValueError, match="audio_labels need text labels"):
        tiny_model(**batch, audio_labels=torch.zeros(1, 4, 10, dtype=torch.long))
