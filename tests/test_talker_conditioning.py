"""What the talker is told besides the reply's states: typed instructions through its prompt states
(`talker_config.prompt_states`, the thinker's states of the prompt's last positions), the reply's predicted
length counted down to the end of audio (`duration_conditioning`), and a reference voice (style concepts, its
pitch, and the voice on every audio step). And: the talker computes the same thing in training (teacher forcing)
as in generation, with all of these."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import liven

from modeling_concept_talker import ConceptTalkerForConditionalGeneration, ConceptTalkerProcessor, build_prompt
from modeling_concept_talker.generation import SpokenGenerationConfig, TalkerStream, prefill
from modeling_concept_talker.streaming import SpokenTurn
from modeling_concept_talker.talker import DURATION_OFFSET, IGNORE_INDEX, countdown_ids, prompt_states

GREEDY = dict(thinker_max_new_tokens=8, talker_do_sample=False, max_audio_seconds=1.0)


@pytest.fixture
def prompt_config():
    from configuration import load_preset

    return load_preset("tiny", talker_config={"prompt_states": 8, "duration_conditioning": True, "num_style_concepts": 4,
                                              "voice_pitch": True, "voice_every_step": True})


@pytest.fixture
def prompt_model(prompt_config):
    torch.manual_seed(0)
    model = liven(ConceptTalkerForConditionalGeneration(prompt_config).eval())
    with torch.no_grad():  # big enough that the talker's codes depend on the states and the countdown it reads
        model.talker.state_proj.weight.normal_(std=0.5)
        model.talker.token_proj.weight.normal_(std=0.5)
        model.talker.countdown_embedding.weight.normal_(std=1.0)
        model.talker.voice_proj.weight.normal_(std=1.0)
    return model


@pytest.fixture
def prompt_processor(prompt_config, tokenizer_dir):
    return ConceptTalkerProcessor.from_config(prompt_config, tokenizer_dir)


def question(seconds: float = 1.7, rate: int = 24000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(seconds * rate)).astype(np.float32) * 0.1


def test_prompt_states_pair_each_position_with_the_state_before_it():
    hidden = torch.arange(10.0)[None, :, None].repeat(2, 1, 3)  # value = position
    embeds = hidden + 100
    states, tokens = prompt_states(hidden, embeds, ends=torch.tensor([7, 4]), count=3)
    assert states[0, :, 0].tolist() == [3, 4, 5] and tokens[0, :, 0].tolist() == [104, 105, 106]
    assert states[1, :, 0].tolist() == [0, 1, 2] and tokens[1, :, 0].tolist() == [101, 102, 103]
    # A prompt shorter than the count (or left padding) repeats its first usable position, never a padding one.
    states, tokens = prompt_states(hidden, embeds, ends=torch.tensor([10, 10]), count=4, starts=torch.tensor([0, 8]))
    assert tokens[0, :, 0].tolist() == [106, 107, 108, 109]
    assert tokens[1, :, 0].tolist() == [109, 109, 109, 109] and states[1, :, 0].tolist() == [8, 8, 8, 8]


def test_the_instruction_changes_the_audio_of_the_same_reply_text(prompt_model, prompt_processor):
    """The same reply states (read after "Speak slowly."), only the prompt states differ: the codes differ. (Through
    `generate` the reply's own states would differ too, and hide whether the prompt states reach the talker.)"""
    audio = question()
    reply = prompt_processor.tokenizer("The answer is nine.<|im_end|>", add_special_tokens=False).input_ids
    settings = SpokenGenerationConfig(**GREEDY)
    embed = prompt_model.get_input_embeddings()
    prompts, reply_states = [], []
    for instruction in ("Speak slowly.", "Speak quickly."):
        inputs = prompt_processor(text=build_prompt(instruction), audio=audio, sampling_rate=24000)
        runner, _, hidden, prompt = prefill(prompt_model, inputs, settings)
        prompts.append(prompt)
        states = []
        for token in reply:
            states.append(hidden[0])
            hidden = runner.append(embed(torch.tensor([[token]])))[1][:, -1]
        reply_states.append(states)
    assert not torch.equal(reply_states[0][0], reply_states[1][0])  # which is why only one set is used below
    codes = []
    for prompt in prompts:
        stream = TalkerStream(prompt_model, settings, prompt=prompt)
        for i, (state, token) in enumerate(zip(reply_states[0], reply)):
            stream.add_text(state, embed(torch.tensor(token)), last=i == len(reply) - 1)
        while stream.write_block():
            pass
        codes.append(stream.all_frames())
    assert not torch.equal(codes[0], codes[1])


def test_without_prompt_states_the_talker_reads_only_the_reply(prompt_config, prompt_processor):
    """Control for the test above: with none, generation gives the talker no prompt states at all."""
    prompt_config.talker_config.prompt_states = 0
    model = ConceptTalkerForConditionalGeneration(prompt_config).eval()
    inputs = prompt_processor(text=build_prompt("Speak slowly."), audio=question(), sampling_rate=24000)
    assert prefill(model, inputs, SpokenGenerationConfig())[3] is None


def predict_exactly(model, frames: int, tokens: int) -> None:
    """Make the duration predictor say `frames` for any reply of `tokens` tokens."""
    per_token = torch.tensor(frames / tokens)
    with torch.no_grad():
        model.talker.duration_head.weight.zero_()
        model.talker.duration_head.bias.fill_(float(per_token + torch.log(-torch.expm1(-per_token))) - DURATION_OFFSET)


def speech_like(seconds: float, f0: float, rate: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.2 * sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 5))).astype(np.float32)


@pytest.mark.parametrize("instruction, voice", [(None, False), ("Speak slowly.", False), ("Speak slowly.", True)])
def test_training_and_generation_give_the_talker_the_same_view(prompt_model, prompt_processor, instruction, voice):
    """Teacher-forced on what generation wrote, the talker's greedy choice at every step is what it wrote: the
    prefix (style concepts and pitch of a voice, prompt states), the schedule, the countdown and the voice on each
    audio step are laid out the same way in both."""
    clip = speech_like(2.0, 180.0) if voice else None
    inputs = prompt_processor(text=build_prompt(instruction), audio=question(), voice=clip, sampling_rate=24000)
    voice_inputs = {k: inputs[k] for k in ("voice_values", "voice_values_mask") if k in inputs}
    settings = dict(GREEDY, thinker_runner="reference", talker_runner="reference", max_audio_seconds=0.6)
    frames = int(0.6 * 75)  # this random talker writes no EOS: the length limit ends the audio
    tokens = len(prompt_model.generate(**inputs, **settings).sequences[0])
    predict_exactly(prompt_model, frames, tokens)  # training counts down the true length, generation the predicted
    out = prompt_model.generate(**inputs, **settings)
    tokens, codes = out.sequences[0].tolist(), out.audio_codes[0]
    assert codes.shape[1] == frames
    input_ids = torch.cat([inputs["input_ids"], torch.tensor([tokens])], dim=1)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[0, inputs["input_ids"].shape[1]:] = torch.tensor(tokens)
    with torch.no_grad():
        forced = prompt_model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                              input_values=inputs["input_values"], input_values_mask=inputs["input_values_mask"],
                              labels=labels, audio_labels=codes[None], **voice_inputs)
    assert forced.duration_loss < 1e-6  # the predictor said exactly this length
    eos = prompt_model.config.codebook_size
    chosen = forced.audio_logits[0, ..., :eos].argmax(-1)  # [steps, codebooks]; codes only (generation hit no EOS)
    for k in range(codes.shape[0]):
        assert chosen[k : k + frames, k].tolist() == codes[k].tolist()


def test_countdown_ids():
    known = torch.ones(8, dtype=torch.bool)
    ids = countdown_ids(torch.tensor([-5, 0, 1, 2, 15, 40, 400, 100000]), known)
    assert ids[:2].tolist() == [1, 1]  # nothing left: the end of audio is due
    assert ids[2:5].tolist() == [2, 3, 16]  # the last frames are told exactly
    assert ids[4] < ids[5] < ids[6] < ids[7]  # further away, coarser but in order
    assert countdown_ids(torch.tensor([5, 500]), torch.tensor([False, False])).tolist() == [0, 0]  # not known yet


def test_the_predicted_length_is_a_sum_over_real_tokens_only(prompt_model):
    talker = prompt_model.talker
    embeds = torch.randn(2, 6, talker.config.hidden_size)
    both = talker.predict_frames(embeds, torch.tensor([6, 3]))
    alone = talker.predict_frames(embeds[1:, :3], torch.tensor([3]))
    torch.testing.assert_close(both[1:], alone)
    torch.manual_seed(0)
    fresh = ConceptTalkerForConditionalGeneration(prompt_model.config).talker
    assert 8 < float(fresh.predict_frames(embeds, torch.tensor([6, 3]))[1]) / 3 < 12  # starts near 10 per token


def test_a_talker_with_a_countdown_needs_the_lengths(prompt_model):
    talker = prompt_model.talker
    k, width = talker.num_codebooks, talker.config.hidden_size
    with pytest.raises(ValueError, match="frame_lengths"):
        talker(torch.zeros(1, 2, width), torch.tensor([2]), torch.zeros(1, k, 5, dtype=torch.long), torch.tensor([5]))


def predicted_length(model, processor, instruction: str, reply_ids: list[int], audio) -> float:
    """The talker's predicted reply length (frames) after the thinker has read the reply, as in generation."""
    inputs = processor(text=build_prompt(instruction), audio=audio, sampling_rate=24000)
    settings = SpokenGenerationConfig(thinker_max_new_tokens=len(reply_ids))
    runner, _, hidden, prompt = prefill(model, inputs, settings)
    stream = TalkerStream(model, settings, prompt=prompt)
    embed = model.get_input_embeddings()
    for i, token in enumerate(reply_ids):
        stream.add_text(hidden[0], embed(torch.tensor(token)), last=i == len(reply_ids) - 1)
        hidden = runner.append(embed(torch.tensor([[token]])))[1][:, -1]
    return stream.predicted_frames


def test_the_duration_predictor_learns_the_speaking_rate_from_the_instruction(prompt_config, prompt_processor):
    """Same words, audio 2.3x longer after "Speak slowly.": trained on that, the talker predicts a longer reply."""
    torch.manual_seed(0)
    model = ConceptTalkerForConditionalGeneration(prompt_config)
    model.set_trainable(concept_adapter=False, thinker="frozen", talker=True)
    audio, reply = question(1.2), "The answer is nine.<|im_end|>"
    instructions, frames = ("Speak slowly.", "Speak quickly."), (46, 20)
    batch = prompt_processor(text=[build_prompt(i) + reply for i in instructions], audio=[audio, audio],
                             sampling_rate=24000, padding_side="right")
    labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    for row, instruction in enumerate(instructions):
        start = len(prompt_processor(text=build_prompt(instruction), audio=audio, sampling_rate=24000)["input_ids"][0])
        end = int(batch["attention_mask"][row].sum())
        labels[row, start:end] = batch["input_ids"][row, start:end]
    k, size = model.config.codec_num_codebooks, model.config.codebook_size
    audio_labels = torch.full((2, k, max(frames)), IGNORE_INDEX)
    for row, n in enumerate(frames):
        audio_labels[row, :, :n] = torch.randint(0, size, (k, n))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(150):
        optimizer.zero_grad()
        model(**batch, labels=labels, audio_labels=audio_labels).duration_loss.backward()
        optimizer.step()
    model.eval()
    reply_ids = prompt_processor.tokenizer(reply, add_special_tokens=False).input_ids
    slow, fast = (predicted_length(model, prompt_processor, i, reply_ids, audio) for i in instructions)
    assert slow > 1.6 * fast, (slow, fast)
    assert abs(slow - 46) < 5 and abs(fast - 20) < 3  # and the lengths it was shown, as generation computes them


def test_a_turn_fed_in_pieces_gives_the_talker_the_same_prompt_states(prompt_model, prompt_processor):
    """The prompt's end spans the last audio window and the typed tail; fed in pieces, it is kept as it is read."""
    audio = question(2.3)
    whole = prompt_model.generate(
        **prompt_processor(text=build_prompt("Speak slowly."), audio=audio, sampling_rate=24000), **GREEDY
    )
    turn = SpokenTurn(prompt_model, prompt_processor, sampling_rate=24000, instruction="Speak slowly.", **GREEDY)
    for start in range(0, len(audio), 7000):
        turn.feed(audio[start : start + 7000])
    reply = turn.reply()
    assert reply.sequences.tolist() == whole.sequences.tolist()
    assert torch.equal(reply.audio_codes[0], whole.audio_codes[0])


def test_left_padded_batch_rows_equal_single_runs(prompt_model, prompt_processor):
    clips = [question(2.3, seed=0), question(1.1, seed=1)]
    prompts = [build_prompt(), build_prompt("Please repeat what I say. Speak quickly.")]
    together = prompt_model.generate(**prompt_processor(text=prompts, audio=clips, sampling_rate=24000), **GREEDY)
    for row in range(2):
        alone = prompt_model.generate(**prompt_processor(text=prompts[row], audio=clips[row], sampling_rate=24000),
                                      **GREEDY)
        assert torch.equal(together.audio_codes[row], alone.audio_codes[0])


def test_negative_prompt_states_are_refused():
    from configuration import load_preset

    with pytest.raises(ValueError, match="prompt_states=-1.*0 \\(off\\) or positive"):
        load_preset("tiny", talker_config={"prompt_states": -1})
