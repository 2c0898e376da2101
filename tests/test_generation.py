"""Spoken replies: generate, stream out, stream in, batches, stopping, and streams that end badly."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from modeling_concept_talker import build_prompt
from modeling_concept_talker.generation import AudioIteratorStreamer
from modeling_concept_talker.streaming import SpokenTurn

GREEDY = dict(thinker_max_new_tokens=10, talker_do_sample=False, max_audio_seconds=1.5)
# Chunked and one-shot decoding run the same float32 operations on different slices of the same signal; they agree
# to rounding (about 1e-7 of a full-scale sample here). 1e-5 is 100x that and far below audibility (-100 dBFS).
SAMPLE_TOLERANCE = 1e-5


def question(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(seconds * rate)).astype(np.float32) * 0.1


def ask(processor, seconds=2.3, rate=24000, seed=0, instruction=None):
    return processor(text=build_prompt(instruction), audio=question(seconds, rate, seed), sampling_rate=rate)


def test_reply_depends_on_the_audio(lively_model, tiny_processor):
    """Guards the other tests: equal replies below mean equal computations, not a constant model."""
    t = np.arange(int(2.3 * 24000)) / 24000
    clips = [question(2.3, 24000), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32),
             (0.3 * np.sign(np.sin(2 * np.pi * 3 * t)) * np.sin(2 * np.pi * 1500 * t)).astype(np.float32)]
    replies = {tuple(lively_model.generate(**tiny_processor(text=build_prompt(), audio=clip, sampling_rate=24000),
                                           **GREEDY).sequences[0].tolist()) for clip in clips}
    assert len(replies) == 3


def test_greedy_generation_is_deterministic(lively_model, tiny_processor):
    batch = ask(tiny_processor)
    a, b = lively_model.generate(**batch, **GREEDY), lively_model.generate(**batch, **GREEDY)
    assert torch.equal(a.sequences, b.sequences)
    assert torch.equal(a.audio_codes[0], b.audio_codes[0])
    assert np.array_equal(a.waveforms[0], b.waveforms[0])
    k = lively_model.config.codec_num_codebooks
    assert a.audio_codes[0].shape[0] == k
    assert len(a.waveforms[0]) == a.audio_codes[0].shape[1] * lively_model.codec.hop_length
    assert a.sampling_rate == 24000 and a.waveforms[0].dtype == np.float32


def test_streaming_output_equals_generate(lively_model, tiny_processor):
    batch = ask(tiny_processor)
    reply = tiny_processor.tokenizer("The word brave means not afraid of danger.<|im_end|>",
                                     add_special_tokens=False).input_ids
    settings = dict(GREEDY, max_audio_seconds=20.0, thinker_max_new_tokens=20, reply_token_ids=[reply])
    whole = lively_model.generate(**batch, **settings)
    chunks = list(lively_model.stream(**batch, **settings))
    assert len(chunks) > 3  # it really streamed
    assert all(c.samples.dtype == np.float32 and c.sampling_rate == 24000 for c in chunks)
    assert [c.start for c in chunks] == list(np.cumsum([0] + [len(c.samples) for c in chunks[:-1]]))
    streamed = np.concatenate([c.samples for c in chunks])
    assert streamed.shape == whole.waveforms[0].shape
    assert np.abs(streamed - whole.waveforms[0]).max() < SAMPLE_TOLERANCE
    assert chunks[-1].text_tokens == whole.sequences[0].tolist()


def test_generate_text_writes_what_generate_writes(lively_model, tiny_processor, monkeypatch):
    """transformers' own loop on the thinker (`generate_text`) reads the prompt as `generate` does, blank concepts
    left out: greedy, the same reply text, row by row in a left-padded batch."""
    keep = lively_model.concept_keep

    def every_other(concepts, mask, vocabulary=None):  # as if every other concept were read as the blank
        kept = keep(concepts, mask, vocabulary).clone()
        kept[:, ::2] = False
        return kept

    monkeypatch.setattr(lively_model, "concept_keep", every_other)
    batch = tiny_processor(text=[build_prompt(), build_prompt("Speak slowly.")],
                           audio=[question(2.3, 24000), question(1.2, 24000, seed=1)], sampling_rate=24000)
    spoken = lively_model.generate(**batch, **GREEDY)
    written = lively_model.generate_text(**batch, max_new_tokens=10, do_sample=False)
    pad = lively_model.generation_config.pad_token_id
    for row in range(2):
        assert [t for t in written[row].tolist() if t != pad] == [t for t in spoken.sequences[row].tolist() if t != pad]
    assert len(spoken.sequences[0]) > 3


def test_first_audio_comes_before_the_reply_text_is_finished(lively_model, tiny_processor):
    """The talker starts as soon as the reply's first word is finished (the next token shows it ended)."""
    text = "The capital of France is Paris, and the capital of Italy is Rome."
    reply = tiny_processor.tokenizer(text + "<|im_end|>", add_special_tokens=False).input_ids
    settings = dict(GREEDY, thinker_max_new_tokens=40, max_audio_seconds=20.0)
    first = next(lively_model.stream(**ask(tiny_processor), **settings, reply_token_ids=[reply]))
    assert 2 <= len(first.text_tokens) <= 3  # "The" ended when " capital" began (and " of" told the space's next)
    assert len(reply) > 15


def test_audio_iterator_streamer_in_a_thread(lively_model, tiny_processor):
    batch = ask(tiny_processor)
    whole = lively_model.generate(**batch, **GREEDY)
    streamer = AudioIteratorStreamer(timeout=60)
    thread = threading.Thread(target=lively_model.generate, kwargs={**batch, **GREEDY, "streamer": streamer})
    thread.start()
    streamed = np.concatenate([chunk.samples for chunk in streamer])
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert np.abs(streamed - whole.waveforms[0]).max() < SAMPLE_TOLERANCE


def test_a_client_that_stops_reading_stops_generation(lively_model, tiny_processor):
    streamer = AudioIteratorStreamer(timeout=60, max_chunks=2)
    results = []
    thread = threading.Thread(
        target=lambda: results.append(lively_model.generate(**ask(tiny_processor), **dict(GREEDY, max_audio_seconds=5), streamer=streamer))
    )
    thread.start()
    next(iter(streamer))
    streamer.close()  # the client goes away
    thread.join(timeout=30)
    assert not thread.is_alive() and results == [None]
    assert streamer.queue.empty()


def test_a_stalled_client_times_out(lively_model, tiny_processor):
    streamer = AudioIteratorStreamer(timeout=0.2, max_chunks=1)
    results = []
    thread = threading.Thread(target=lambda: results.append(lively_model.generate(**ask(tiny_processor), **GREEDY, streamer=streamer)))
    thread.start()
    thread.join(timeout=30)  # nobody reads: the producer gives up after its timeout
    assert not thread.is_alive() and results == [None]


def test_closing_the_stream_iterator_early(lively_model, tiny_processor):
    stream = lively_model.stream(**ask(tiny_processor), **GREEDY)
    first = next(stream)
    stream.close()  # a plain generator: nothing keeps running
    assert len(first.samples) > 0
    with pytest.raises(StopIteration):
        next(stream)


def test_batch_rows_equal_single_runs(lively_model, tiny_processor):
    clips = [question(2.3, 24000, 0), question(1.1, 24000, 1)]
    prompts = [build_prompt(), build_prompt("Speak slowly.")]
    batch = tiny_processor(text=prompts, audio=clips, sampling_rate=24000)
    together = lively_model.generate(**batch, **GREEDY)
    for row in range(2):
        alone = lively_model.generate(**tiny_processor(text=prompts[row], audio=clips[row], sampling_rate=24000), **GREEDY)
        n = alone.sequences.shape[1]
        assert together.sequences[row, :n].tolist() == alone.sequences[0].tolist()
        assert torch.equal(together.audio_codes[row], alone.audio_codes[0])


def test_audio_stops_at_the_maximum_duration(lively_model, tiny_processor):
    reply = lively_model.generate(**ask(tiny_processor), **dict(GREEDY, max_audio_seconds=0.4))
    assert reply.audio_codes[0].shape[1] == int(0.4 * 75)


def test_text_stops_at_the_end_of_reply_token(lively_model, tiny_processor):
    end = lively_model.config.reply_end_token_ids[0]
    with torch.no_grad():
        lively_model.thinker.lm_head.weight[end] *= 0  # tied: also the token's embedding
        lively_model.thinker.model.norm.weight.fill_(1.0)
        lively_model.thinker.lm_head.weight[end] += 50 * lively_model.thinker.lm_head.weight.mean(0)
    reply = lively_model.generate(**ask(tiny_processor), **GREEDY, talker_runner="reference")  # patched logits
    tokens = reply.sequences[0].tolist()
    if end in tokens:
        assert tokens.index(end) == len(tokens) - 1  # nothing after the end-of-reply token


def test_the_audio_ends_after_the_last_symbol(lively_model, tiny_processor, monkeypatch):
    """The reply lasts as long as its symbols' predicted lengths add up to; the delayed codebooks then finish."""
    talker = lively_model.talker
    steps = []
    original = talker.logits

    def counted(hidden):
        steps.append(None)
        return original(hidden)

    monkeypatch.setattr(talker, "logits", counted)
    monkeypatch.setattr(talker, "symbol_log_frames",
                        lambda ids, text, summary: torch.full(ids.shape, float(np.log1p(2))))
    text = "Nine."
    reply = tiny_processor.tokenizer(text + "<|im_end|>", add_special_tokens=False).input_ids
    out = lively_model.generate(**ask(tiny_processor), **GREEDY, reply_token_ids=[reply], talker_runner="reference")
    from modeling_concept_talker.phonemes import reply_symbols

    frames = 2 * len(reply_symbols(text).symbols)
    assert out.audio_codes[0].shape[1] == frames
    assert len(out.waveforms[0]) == frames * lively_model.codec.hop_length
    assert len(steps) == frames + lively_model.config.codec_num_codebooks - 1


def test_sampling_uses_the_seed(lively_model, tiny_processor):
    settings = dict(thinker_max_new_tokens=8, thinker_do_sample=True, thinker_temperature=1.5, talker_do_sample=True,
                    max_audio_seconds=1.0, seed=7)
    batch = ask(tiny_processor)
    a, b = lively_model.generate(**batch, **settings), lively_model.generate(**batch, **settings)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.audio_codes[0], b.audio_codes[0])
    c = lively_model.generate(**batch, **dict(settings, seed=8))
    assert not torch.equal(a.audio_codes[0], c.audio_codes[0])


def test_a_checkpoints_own_reply_settings_are_its_defaults(lively_model, tiny_processor, tmp_path):
    """Settings in generation_config.json (a recipe's `generation`) are used when not given; given ones win."""
    from modeling_concept_talker import ConceptTalkerForConditionalGeneration
    from modeling_concept_talker.generation import SpokenGenerationConfig

    batch, common = ask(tiny_processor), dict(thinker_max_new_tokens=6, max_audio_seconds=1.0, seed=3)
    greedy = lively_model.generate(**batch, **common, talker_do_sample=False).audio_codes[0]
    sampled = lively_model.generate(**batch, **common, talker_do_sample=True, talker_temperature=2.0).audio_codes[0]
    assert not torch.equal(greedy, sampled)

    lively_model.set_reply_defaults(talker_do_sample=False, talker_temperature=2.0)
    assert torch.equal(lively_model.generate(**batch, **common).audio_codes[0], greedy)
    assert torch.equal(lively_model.generate(**batch, **common, talker_do_sample=True).audio_codes[0], sampled)
    turn = SpokenTurn(lively_model, tiny_processor, sampling_rate=24000, **common)
    assert turn.settings.talker_do_sample is False and turn.settings.talker_temperature == 2.0

    lively_model.save_pretrained(tmp_path)  # and they travel with the checkpoint
    assert json.loads((tmp_path / "generation_config.json").read_text())["talker_temperature"] == 2.0
    loaded = ConceptTalkerForConditionalGeneration.from_pretrained(tmp_path)
    assert SpokenGenerationConfig.for_model(loaded, {}).talker_do_sample is False
    with pytest.raises(TypeError, match=r"Unknown generation setting.*\['temperature'\]"):
        lively_model.set_reply_defaults(temperature=0.5)


def test_repetition_penalty_is_ctrls_over_the_reply_tokens():
    from modeling_concept_talker.generation import penalize_repeats

    logits = torch.tensor([[2.0, -1.0, 0.5, 0.25], [2.0, -1.0, 0.5, 0.25]])
    penalized = penalize_repeats(logits, [[0, 1, 0], []], 2.0)
    # written ids: positive logits halved, negative doubled (once each, however often written); others unchanged;
    # a row with nothing written yet is left alone
    assert penalized.tolist() == [[1.0, -2.0, 0.5, 0.25], [2.0, -1.0, 0.5, 0.25]]
    assert penalize_repeats(logits, [[0], [1]], 1.0) is logits


def test_sampling_keeps_to_top_k_and_top_p():
    from modeling_concept_talker.generation import choose_tokens

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 40)
    assert choose_tokens(logits, False, 0.7).equal(logits.argmax(-1))  # greedy: the argmax, whatever the settings
    top3 = logits.topk(3, dim=-1).indices
    for _ in range(20):
        chosen = choose_tokens(logits, True, 1.5, top_k=3, generator=generator)
        assert chosen.shape == (2, 3) and bool((chosen[..., None] == top3).any(-1).all())
    # one token holding 90% of the probability is the whole top-p 0.5 nucleus
    peaked = torch.zeros(4, 10)
    peaked[:, 7] = 10.0
    assert choose_tokens(peaked, True, 1.0, top_p=0.5, generator=generator).tolist() == [7, 7, 7, 7]


def test_repetition_penalty_breaks_a_greedy_loop(tiny_model, tiny_processor):
    settings = dict(GREEDY, thinker_max_new_tokens=24)
    plain = tiny_model.generate(**ask(tiny_processor), **settings).sequences[0].tolist()
    assert len(set(plain)) <= 2  # a freshly initialised thinker writes one token over and over
    penalized = tiny_model.generate(**ask(tiny_processor), **settings, thinker_repetition_penalty=1e4)
    tokens = penalized.sequences[0].tolist()
    assert len(tokens) > 2 and len(set(tokens)) == len(tokens) and tokens[0] == plain[0]
    same = tiny_model.generate(**ask(tiny_processor), **settings, thinker_repetition_penalty=1.0)
    assert same.sequences[0].tolist() == plain
    with pytest.raises(ValueError, match="thinker_repetition_penalty must be > 0"):
        tiny_model.generate(**ask(tiny_processor), thinker_repetition_penalty=0.0)


def test_unknown_setting_is_refused(lively_model, tiny_processor):
    with pytest.raises(TypeError, match=r"Unknown generation setting.*\['temperature'\].*prefixed"):
        lively_model.generate(**ask(tiny_processor), temperature=0.7)


# ---- streaming in ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [24000, 16000])
def test_feeding_audio_in_pieces_gives_the_same_reply(lively_model, tiny_processor, rate):
    audio = question(2.3, rate)
    whole = lively_model.generate(**tiny_processor(text=build_prompt("Speak slowly."), audio=audio, sampling_rate=rate), **GREEDY)
    turn = SpokenTurn(lively_model, tiny_processor, sampling_rate=rate, instruction="Speak slowly.", **GREEDY)
    position = 0
    for size in [100, 0, 5000, 20000, 3, 12000, 1]:
        turn.feed(audio[position : position + size])
        position += size
    turn.feed(audio[position:])
    reply = turn.reply()
    assert reply.sequences.tolist() == whole.sequences.tolist()
    assert torch.equal(reply.audio_codes[0], whole.audio_codes[0])
    assert np.abs(reply.waveforms[0] - whole.waveforms[0]).max() < SAMPLE_TOLERANCE


def test_a_turn_speaks_given_reply_tokens_as_generate_does(lively_model, tiny_processor):
    """`SpokenTurn.reply/stream_reply(reply_token_ids=...)` (what the bench speaks) match `generate(...)`'s."""
    audio = question(2.3, 24000)
    reply = tiny_processor.tokenizer("The answer is nine.<|im_end|>", add_special_tokens=False).input_ids
    whole = lively_model.generate(**tiny_processor(text=build_prompt(), audio=audio, sampling_rate=24000), **GREEDY,
                                  reply_token_ids=[reply])
    turn = SpokenTurn(lively_model, tiny_processor, sampling_rate=24000, **GREEDY)
    turn.feed(audio)
    spoken = turn.reply(reply_token_ids=torch.tensor(reply))
    assert spoken.sequences.tolist() == whole.sequences.tolist()
    assert torch.equal(spoken.audio_codes[0], whole.audio_codes[0])
    streamed = SpokenTurn(lively_model, tiny_processor, sampling_rate=24000, **GREEDY)
    streamed.feed(audio)
    chunks = list(streamed.stream_reply(reply))
    assert chunks and chunks[-1].text_tokens == whole.sequences[0].tolist()[: len(chunks[-1].text_tokens)]


@pytest.mark.parametrize("context_windows, read", [(0, 0), (1, 2 * 6)])
def test_windows_are_read_while_the_user_speaks(lively_model, tiny_processor, context_windows, read):
    """With left context the ear streams: two complete 1 s windows, 6 concepts each, are in the thinker before the
    user stops; without, the whole question is heard at the end of speech."""
    lively_model.ear.context_windows = context_windows
    turn = SpokenTurn(lively_model, tiny_processor, sampling_rate=24000, **GREEDY)
    start = turn.runner.length
    turn.feed(question(2.5, 24000))
    assert turn.runner.length - start == read
    chunks = list(turn.stream_reply())
    assert chunks and turn.state == "closed"


def test_stream_in_bad_input(lively_model, tiny_processor):
    turn = SpokenTurn(lively_model, tiny_processor, sampling_rate=16000, **GREEDY)
    with pytest.raises(ValueError, match=r"44100 Hz but the turn was started at 16000 Hz"):
        turn.feed(question(0.1, 44100), sampling_rate=44100)
    with pytest.raises(ValueError, match="NaN or infinite"):
        turn.feed(np.full(100, np.nan, np.float32))
    turn.feed(np.zeros(0, np.float32))  # nothing happens
    turn.close()
    with pytest.raises(RuntimeError, match="closed: start a new SpokenTurn"):
        turn.feed(question(0.1, 16000))
    empty = SpokenTurn(lively_model, tiny_processor, sampling_rate=16000, **GREEDY)
    with pytest.raises(ValueError, match="no audio: feed at least one piece"):
        empty.reply()
    long = SpokenTurn(lively_model, tiny_processor, sampling_rate=8000, **GREEDY)
    with pytest.raises(ValueError, match=r"longer than 30 s"):
        for _ in range(31):
            long.feed(np.zeros(8000, np.float32))
    assert long.state == "closed" and long.runner is None


def test_a_turn_closed_early_holds_nothing(lively_model, tiny_processor):
    turn = SpokenTurn(lively_model, tiny_processor, sampling_rate=24000, **GREEDY)
    turn.feed(question(1.5, 24000))
    stream = turn.stream_reply()
    next(stream)
    stream.close()
    assert turn.state == "closed" and turn.runner is None and turn.ear_stream is None


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_fast_and_reference_talker_write_the_same_codes(lively_model, tiny_processor, isa):
    """The talker's decoder on each native kernel (Qwen2-shaped view of its weights) is the same model."""
    import concept_talker_kernels

    if isa not in concept_talker_kernels.supported_isas():
        pytest.skip(f"this CPU cannot run the {isa} kernel ({concept_talker_kernels.describe_cpu()})")
    batch = ask(tiny_processor)
    reply = tiny_processor.tokenizer("The answer is nine.<|im_end|>", add_special_tokens=False).input_ids
    settings = dict(GREEDY, thinker_runner="reference", reply_token_ids=[reply])
    fast = lively_model.generate(**batch, **settings, talker_runner="fast", kernel=isa)
    reference = lively_model.generate(**batch, **settings, talker_runner="reference")
    assert fast.audio_codes[0].shape[1] > 10
    assert torch.equal(fast.audio_codes[0], reference.audio_codes[0])


def test_int8_thinker_and_talker(lively_model, tiny_processor):
    """int8 weights (per output channel) for the thinker and the talker's fast runner: a whole spoken reply."""
    from modeling_concept_talker.generation import SpokenGenerationConfig, fast_talker_runner, make_runner

    config = SpokenGenerationConfig(**GREEDY, thinker_dtype="int8", talker_dtype="int8", talker_runner="fast")
    assert make_runner(lively_model, 1, config, 16).lm_weight.dtype == torch.int8
    assert fast_talker_runner(lively_model, config, 16).lm_weight.dtype == torch.int8
    reply = lively_model.generate(**ask(tiny_processor), **GREEDY, thinker_dtype="int8", talker_dtype="int8")
    assert reply.audio_codes[0].shape[1] > 10 and reply.waveforms[0].size > 0
    with pytest.raises(ValueError, match="thinker_dtype must be one of"):
        lively_model.generate(**ask(tiny_processor), **GREEDY, thinker_dtype="int4")
    with pytest.raises(ValueError, match="kernel must be one of"):
        lively_model.generate(**ask(tiny_processor), **GREEDY, kernel="neon")
