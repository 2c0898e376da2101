"""`concept-talker bench`: how fast a spoken reply starts, against plain transformers `generate()` (issue 3).

    concept-talker bench --json benchmarks/results/bench.json --plot benchmarks/results/bench.png

One process, the `0.5b` preset (Qwen2.5-0.5B's dimensions, EnCodec 24 kHz at 8 codebooks) with random weights,
the thinker in bf16, everything else fp32, torch's default threads (one per core):

- **streaming** (this package): a 5 s question is fed in 80 ms pieces as a microphone would deliver them
  (`SpokenTurn.feed`: codec encoder, concept adapter and thinker prefill run per completed window while the user
  speaks); at end of speech the clock starts and `stream_reply()` yields audio chunks. First audio = the first
  chunk; RTF = seconds from end of speech to the last chunk / seconds of reply audio. The reply is 40 text tokens
  (`thinker_max_new_tokens=40`; a random thinker practically never ends earlier, and the count is reported).
- **baseline**: the same weights driven the plain way: at end of speech the whole question goes through the
  processor, the thinker reads it and `transformers` `generate()` writes the whole reply (40 tokens, with its
  hidden states), then the talker writes every frame, then the codec decodes them in one call. Its first audio is
  its total time.
- **thinker decode** against the memory-bandwidth roofline: tokens/s of the runner `generate()` uses for spoken
  replies and of plain `generate()`, each over 40 greedy steps; bytes of weights read per token; read bandwidth
  measured before and after in this run (`benchmarks.thinker_decode`).
- **talker** frames/s (talker steps alone, all codebooks per frame) and the codec's streaming decode speed.

Medians and p95 over `--runs` runs (default 10) of each, interleaved (streaming, baseline, streaming, ...), so
drifts of a shared machine hit both alike; the ratios are of medians from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

from benchmarks.thinker_decode import (
    OtherCpuShare,
    measure_bandwidth,
    peak_rss_bytes,
    time_generate,
    time_runner,
    weight_bytes_per_token,
)

QUESTION_SECONDS = 5.0
REPLY_TOKENS = 40
PIECE_SECONDS = 0.08
TARGETS = {"first_audio_ms_p50": 300.0, "rtf": 0.5, "thinker_roofline_fraction": 0.70, "speedup_first_audio": 5.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--plot", help="write a PNG of the first-audio latencies to this file")
    parser.add_argument("--preset", default="0.5b", help="model preset with random weights (default: 0.5b)")
    parser.add_argument("--runs", type=int, default=10, help="runs of each engine (default: 10)")
    parser.add_argument("--reply-tokens", type=int, default=REPLY_TOKENS, help="reply length in text tokens")
    parser.add_argument("--threads", type=int, help="torch threads (default: one per core)")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def question_wave(sampling_rate: int, seconds: float = QUESTION_SECONDS) -> np.ndarray:
    """A seeded, speech-like test signal (harmonics with a moving pitch under a syllable-rate envelope); its
    content does not matter to a model with random weights, only its length does."""
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sampling_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    noise = np.random.default_rng(0).normal(0, 0.02, t.shape)
    return (0.2 * voiced * envelope + noise).astype(np.float32)


def build(preset: str):
    """The preset with random weights (thinker cast to bf16) and its processor.

    A random talker would end its audio at a step chosen by rounding (the two engines' thinkers differ in the last
    bits of their states): its end-of-audio head row is zeroed, so greedy decoding never picks it and every reply
    runs to the same `max_audio_seconds` in both engines (equal audio, comparable real-time factors).
    """
    from trainers.loading import load_model

    loaded = load_model(preset)
    model = loaded.model
    model.thinker.to(torch.bfloat16)
    with torch.no_grad():
        model.talker.heads[:, model.talker.eos_id] = 0
    return model, loaded.processor


def settings(reply_tokens: int) -> dict:
    # Greedy everywhere: every run does the same work. The audio may run a little past the text (talker EOS).
    return dict(thinker_max_new_tokens=reply_tokens, talker_do_sample=False, max_audio_seconds=12.0)


def run_streaming(model, processor, wave: np.ndarray, rate: int, reply_tokens: int) -> dict:
    """One spoken turn fed live, answered by streaming; times from the end of speech."""
    from modeling_concept_talker.streaming import SpokenTurn

    listen_start = time.perf_counter()
    turn = SpokenTurn(model, processor, sampling_rate=rate, **settings(reply_tokens))
    piece = int(PIECE_SECONDS * rate)
    for start in range(0, len(wave), piece):
        turn.feed(wave[start : start + piece])
    listen_s = time.perf_counter() - listen_start
    end_of_speech = time.perf_counter()
    first, audio_s, text = None, 0.0, []
    for chunk in turn.stream_reply():
        if first is None:
            first = time.perf_counter() - end_of_speech
        audio_s += chunk.duration
        text = chunk.text_tokens
    total = time.perf_counter() - end_of_speech
    return {"first_audio_s": first, "total_s": total, "audio_s": audio_s, "rtf": total / audio_s,
            "reply_tokens": len(text), "listen_compute_s": listen_s}


@torch.no_grad()
def run_baseline(model, processor, wave: np.ndarray, rate: int, reply_tokens: int) -> dict:
    """The plain way: whole question -> thinker `generate()` -> talker over the whole reply -> one codec decode."""
    from modeling_concept_talker.generation import PromptTail, SpokenGenerationConfig, TalkerStream
    from modeling_concept_talker.processing_concept_talker import build_prompt

    start = time.perf_counter()
    inputs = processor(text=build_prompt(), audio=wave, sampling_rate=rate, return_tensors="pt")
    embeds = model.embed_inputs(inputs["input_ids"], input_values=inputs.get("input_values"),
                                input_values_mask=inputs.get("input_values_mask"))
    thinker = model.thinker
    out = thinker.generate(
        inputs_embeds=embeds.to(thinker.dtype), attention_mask=inputs["attention_mask"],
        max_new_tokens=reply_tokens, min_new_tokens=reply_tokens, do_sample=False,
        output_hidden_states=True, return_dict_in_generate=True, pad_token_id=thinker.config.eos_token_id,
    )
    thinker_s = time.perf_counter() - start
    tokens = out.sequences[0, -reply_tokens:]
    # the state that chose token i is the last position's final hidden state of generate step i
    states = [step[-1][0, -1] for step in out.hidden_states]
    prompt = PromptTail(model)  # the talker's prompt states, from generate()'s hidden states of the prompt
    prompt.add(embeds, out.hidden_states[0][-1].to(embeds.dtype))
    talker = TalkerStream(model, SpokenGenerationConfig(**settings(reply_tokens)), prompt=prompt.states())
    token_embeds = model.get_input_embeddings()(tokens[None])[0]
    for i, state in enumerate(states):
        talker.add_text(state, token_embeds[i], last=i == len(states) - 1)
    talker.end_text()
    talker_start = time.perf_counter()
    while talker.write_block():
        pass
    frames = talker.all_frames()
    talker_s = time.perf_counter() - talker_start
    decode_start = time.perf_counter()
    audio = model.codec.decode(frames[None])[0]
    decode_s = time.perf_counter() - decode_start
    total = time.perf_counter() - start
    audio_s = audio.shape[-1] / model.codec.sampling_rate
    return {"first_audio_s": total, "total_s": total, "audio_s": audio_s, "rtf": total / audio_s,
            "thinker_s": thinker_s, "talker_s": talker_s, "decode_s": decode_s, "frames": int(frames.shape[-1]),
            "talker_frames_per_s": frames.shape[-1] / talker_s}


@torch.no_grad()
def thinker_decode(model, reply_tokens: int, prompt_length: int = 60, rounds: int = 3) -> dict:
    """Thinker decode tokens/s of the spoken-reply runner and of plain `generate()`, against the roofline.

    Memory bandwidth on a shared machine drifts by tens of percent within minutes, so each of `rounds` rounds
    measures it right before and after its own decodes (the higher reading counts: the conservative choice), and
    the fractions are the median over rounds.
    """
    from modeling_concept_talker.generation import SpokenGenerationConfig, make_runner

    thinker = model.thinker
    prompt = torch.randint(0, thinker.config.vocab_size - 1000, (1, prompt_length),
                           generator=torch.Generator().manual_seed(1))
    bytes_per_token = weight_bytes_per_token(thinker, torch.bfloat16)
    measured = []
    for _ in range(rounds):
        before = measure_bandwidth()
        runner = make_runner(model, 1, SpokenGenerationConfig(), prompt_length + reply_tokens + 1)
        ours = time_runner(runner, prompt, reply_tokens)
        plain = time_generate(thinker, prompt, reply_tokens)
        bandwidth = max(before, measure_bandwidth())
        roofline = bandwidth / bytes_per_token
        measured.append({"bandwidth_gb_s": bandwidth / 1e9, "roofline_tok_s": roofline, "tok_s": ours["tok_s"],
                         "roofline_fraction": ours["tok_s"] / roofline, "generate_tok_s": plain["tok_s"],
                         "generate_roofline_fraction": plain["tok_s"] / roofline})
    result = {key: statistics.median(r[key] for r in measured) for key in measured[0]}
    result.update(runner=type(runner).__name__, runner_backend=getattr(runner, "backend", "torch"),
                  weight_bytes_per_token=bytes_per_token, rounds=measured)
    return result


def summarize(runs: list[dict], key: str) -> dict:
    values = [r[key] for r in runs]
    return {"p50": statistics.median(values), "p95": percentile(values, 95), "min": min(values), "max": max(values)}


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    streaming = [1000 * r["first_audio_s"] for r in results["runs"]["streaming"]]
    baseline = [1000 * r["first_audio_s"] for r in results["runs"]["baseline"]]
    left.boxplot([streaming, baseline], tick_labels=["streaming\n(this package)", "plain generate()\n(baseline)"])
    left.axhline(TARGETS["first_audio_ms_p50"], color="tab:red", linestyle="--", label="target p50 300 ms")
    left.set_ylabel("first audio after end of speech (ms)")
    left.set_yscale("log")
    left.legend()
    left.set_title(f"{results['preset']}: {results['reply_tokens']}-token reply to a 5 s question")
    decode = results["thinker_decode"]
    names = ["plain generate()", "spoken-reply runner", "roofline"]
    values = [decode["generate_tok_s"], decode["tok_s"], decode["roofline_tok_s"]]
    right.bar(names, values, color=["tab:gray", "tab:blue", "tab:green"])
    right.set_ylabel("thinker decode tokens/s (bf16)")
    right.set_title(f"roofline at {decode['bandwidth_gb_s']:.1f} GB/s measured")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_bench(preset: str = "0.5b", runs: int = 10, reply_tokens: int = REPLY_TOKENS, log=print) -> dict:
    model, processor = build(preset)
    rate = 16000
    wave = question_wave(rate)
    log(f"{preset} preset, random weights, thinker bf16, {torch.get_num_threads()} threads; warming up")
    run_streaming(model, processor, wave, rate, reply_tokens)  # warm-up: kernel build, allocator, oneDNN caches
    run_baseline(model, processor, wave, rate, reply_tokens)
    measured: dict[str, list[dict]] = {"streaming": [], "baseline": []}
    with OtherCpuShare() as others:
        for i in range(runs):
            for name, fn in (("streaming", run_streaming), ("baseline", run_baseline)):
                result = fn(model, processor, wave, rate, reply_tokens)
                measured[name].append(result)
                log(f"run {i + 1:2d} {name:>9}: first audio {1000 * result['first_audio_s']:7.0f} ms, "
                    f"total {result['total_s']:6.2f} s, audio {result['audio_s']:.2f} s, rtf {result['rtf']:.3f}")
    decode = thinker_decode(model, reply_tokens)
    log(f"thinker decode: {decode['tok_s']:.1f} tok/s = {100 * decode['roofline_fraction']:.0f}% of the roofline "
        f"({decode['roofline_tok_s']:.1f} tok/s at {decode['bandwidth_gb_s']:.1f} GB/s); plain generate() "
        f"{decode['generate_tok_s']:.1f} tok/s = {100 * decode['generate_roofline_fraction']:.0f}%")
    streaming, baseline = measured["streaming"], measured["baseline"]
    first = summarize(streaming, "first_audio_s")
    base_first = summarize(baseline, "first_audio_s")
    results = {
        "preset": preset,
        "weights": "random",
        "reply_tokens": reply_tokens,
        "question_seconds": QUESTION_SECONDS,
        "threads": torch.get_num_threads(),
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "torch": torch.__version__},
        "first_audio_ms_p50": 1000 * first["p50"],
        "first_audio_ms_p95": 1000 * first["p95"],
        "rtf": statistics.median(r["rtf"] for r in streaming),
        "reply_audio_s": statistics.median(r["audio_s"] for r in streaming),
        "reply_tokens_made": min(r["reply_tokens"] for r in streaming),
        "listen_compute_s_for_5s": statistics.median(r["listen_compute_s"] for r in streaming),
        "thinker_tok_s": decode["tok_s"],
        "thinker_roofline_fraction": decode["roofline_fraction"],
        "generate_roofline_fraction": decode["generate_roofline_fraction"],
        "talker_frames_per_s": statistics.median(r["talker_frames_per_s"] for r in baseline),
        "baseline_first_audio_ms_p50": 1000 * base_first["p50"],
        "baseline_first_audio_ms_p95": 1000 * base_first["p95"],
        "baseline_rtf": statistics.median(r["rtf"] for r in baseline),
        "speedup_first_audio": base_first["p50"] / first["p50"],
        "peak_rss_mb": peak_rss_bytes() / 2**20,
        "other_processes_cpu_share": others.share,
        "thinker_decode": decode,
        "targets": TARGETS,
        "runs": measured,
    }
    results["meets"] = {
        "first_audio_ms_p50": results["first_audio_ms_p50"] <= TARGETS["first_audio_ms_p50"],
        "rtf": results["rtf"] <= TARGETS["rtf"],
        "thinker_roofline_fraction": results["thinker_roofline_fraction"] >= TARGETS["thinker_roofline_fraction"],
        "speedup_first_audio": results["speedup_first_audio"] >= TARGETS["speedup_first_audio"],
    }
    log(f"first audio p50 {results['first_audio_ms_p50']:.0f} ms (p95 {results['first_audio_ms_p95']:.0f}) vs "
        f"baseline {results['baseline_first_audio_ms_p50']:.0f} ms: {results['speedup_first_audio']:.1f}x; "
        f"rtf {results['rtf']:.3f}; talker {results['talker_frames_per_s']:.0f} frames/s; "
        f"peak RSS {results['peak_rss_mb']:.0f} MB")
    return results


def run(args) -> int:
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1.")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run_bench(args.preset, args.runs, args.reply_tokens)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2)
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
