"""The talker: the reply's phonemes on a timeline (the one layout of training and streaming), the symbols' predicted
lengths (and what sets them: the typed instruction, the voice), the house voice, and the same computation in
training (teacher forcing) as in generation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import liven, reply_symbol_inputs

from modeling_concept_talker import ConceptTalkerForConditionalGeneration, ConceptTalkerProcessor, build_prompt
from modeling_concept_talker.generation import SpokenGenerationConfig, TalkerStream, prefill
from modeling_concept_talker.phonemes import IncrementalPhonemes, reply_symbols, symbol_ids
from modeling_concept_talker.schedule import layout
from modeling_concept_talker.streaming import SpokenTurn
from modeling_concept_talker.talker import (IGNORE_INDEX, build_delay_pattern, frames_from_log, prompt_states,
                                            reply_prompt_states, reply_states)

GREEDY = dict(thinker_max_new_tokens=8, talker_do_sample=False, max_audio_seconds=2.0)


@pytest.fixture
def voice_config():
    from configuration import load_preset

    return load_preset("tiny", talker_config={"prompt_states": 8, "num_style_concepts": 4, "voice_pitch": True,
                                              "voice_every_step": True})


@pytest.fixture
def voice_processor(voice_config, tokenizer_dir):
    return ConceptTalkerProcessor.from_config(voice_config, tokenizer_dir)


@pytest.fixture
def voice_model(voice_config, voice_processor):
    torch.manual_seed(0)
    model = liven(ConceptTalkerForConditionalGeneration(voice_config).eval())
    with torch.no_grad():  # big enough that the talker's codes depend on what it reads
        for name in ("state_proj", "token_proj", "voice_proj"):
            getattr(model.talker, name).weight.normal_(std=0.5)
        model.talker.symbol_embedding.weight.normal_(std=1.0)
        model.talker.house_voice.normal_(std=1.0)
    model.tokenizer = voice_processor.tokenizer
    return model


def question(seconds: float = 1.7, rate: int = 16000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(seconds * rate)).astype(np.float32) * 0.1


def speech_like(seconds: float, f0: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.2 * sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 5))).astype(np.float32)


# ---- the timeline -------------------------------------------------------------------------------------------------

def test_the_timeline_reads_each_symbol_when_the_one_before_it_begins():
    """Symbols a (2 frames), b (1), c (2), 3 codebooks: s_a s_b t0 t1 s_c t2 t3 t4 t5 t6."""
    timeline = layout(torch.tensor([2, 1, 2]), num_codebooks=3, progress_cap=15)
    assert timeline.read_step.tolist() == [0, 0, 2]
    assert timeline.symbol_positions.tolist() == [0, 1, 4]
    assert timeline.step_positions.tolist() == [2, 3, 5, 6, 7, 8, 9]
    assert timeline.frame_symbol.tolist() == [0, 0, 1, 2, 2, 2, 2]  # the delayed tail speaks the last symbol
    assert timeline.since.tolist() == [0, 1, 0, 0, 1, 1, 1]
    assert timeline.left.tolist() == [1, 0, 0, 1, 0, 0, 0]
    # Positions interleave without gaps or collisions.
    everything = sorted(timeline.symbol_positions.tolist() + timeline.step_positions.tolist())
    assert everything == list(range(timeline.length))


def test_a_symbol_of_no_frames_is_still_read():
    timeline = layout(torch.tensor([2, 0, 1]), num_codebooks=1, progress_cap=4)
    assert timeline.read_step.tolist() == [0, 0, 2] and timeline.frame_symbol.tolist() == [0, 0, 2]
    with pytest.raises(ValueError, match="at least one frame"):
        layout(torch.tensor([0, 0]), num_codebooks=2, progress_cap=4)


def test_delay_pattern_has_no_end_token():
    codes = torch.tensor([[[1, 2, 3], [4, 5, 6]]])
    inputs, targets = build_delay_pattern(codes, torch.tensor([3]), codebook_size=10)
    assert targets.tolist() == [[[1, 2, 3, -100], [-100, 4, 5, 6]]]
    assert inputs.tolist() == [[[10, 1, 2, 3], [10, 10, 4, 5]]]


def test_predicted_lengths_round_without_drifting():
    log_frames = torch.log1p(torch.tensor([1.4, 1.4, 1.4, 1.4, 0.2]))
    frames = frames_from_log(log_frames)
    assert frames.sum() == round(1.4 * 4 + 0.2) and frames.tolist() == [1, 2, 1, 2, 0]


# ---- the symbols ----------------------------------------------------------------------------------------------------

def test_phonemes_as_the_text_grows_are_the_phonemes_of_the_whole_text():
    text = "Good question. Brave means not afraid of danger, or bold!"
    whole = reply_symbols(text)
    assert whole.symbols[0] == "^" and whole.symbols[-1] == "$" and len(whole.chars) == len(whole.symbols)
    stream = IncrementalPhonemes()
    grown = "".join(stream.add(text[:end]).symbols for end in range(1, len(text) + 1)) + stream.finish(text).symbols
    assert grown == whole.symbols
    # Each word's phonemes point at its last character; punctuation at itself.
    brave = text.index("Brave") + len("Brave") - 1
    assert any(c == brave for c in whole.chars) and text[whole.chars[whole.symbols.index("!")]] == "!"


def test_symbols_find_the_token_generation_finds(voice_processor, voice_model):
    """The collator's symbol -> token map is the one the streaming talker builds from the tokens as they come."""
    from concept_talker.data.collators import symbol_tokens

    text = "The word brave means not afraid."
    answer = voice_processor.tokenizer(text + "<|im_end|>", add_special_tokens=False).input_ids
    symbols = reply_symbols(text)
    expected = symbol_tokens(symbols.chars, answer, voice_processor.tokenizer)
    stream = TalkerStream(voice_model, SpokenGenerationConfig(), voice_processor.tokenizer)
    hidden = voice_model.config.thinker_config.hidden_size
    for i, token in enumerate(answer):
        state = torch.full((hidden,), float(i))  # marks the token it belongs to
        stream.add_token(None if i == len(answer) - 1 else token, state, torch.zeros(hidden), i == len(answer) - 1)
    assert stream.symbols == symbol_ids(symbols.symbols, voice_model.config.talker_config.phoneme_symbols)
    marks = [voice_model.talker.embed_text(torch.full((1, 1, hidden), float(t)), torch.zeros(1, 1, hidden))[0, 0]
             for t in expected]
    for got, want in zip(stream.symbol_text, marks):
        assert torch.allclose(got, want)


# ---- training and generation: one computation ---------------------------------------------------------------------

def fixed_lengths(model, frames_per_symbol: int = 3):
    """Make the talker predict `frames_per_symbol` for every symbol (so training can be given the same lengths)."""
    def symbol_log_frames(symbol_ids, symbol_text, summary):
        return torch.full(symbol_ids.shape, float(np.log1p(frames_per_symbol)))

    model.talker.symbol_log_frames = symbol_log_frames


@pytest.mark.parametrize("instruction, voice", [(None, False), ("Speak slowly.", False), ("Speak slowly.", True)])
def test_training_and_generation_give_the_talker_the_same_view(voice_model, voice_processor, instruction, voice):
    """Teacher-forced on what generation wrote, the talker's greedy choice at every step is what it wrote: the
    prefix (a voice's style concepts and pitch, or the house voice; prompt states), the timeline of symbols and steps,
    and the voice on each audio step are laid out the same way in both."""
    clip = speech_like(2.0, 180.0) if voice else None
    inputs = voice_processor(text=build_prompt(instruction), audio=question(), voice=clip, sampling_rate=16000)
    voice_inputs = {k: inputs[k] for k in ("voice_values", "voice_values_mask") if k in inputs}
    text = "The answer is nine."
    reply = voice_processor.tokenizer(text + "<|im_end|>", add_special_tokens=False).input_ids
    fixed_lengths(voice_model)
    out = voice_model.generate(**inputs, reply_token_ids=[reply], **dict(GREEDY, max_audio_seconds=20.0),
                               thinker_runner="reference", talker_runner="reference")
    codes = out.audio_codes[0]
    count = len(reply_symbols(text).symbols)
    assert codes.shape[1] == 3 * count  # every symbol spoken for the lengths the talker predicted
    input_ids = torch.cat([inputs["input_ids"], torch.tensor([reply])], dim=1)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[0, inputs["input_ids"].shape[1]:] = torch.tensor(reply)
    symbols = reply_symbol_inputs(voice_processor, voice_model.config, [text], [codes.shape[1]])
    assert symbols["reply_symbol_frames"].tolist() == [[3] * count]
    with torch.no_grad():
        forced = voice_model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                             input_values=inputs["input_values"], input_values_mask=inputs["input_values_mask"],
                             labels=labels, audio_labels=codes[None], **symbols, **voice_inputs)
    chosen = forced.audio_logits[0].argmax(-1)  # [steps, codebooks]
    frames = codes.shape[1]
    for k in range(codes.shape[0]):
        assert chosen[k : k + frames, k].tolist() == codes[k].tolist()


def test_the_house_voice_speaks_where_no_voice_is_given(voice_model, voice_processor):
    """A row whose reference clip is not given (`voice_given` False) is spoken in the house voice, exactly as
    without any clip; generation without a clip speaks in it too."""
    from test_model import make_batch

    batch = make_batch(voice_processor, voice_model)
    clips = torch.stack([torch.from_numpy(speech_like(2.0, 120.0)), torch.from_numpy(speech_like(2.0, 220.0))])
    with torch.no_grad():
        house = voice_model(**batch).audio_logits
        mixed = voice_model(**batch, voice_values=clips, voice_given=torch.tensor([True, False])).audio_logits
        voiced = voice_model(**batch, voice_values=clips).audio_logits
    assert torch.allclose(mixed[1], house[1]) and not torch.allclose(mixed[0], house[0])
    assert torch.allclose(mixed[0], voiced[0])


def test_the_instruction_changes_the_predicted_lengths(voice_model, voice_processor):
    """The symbols' lengths are predicted from the prompt's end too (where "Speak slowly." is). Compared before
    rounding to whole frames: an untrained talker predicts about 4 frames a symbol, and whether the two instructions'
    small differences cross a rounding boundary depends on the random weights, not on what the talker reads."""
    lengths = []
    for instruction in ("Speak slowly.", "Speak quickly."):
        inputs = voice_processor(text=build_prompt(instruction), audio=question(), sampling_rate=16000)
        _, _, _, prompt = prefill(voice_model, inputs, SpokenGenerationConfig())
        stream = TalkerStream(voice_model, SpokenGenerationConfig(), voice_processor.tokenizer, prompt=prompt)
        hidden = voice_model.config.thinker_config.hidden_size
        answer = voice_processor.tokenizer("The answer is nine.<|im_end|>", add_special_tokens=False).input_ids
        for i, token in enumerate(answer):
            last = i == len(answer) - 1
            stream.add_token(None if last else token, torch.zeros(hidden), torch.zeros(hidden), last)
        lengths.append(stream.exact_end)  # the reply's predicted length in frames, its symbols' lengths unrounded
    assert abs(lengths[0] - lengths[1]) > 0.01


def test_the_talker_learns_the_speaking_rate_from_the_instruction(voice_config, voice_processor):
    """Same words, audio 2.3x longer after "Speak slowly.": trained on that, the talker predicts a longer reply,
    and about the lengths it was shown."""
    torch.manual_seed(0)
    model = ConceptTalkerForConditionalGeneration(voice_config)
    model.set_trainable(concept_adapter=False, thinker="frozen", talker=True)
    text, frames = "The answer is nine.", (46, 20)
    batches = []
    for instruction, total in zip(("Speak slowly.", "Speak quickly."), frames):
        prompt = build_prompt(instruction)
        full = voice_processor(text=prompt + text + "<|im_end|>", audio=question(1.2), sampling_rate=16000)
        start = len(voice_processor(text=prompt, audio=question(1.2), sampling_rate=16000)["input_ids"][0])
        labels = torch.full_like(full["input_ids"], IGNORE_INDEX)
        labels[0, start:] = full["input_ids"][0, start:]
        k = model.config.codec_num_codebooks
        audio_labels = torch.randint(0, model.config.codebook_size, (1, k, total))
        batches.append({**full, "labels": labels, "audio_labels": audio_labels,
                        **reply_symbol_inputs(voice_processor, model.config, [text], [total])})
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(120):
        for batch in batches:
            optimizer.zero_grad()
            model(**batch).duration_loss.backward()
            optimizer.step()
    model.eval()
    predicted = []
    for batch in batches:
        with torch.no_grad():
            out = model.hear(batch["input_values"], batch["input_values_mask"])
            embeds = model.embed_inputs(batch["input_ids"], concepts=out)
            hidden = model.thinker.model(inputs_embeds=embeds).last_hidden_state
            states, tokens, _ = reply_states(hidden, batch["input_ids"], batch["labels"],
                                             model.get_input_embeddings())
            text_embeds = model.talker.symbol_text(states, tokens, batch["reply_symbol_tokens"])
            prompt = reply_prompt_states(hidden, embeds, batch["labels"], model.config.talker_config.prompt_states)
            prefix = model.talker.embed_prefix(model.talker.voice_or_house(None, batch=1), prompt)
            log_frames = model.talker.symbol_log_frames(batch["reply_symbols"], text_embeds,
                                                        model.talker.prefix_summary(prefix))
        predicted.append(int(frames_from_log(log_frames).sum()))
    assert predicted[0] > 1.6 * predicted[1], predicted
    assert abs(predicted[0] - 46) < 6 and abs(predicted[1] - 20) < 4


def test_max_audio_seconds_cuts_the_reply(voice_model, voice_processor):
    inputs = voice_processor(text=build_prompt(), audio=question(), sampling_rate=16000)
    reply = voice_processor.tokenizer("One two three four five six seven eight nine ten.<|im_end|>",
                                      add_special_tokens=False).input_ids
    fixed_lengths(voice_model, 5)
    out = voice_model.generate(**inputs, reply_token_ids=[reply], **dict(GREEDY, max_audio_seconds=0.5))
    assert out.audio_codes[0].shape[1] == int(0.5 * voice_model.codec.frame_rate)


def test_prompt_states_pair_each_position_with_the_state_before_it():
    hidden = torch.arange(10.0)[None, :, None].repeat(2, 1, 3)  # value = position
    embeds = hidden + 100
    states, tokens = prompt_states(hidden, embeds, ends=torch.tensor([7, 4]), count=3)
    assert states[0, :, 0].tolist() == [3, 4, 5] and tokens[0, :, 0].tolist() == [104, 105, 106]
    assert states[1, :, 0].tolist() == [0, 1, 2] and tokens[1, :, 0].tolist() == [101, 102, 103]
    states, tokens = prompt_states(hidden, embeds, ends=torch.tensor([10, 10]), count=4, starts=torch.tensor([0, 8]))
    assert tokens[0, :, 0].tolist() == [106, 107, 108, 109]
    assert tokens[1, :, 0].tolist() == [109, 109, 109, 109] and states[1, :, 0].tolist() == [8, 8, 8, 8]


@pytest.mark.parametrize("context_windows", [0, 1])
def test_a_turn_fed_in_pieces_gives_the_same_reply(voice_config, voice_processor, context_windows):
    """Fed in pieces while the user speaks, the ear (whole question at the end, or window by window with left
    context) and the thinker give the talker exactly what the whole recording gives."""
    voice_config.ear_context_windows = context_windows
    torch.manual_seed(0)
    model = liven(ConceptTalkerForConditionalGeneration(voice_config).eval())
    model.tokenizer = voice_processor.tokenizer
    audio = question(2.3)
    whole = model.generate(**voice_processor(text=build_prompt("Speak slowly."), audio=audio, sampling_rate=16000),
                           **GREEDY)
    turn = SpokenTurn(model, voice_processor, sampling_rate=16000, instruction="Speak slowly.", **GREEDY)
    for start in range(0, len(audio), 7000):
        turn.feed(audio[start : start + 7000])
    reply = turn.reply()
    assert reply.sequences.tolist() == whole.sequences.tolist()
    assert torch.equal(reply.audio_codes[0], whole.audio_codes[0])


def test_left_padded_batch_rows_equal_single_runs(voice_model, voice_processor):
    clips = [question(2.3, seed=0), question(1.1, seed=1)]
    prompts = [build_prompt(), build_prompt("Please repeat what I say. Speak quickly.")]
    together = voice_model.generate(**voice_processor(text=prompts, audio=clips, sampling_rate=16000), **GREEDY)
    for row in range(2):
        alone = voice_model.generate(**voice_processor(text=prompts[row], audio=clips[row], sampling_rate=16000),
                                     **GREEDY)
        assert torch.equal(together.audio_codes[row], alone.audio_codes[0])


def test_negative_prompt_states_are_refused():
    from configuration import load_preset

    with pytest.raises(ValueError, match="prompt_states=-1.*0 \\(off\\) or positive"):
        load_preset("tiny", talker_config={"prompt_states": -1})


# ---- checkpoints saved before format version 4 (the talker's own decoder, fused matrices) --------------------------
def saved_before_format_4(state_dict: dict) -> dict:
    """`state_dict` as concept-talker saved it before format version 4: each talker layer as the talker's own block,
    [q; k; v] and [gate; up] fused by rows in that order, and the final norm as the talker's."""
    old = {k: v for k, v in state_dict.items() if not k.startswith("talker.decoder.")}
    layers = {int(k.split(".")[3]) for k in state_dict if k.startswith("talker.decoder.layers.")}
    for i in layers:
        new, block = f"talker.decoder.layers.{i}.", f"talker.blocks.{i}."
        weight = lambda name: state_dict[new + name + ".weight"]  # noqa: E731
        old[block + "attention.qkv_proj.weight"] = torch.cat([weight(f"self_attn.{n}_proj") for n in "qkv"])
        old[block + "attention.o_proj.weight"] = weight("self_attn.o_proj")
        old[block + "gate_up_proj.weight"] = torch.cat([weight("mlp.gate_proj"), weight("mlp.up_proj")])
        old[block + "down_proj.weight"] = weight("mlp.down_proj")
        old[block + "attention_norm.weight"] = weight("input_layernorm")
        old[block + "mlp_norm.weight"] = weight("post_attention_layernorm")
    old["talker.norm.weight"] = state_dict["talker.decoder.norm.weight"]
    assert len(old) == len(state_dict) - 3 * len(layers)  # each layer's 9 decoder weights are a block's 6
    return old


def talker_logits(model) -> torch.Tensor:
    """Teacher-forced logits of the talker for two replies (7 and 5 symbols) read after a voice and prompt states,
    all drawn from a fixed generator: `[2, steps, codebooks, codebook_size]`."""
    talker, width = model.talker, model.config.thinker_config.hidden_size
    generator = torch.Generator().manual_seed(0)
    symbol_ids = torch.randint(3, talker.num_symbols, (2, 7), generator=generator)
    symbol_frames = torch.randint(1, 6, (2, 7), generator=generator)
    symbol_frames[1, 5:] = 0
    states, tokens, prompt, prompt_tokens = (torch.randn(2, n, width, generator=generator) for n in (7, 7, 8, 8))
    frames = symbol_frames.sum(-1)
    codes = torch.randint(0, talker.codebook_size, (2, talker.num_codebooks, int(frames.max())), generator=generator)
    with torch.no_grad():
        style = talker.voice_or_house(None, batch=2)
        prefix = talker.embed_prefix(style, (prompt, prompt_tokens))
        audio_inputs, _ = build_delay_pattern(codes, frames, talker.codebook_size)
        return talker(symbol_ids, talker.embed_text(states, tokens), symbol_frames, torch.tensor([7, 5]),
                      audio_inputs, prefix, talker.embed_voice_step(style))


@pytest.mark.parametrize("saved", ["full", "trainable", "state_dict"])
def test_a_talker_saved_before_format_4_gives_the_same_outputs(voice_model, voice_processor, tmp_path, saved):
    """Talker weights saved before the talker's decoder became transformers' Llama load, split, into it: a full or
    trainable-only checkpoint (config format 3) through `from_pretrained`, or a state dict through `load_state_dict`
    (the Trainer resuming from its checkpoint). The talker then computes what it computed: same teacher-forced
    logits, same greedy codes."""
    from safetensors.torch import load_file, save_file

    with torch.no_grad():  # weights large enough that a misplaced row of a split matrix shows in the outputs
        for p in voice_model.talker.decoder.parameters():
            p.normal_(std=0.3) if p.ndim == 2 else p.uniform_(0.5, 1.5)
    inputs = voice_processor(text=build_prompt("Speak slowly."), audio=question(), sampling_rate=16000)
    reply = voice_processor.tokenizer("Nine.<|im_end|>", add_special_tokens=False).input_ids
    expected_logits = talker_logits(voice_model)
    expected_codes = voice_model.generate(**inputs, reply_token_ids=[reply], **GREEDY,
                                          talker_runner="reference").audio_codes[0]
    if saved == "state_dict":
        torch.manual_seed(1)
        loaded = ConceptTalkerForConditionalGeneration(voice_model.config).eval()
        loaded.tokenizer = voice_processor.tokenizer
        missing, unexpected = loaded.load_state_dict(saved_before_format_4(voice_model.state_dict()), strict=False)
        assert not missing and not unexpected
    else:
        if saved == "trainable":
            voice_model.save_base_thinker(tmp_path / "thinker")
            voice_model.config.thinker_name_or_path = "thinker"
        voice_model.save_pretrained(tmp_path, trainable_only=saved == "trainable")
        weights = load_file(tmp_path / "model.safetensors")
        assert any(k.startswith("talker.decoder.layers.") for k in weights)
        save_file(saved_before_format_4(weights), tmp_path / "model.safetensors", metadata={"format": "pt"})
        config = json.loads((tmp_path / "config.json").read_text())
        config["config_format_version"] = 3
        config["talker_config"].pop("thinker_hidden_size")
        (tmp_path / "config.json").write_text(json.dumps(config))
        loaded = ConceptTalkerForConditionalGeneration.from_pretrained(tmp_path)
        loaded.tokenizer = voice_processor.tokenizer
    for name, tensor in voice_model.talker.state_dict().items():
        assert torch.equal(loaded.talker.state_dict()[name], tensor), name
    assert torch.equal(talker_logits(loaded), expected_logits)
    codes = loaded.generate(**inputs, reply_token_ids=[reply], **GREEDY, talker_runner="reference").audio_codes[0]
    assert torch.equal(codes, expected_codes)


def test_the_embedded_checkpoint_keeps_its_saved_talker(assets):
    """`checkpoints/tiny-lyra` was saved before format version 4: its talker loads into the Llama decoder with every
    saved weight in place (fused back, they are the file's tensors)."""
    from pathlib import Path

    from safetensors.torch import load_file

    folder = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny-lyra"
    saved = {k: v for k, v in load_file(folder / "model.safetensors").items() if k.startswith("talker.")}
    assert "talker.blocks.0.attention.qkv_proj.weight" in saved  # the old layout, left as committed
    model = ConceptTalkerForConditionalGeneration.from_pretrained(folder,
                                                                  codec_model_dir=str(assets / "lyra-soundstream"))
    fused = saved_before_format_4({f"talker.{k}": v for k, v in model.talker.state_dict().items()})
    assert fused.keys() == saved.keys()
    for name, tensor in saved.items():
        assert torch.equal(fused[name], tensor), name
