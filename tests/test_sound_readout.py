"""Concepts read by sound (`adapter_config.readout: sound`): each concept is read as the token whose sound it is nearest
(a fixed table from espeak-ng's phonemes of each token), and the thinker reads that token's own embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from modeling_concept_talker import ConceptTalkerForConditionalGeneration, build_prompt
from modeling_concept_talker.phonemes import token_sound_table
from modeling_concept_talker.streaming import SpokenTurn

BLANK = 151668
GREEDY = dict(thinker_max_new_tokens=8, talker_do_sample=False, max_audio_seconds=1.0)


def speech(seconds: float = 2.3, rate: int = 16000) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(int(seconds * rate)).astype(np.float32) * 0.1


@pytest.fixture
def sound_model(lively_model, tiny_processor):
    """A lively tiny model reading by the sound of 2,000 ordinary tokens (and the blank)."""
    lively_model.use_sound_readout(tiny_processor.tokenizer, torch.arange(1000, 3000))
    return lively_model


def test_tokens_that_sound_alike_lie_close():
    pieces = [" engine", " engines", " Engine", " cat", " catch", " seven", " seventeen", ",", ""]
    table = token_sound_table(pieces, 128)
    similarity = table @ table.T
    assert torch.allclose(table.norm(dim=-1), torch.ones(len(pieces)))
    assert similarity[0, 1] > 0.6 and similarity[0, 2] > 0.6  # engine ~ engines ~ Engine
    assert similarity[3, 4] > 0.5 and similarity[5, 6] > 0.5  # cat ~ catch, seven ~ seventeen
    assert similarity[0, 3] < 0.35 and similarity[0, 5] < 0.35  # engine is neither cat nor seven
    assert similarity[0, 2] < 0.99  # a token of its own, even where it sounds the same
    assert abs(similarity[7, 8]) < 0.4  # no letters: only a vector of its own
    assert torch.equal(table, token_sound_table(pieces, 128))
    assert not torch.equal(table, token_sound_table(pieces, 128, seed=1))


def test_the_thinker_reads_the_embedding_of_the_token_a_concept_sounds_like(sound_model, tiny_processor):
    model = sound_model
    tokens = model.concept_adapter.sound_tokens
    assert len(tokens) == 2001 and int(tokens[-1]) == BLANK
    assert model.config.adapter_config.sound_vocabulary_size == 2001
    picks = torch.tensor([5, 2000, 17, 2000, 40])  # sound-table rows; 2000 is the blank
    concepts = model.concept_adapter.token_sounds[picks][None] * 2.5  # any length: read by cosine
    concepts = concepts + 0.01 * torch.randn_like(concepts)
    mask = torch.ones(1, 5, dtype=torch.bool)
    assert model.concept_keep(concepts, mask).tolist() == [[True, False, True, False, True]]
    read = model.concepts_for_thinker(concepts)
    expected = model.get_input_embeddings().weight[tokens[picks]]
    torch.testing.assert_close(read[0], expected)


def test_the_adapter_learns_by_sound_alone(sound_model, tiny_processor):
    """The concept loss trains the adapter (cross-entropy over the sound table, no distance term); the thinker's
    losses do not reach it, and the thinker reads the chosen tokens' embeddings, which its loss does train."""
    model = sound_model.train()
    batch = tiny_processor(text=build_prompt(), audio=speech(), sampling_rate=16000)
    concepts, mask = model.hear(batch["input_values"], batch["input_values_mask"])
    labels = model.concept_adapter.sound_tokens[torch.arange(mask.shape[1]) % 50][None].clone()
    loss, accuracy = model.concept_loss(concepts, mask, labels)
    logits = model.concept_logits(concepts[mask])
    assert torch.isclose(loss, F.cross_entropy(logits, torch.arange(mask.shape[1]) % 50))
    model.zero_grad()
    loss.backward()
    assert model.concept_adapter.projection[0].weight.grad.abs().sum() > 0
    model.zero_grad()
    model.set_trainable(thinker="full")
    model(**batch, labels=batch["input_ids"].clone()).loss.backward()
    assert model.concept_adapter.projection[0].weight.grad is None
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0


def test_the_sound_table_is_saved_with_the_model(sound_model, tiny_processor, tmp_path):
    sound_model.eval().save_pretrained(tmp_path)
    loaded = ConceptTalkerForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.adapter_config.readout == "sound"
    assert torch.equal(loaded.concept_adapter.token_sounds, sound_model.concept_adapter.token_sounds)
    assert torch.equal(loaded.concept_adapter.sound_tokens, sound_model.concept_adapter.sound_tokens)
    inputs = tiny_processor(text=build_prompt(), audio=speech(), sampling_rate=16000)
    loaded.tokenizer = tiny_processor.tokenizer
    assert (loaded.generate(**inputs, **GREEDY).sequences.tolist()
            == sound_model.generate(**inputs, **GREEDY).sequences.tolist())


def test_audio_fed_in_pieces_is_heard_as_the_whole(sound_model, tiny_processor):
    audio = speech()
    whole = sound_model.eval().generate(**tiny_processor(text=build_prompt(), audio=audio, sampling_rate=16000),
                                        **GREEDY)
    turn = SpokenTurn(sound_model, tiny_processor, sampling_rate=16000, **GREEDY)
    for start in range(0, len(audio), 7000):
        turn.feed(audio[start : start + 7000])
    assert turn.reply().sequences.tolist() == whole.sequences.tolist()


def test_an_empty_sound_table_says_how_to_build_it(tiny_config, tiny_processor):
    tiny_config.adapter_config.readout = "sound"
    model = ConceptTalkerForConditionalGeneration(tiny_config)
    concepts, mask = model.hear(**{k: v for k, v in tiny_processor(
        text=build_prompt(), audio=speech(), sampling_rate=16000).items() if k.startswith("input_values")})
    with pytest.raises(ValueError, match=r"sound table is empty.*use_sound_readout\(tokenizer\)"):
        model.concept_keep(concepts, mask)
    tiny_config.adapter_config.readout = "spelling"
    with pytest.raises(ValueError, match=r"readout must be one of \['thinker', 'sound'\]"):
        ConceptTalkerForConditionalGeneration(tiny_config)


def test_a_word_outside_the_sound_table_is_a_miss_in_evaluation_and_an_error_in_training(sound_model, tiny_processor):
    batch = tiny_processor(text=build_prompt(), audio=speech(), sampling_rate=16000)
    concepts, mask = sound_model.eval().hear(batch["input_values"], batch["input_values_mask"])
    labels = torch.full(mask.shape, 50000)  # a token the table does not hold
    labels[0, 0] = BLANK
    _, accuracy = sound_model.concept_loss(concepts, mask, labels)
    assert accuracy <= 1 / mask.shape[1]
    with pytest.raises(ValueError, match=r"\[50000\] are not in the sound table.*use_sound_readout"):
        sound_model.train().concept_loss(concepts, mask, labels)
