"""How the tutor listens: Whisper's encoder as the ear (on the question's own length), the concept slots the adapter is
taught (the token spoken in each stretch of time), and blank concepts left out of what the thinker reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import liven

from modeling_concept_talker import build_prompt
from concept_talker.data.collators import concept_slot_labels

BLANK = 151668


def test_each_token_goes_to_the_slot_of_its_time(tiny_processor):
    """Tokens of a word share out the word's time; punctuation takes the end of the word before it; a taken slot
    sends a token to the next free one."""
    text = "What does brave mean?"
    tokenizer = tiny_processor.tokenizer
    spans = [[0, 4], [5, 9], [10, 15], [16, 20]]
    seconds = [[0.05, 0.30], [0.30, 0.55], [0.70, 1.10], [1.20, 1.45]]
    labels = concept_slot_labels(text, spans, seconds, tokenizer, windows=2, per_window=6, window_seconds=1.0,
                                 blank_id=BLANK)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(labels) == 12 and [t for t in labels if t != BLANK] == ids  # every token, in order
    # "What" at 0.175 s -> slot 1; " does" at 0.425 -> slot 2; " brave" at 0.9 -> slot 5; " mean" at 1.325 -> window 1
    # slot 1; "?" at the end of "mean", 1.45 s -> slot 2.
    assert labels[1] == ids[0] and labels[2] == ids[1] and labels[5] == ids[2]
    assert labels[6 + 1] == ids[3] and labels[6 + 2] == ids[4]
    crowded = concept_slot_labels(text, spans, [[0.0, 0.01]] * 4, tokenizer, windows=1, per_window=6,
                                  window_seconds=1.0, blank_id=BLANK)
    assert crowded[:5] == ids  # all in the first slots, in order, when their times collide


def test_blank_concepts_are_left_out_as_padding(lively_model, tiny_processor):
    """A blank concept changes nothing the thinker computes: the reply is the one of the same prompt without it."""
    model = lively_model
    audio = np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 0.1
    batch = tiny_processor(text=build_prompt(), audio=audio, sampling_rate=16000)
    concepts, mask = model.hear(batch["input_values"], batch["input_values_mask"])
    table = model.get_input_embeddings().weight
    with torch.no_grad():  # make every other concept read as the blank token, the rest as words
        concepts = concepts.clone()
        concepts[0, ::2] = table[BLANK] * 3
        concepts[0, 1::2] = table[1000 : 1000 + concepts.shape[1] // 2]
    keep = model.concept_keep(concepts, mask)
    assert keep[0, 1::2].all() and not keep[0, ::2].any()
    embeds, attention = model.thinker_inputs(batch["input_ids"], batch["attention_mask"], concepts=(concepts, mask))
    placeholder = batch["input_ids"][0] == model.config.audio_token_id
    assert attention[0, placeholder].tolist() == keep[0].long().tolist()
    with torch.no_grad():
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        masked = model.thinker(inputs_embeds=embeds, attention_mask=attention, position_ids=positions).logits[0, -1]
        read = attention[0].bool()
        compact = model.thinker(inputs_embeds=embeds[:, read]).logits[0, -1]
    torch.testing.assert_close(masked, compact, rtol=1e-4, atol=1e-4)


def test_silence_leaves_every_concept_out_when_the_adapter_hears_nothing(tiny_model, tiny_processor):
    """Whatever the adapter makes of a clip, the thinker reads only concepts that are not blank; with all blank it
    reads the prompt alone (and the reply is that of an empty question)."""
    batch = tiny_processor(text=build_prompt(), audio=np.zeros(16000, np.float32), sampling_rate=16000)
    concepts, mask = tiny_model.hear(batch["input_values"], batch["input_values_mask"])
    blank = tiny_model.get_input_embeddings().weight[BLANK].expand_as(concepts)
    _, attention = tiny_model.thinker_inputs(batch["input_ids"], batch["attention_mask"], concepts=(blank, mask))
    assert int(attention.sum()) == int(batch["attention_mask"].sum()) - int(mask.sum())


def test_the_ear_hears_the_question_at_its_own_length(assets):
    """Whisper base's encoder run on the clip's length (positions cut, as Ultravox does) instead of a 30 s pass: on
    real speech its frames are the 30 s pass's frames (cosine similarity 0.95-0.99 per clip), at a tenth of the cost
    for a 3 s question. (Whisper's own decoder, never trained on cut frames, stops early reading them: the adapter
    is trained on what the ear gives, so that is not the test.)"""
    import soundfile as sf
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from modeling_concept_talker.audio import resample
    from modeling_concept_talker.ear import WhisperEar
    from concept_talker.data.ljspeech import read_metadata

    folder = assets / "whisper-base"
    whisper = WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    processor = WhisperProcessor.from_pretrained(folder)
    ear = WhisperEar(whisper.config)
    ear.encoder.load_state_dict(whisper.model.encoder.state_dict())
    speech = assets / "speech" / "ljspeech-dev"
    for utterance, _ in read_metadata(str(speech))[:4]:
        audio, rate = sf.read(speech / "wavs" / f"{utterance}.flac", dtype="float32")
        wave = resample(torch.from_numpy(audio), rate, 16000)
        features = processor(wave.numpy(), sampling_rate=16000, return_tensors="pt").input_features  # 30 s
        with torch.no_grad():
            full = whisper.model.encoder(features).last_hidden_state[0]
            frames, mask = ear(wave[None])
        spoken = int(len(wave) / ear.hop_length)
        assert frames.shape[1] == mask.shape[1] == -(-len(wave) // 16000) * 50  # whole 1 s windows
        similarity = torch.nn.functional.cosine_similarity(full[:spoken], frames[0, :spoken], dim=-1)
        assert similarity.mean() > 0.93, (utterance, float(similarity.mean()))


def test_a_clip_longer_than_the_ear_is_refused_with_what_to_do(tiny_model):
    with pytest.raises(ValueError, match="hears at most 30 s.*stream it with ear_context_windows"):
        tiny_model.ear(torch.zeros(1, 16000 * 31))


def test_a_checkpoint_heard_through_its_codec_refuses_ear_frames():
    from configuration import load_preset
    from modeling_concept_talker import ConceptTalkerForConditionalGeneration

    # A config of its own, not the tiny one edited: the adapter's sizes follow the ear when the config is made.
    model = ConceptTalkerForConditionalGeneration(load_preset("tiny", ear_config=None))
    with pytest.raises(ValueError, match="hears through its codec"):
        model.hear(input_features=torch.zeros(1, 50, 512))


def test_ear_frames_of_another_width_are_refused(tiny_model):
    with pytest.raises(ValueError, match="made by another speech encoder"):
        tiny_model.hear(input_features=torch.zeros(1, 50, 512))
    with pytest.raises(ValueError, match="not codec codes"):
        tiny_model.hear(input_audio_codes=torch.zeros(1, 4, 75, dtype=torch.long))


def test_streamed_ear_frames_equal_the_whole_clip(tiny_model):
    """With left context the ear encodes each window as it completes, and the frames equal those of the whole clip
    encoded the same way."""
    from modeling_concept_talker.ear import EarStream

    liven(tiny_model)
    tiny_model.ear.context_windows = 2
    audio = torch.randn(int(3.4 * 16000)) * 0.1
    whole, _ = tiny_model.ear(audio[None])
    stream = EarStream(tiny_model.ear)
    pieces = [stream.push(audio[i : i + 7000]) for i in range(0, len(audio), 7000)] + [stream.flush()]
    torch.testing.assert_close(torch.cat(pieces), whole[0])
