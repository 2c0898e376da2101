"""The processor on the real Qwen2.5 tokenizer: chat format, placeholders, audio preparation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modeling_concept_talker import AUDIO_END_TOKEN, AUDIO_START_TOKEN, AUDIO_TOKEN, ConceptTalkerProcessor, build_prompt
from modeling_concept_talker.audio import count_concept_slots, prepare_audio, resample


def test_real_tokenizer_gets_audio_tokens_at_free_embedding_rows(tiny_processor, tiny_config):
    tokenizer = tiny_processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids([AUDIO_START_TOKEN, AUDIO_TOKEN, AUDIO_END_TOKEN])
    assert ids == [tiny_config.audio_start_token_id, tiny_config.audio_token_id, tiny_config.audio_end_token_id]
    assert ids == [151665, 151666, 151667]  # after Qwen2.5's 151,665 ids, inside its 151,936-row table
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [151644, 151645]


def test_chat_template_matches_build_prompt(tiny_processor):
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Speak slowly."}]}]
    rendered = tiny_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == build_prompt(instruction="Speak slowly.")
    assert rendered.endswith("<|im_start|>user\n<|audio_pad|>\nSpeak slowly.<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("seconds,expected_slots", [(0.5, 6), (1.0, 6), (1.01, 12), (2.5, 18), (5.0, 30)])
def test_each_clip_gets_slots_for_its_length(tiny_processor, seconds, expected_slots):
    audio = np.zeros(int(round(seconds * 24000)), np.float32)
    batch = tiny_processor(text=build_prompt(), audio=audio, sampling_rate=24000)
    ids = batch["input_ids"][0].tolist()
    start = ids.index(tiny_processor.tokenizer.convert_tokens_to_ids(AUDIO_START_TOKEN))
    end = ids.index(tiny_processor.tokenizer.convert_tokens_to_ids(AUDIO_END_TOKEN))
    assert end - start - 1 == expected_slots
    assert all(i == tiny_processor.audio_token_id for i in ids[start + 1 : end])


def test_slots_match_what_the_model_makes(tiny_model, tiny_processor):
    for seconds in (0.3, 1.7, 3.0):
        audio = np.random.default_rng(0).standard_normal(int(seconds * 16000)).astype(np.float32)
        batch = tiny_processor(text=build_prompt(), audio=audio, sampling_rate=16000)
        concepts, concept_mask = tiny_model.hear(batch["input_values"], batch["input_values_mask"])
        assert int(concept_mask.sum()) == int((batch["input_ids"] == tiny_processor.audio_token_id).sum())


def test_batch_of_texts_and_clips_in_reading_order(tiny_processor):
    clips = [np.zeros(24000, np.float32), np.zeros(3 * 24000, np.float32), np.zeros(12000, np.float32)]
    texts = [build_prompt(), "<|im_start|>user\n" + AUDIO_TOKEN + " and " + AUDIO_TOKEN + "<|im_end|>\n"]
    batch = tiny_processor(text=texts, audio=clips, sampling_rate=24000)
    assert batch["input_values"].shape == (3, 3 * 16000)  # at the ear's rate
    assert batch["input_values_mask"].sum(-1).tolist() == [16000, 48000, 8000]
    slots = (batch["input_ids"] == tiny_processor.audio_token_id).sum(-1).tolist()
    assert slots == [6, 18 + 6]
    # Left padding for generation by default.
    assert batch["attention_mask"][1, -1] == 1 and batch["attention_mask"][1, 0] == 0 or slots[1] > slots[0]


def test_stereo_any_layout_is_downmixed(tiny_processor):
    left = np.sin(np.linspace(0, 100, 16000)).astype(np.float32)
    right = -0.5 * left
    channels_first = tiny_processor.prepare_audio(np.stack([left, right]), 16000)
    channels_last = tiny_processor.prepare_audio(np.stack([left, right], axis=1), 16000)
    assert torch.allclose(channels_first, torch.from_numpy(0.25 * left), atol=1e-6)
    assert torch.equal(channels_first, channels_last)


def test_torch_int16_and_list_inputs(tiny_processor):
    wave = (np.sin(np.linspace(0, 50, 2400)) * 0.5).astype(np.float32)
    as_int16 = (wave * 32767).astype(np.int16)
    from_int16 = tiny_processor.prepare_audio(torch.from_numpy(as_int16), 16000)
    assert torch.allclose(from_int16, torch.from_numpy(wave), atol=1e-4)
    assert torch.equal(tiny_processor.prepare_audio(wave.tolist(), 16000), torch.from_numpy(wave))


def test_resampling_keeps_a_tone_and_removes_aliases():
    rate, target = 44100, 24000
    t = torch.arange(rate) / rate
    tone = resample(torch.sin(2 * math.pi * 1000 * t), rate, target)
    assert tone.numel() == target
    reference = torch.sin(2 * math.pi * 1000 * torch.arange(target) / target)
    assert (tone - reference)[2000:-2000].abs().max() < 5e-3
    alias = resample(torch.sin(2 * math.pi * 15000 * t), rate, target)  # above the new Nyquist (12 kHz)
    assert alias[2000:-2000].pow(2).mean().sqrt() < 5e-3


def test_prepare_audio_resamples_to_the_codec_rate():
    wave = prepare_audio(np.zeros(16000, np.float32), 16000, 24000)
    assert wave.shape == (24000,) and wave.dtype == torch.float32


def test_count_concept_slots():
    assert count_concept_slots(75, 75, 4) == 4
    assert count_concept_slots(76, 75, 4) == 8
    assert count_concept_slots(1, 50, 2) == 2


def test_processor_save_and_load(tiny_processor, tmp_path):
    tiny_processor.save_pretrained(tmp_path)
    loaded = ConceptTalkerProcessor.from_pretrained(tmp_path)
    audio = np.zeros(30000, np.float32)
    a = tiny_processor(text=build_prompt(), audio=audio, sampling_rate=22050)
    b = loaded(text=build_prompt(), audio=audio, sampling_rate=22050)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["input_values"], b["input_values"])
    assert loaded.window_frames == tiny_processor.window_frames and loaded.sampling_rate == 16000
    assert loaded.voice_sampling_rate == 24000  # reference voices are read by the codec
