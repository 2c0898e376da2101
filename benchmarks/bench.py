"""`concept-talker bench`: how fast a spoken reply starts, on each native kernel, against transformers' `generate()`.

    concept-talker bench --json benchmarks/results/bench.json --plot benchmarks/results/bench.png
    concept-talker bench --kernel avx2        # one path only (here: AVX2 forced, also on an AVX-512 CPU)

One process, the `0.5b` preset (Qwen2.5-0.5B's dimensions, EnCodec 24 kHz at 8 codebooks) with random weights,
the thinker in bf16, everything else fp32, torch's default threads (one per core):

- **streaming** (this package), once per kernel (`--kernel`, default `all`: every instruction set this CPU runs,
  AVX-512 and AVX2 on an AVX-512 machine; plain PyTorch where there is none): a 5 s question is fed in 80 ms
  pieces as a microphone would deliver them (`SpokenTurn.feed`: codec encoder, concept adapter and thinker prefill
  run per completed window while the user speaks); at end of speech the clock starts and `stream_reply()` yields
  audio chunks. First audio = the first chunk; RTF = seconds from end of speech to the last chunk / seconds of
  reply audio. The reply is 40 text tokens of a fixed English answer (`REPLY_TEXT`, through `reply_token_ids`:
  the thinker reads each token as it would its own choice; a random thinker's own choice has no sounds to speak).
  **streaming-int8**: the same with int8 thinker and talker weights.
- **baseline**: the same weights driven the plain way: at end of speech the whole question goes through the
  processor, the thinker reads it and `transformers` `generate()` writes the whole reply (40 tokens, with its
  hidden states), then the talker writes every frame of the same fixed reply, then the codec decodes them in one
  call. Its first audio is its total time. **baseline-compiled**: the same with transformers' documented fast
  path (a static cache, `cache_implementation="static"`, and `torch.compile` of the thinker's forward; compiled
  once, before timing).
- **thinker decode** against the memory-bandwidth roofline, per kernel: tokens/s of the runner spoken replies use
  (bf16 and int8 weights) and of `generate()` plain and compiled, each over 40 greedy steps; bytes of bf16 weights
  read per token; read bandwidth measured before and after in this run (`benchmarks.thinker_decode`).
- **talker** frames/s (talker steps alone, all codebooks per frame) and the codec's streaming decode speed.

Medians and p95 over `--runs` runs (default 10) of each, interleaved (streaming per kernel, baselines, streaming,
...), so drifts of a shared machine hit all alike; the ratios are of medians from the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from concept_talker.files import write_json
from benchmarks.engines import CompiledForward, kernels_to_measure
from benchmarks.thinker_decode import (
    CLOCKS,
    OtherCpuShare,
    measure_bandwidth,
    now,
    peak_rss_bytes,
    time_generate,
    time_runner,
    measuring,
    weight_bytes_per_token,
)

QUESTION_SECONDS = 5.0
REPLY_TOKENS = 40
# What every engine speaks (a random thinker would pick the same token over and over, e.g. "\n", which has no
# sounds): the thinker still reads each token as it would its own choice; the talker speaks its phonemes.
REPLY_TEXT = ("The answer is nine, because four plus five makes nine. Picture four apples on a table, then put five "
              "more apples next to them, and count every apple together, one by one, until you reach nine. Well "
              "done, that is exactly how adding works.")
PIECE_SECONDS = 0.08
TARGETS = {"first_audio_ms_p50": 300.0, "rtf": 0.5, "thinker_roofline_fraction": 0.70, "speedup_first_audio": 5.0,
           "int8_over_bf16_tok_s": 1.6}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--plot", help="write a PNG of the first-audio latencies to this file")
    parser.add_argument("--preset", default="0.5b", help="model preset with random weights (default: 0.5b)")
    parser.add_argument("--runs", type=int, default=10, help="runs of each engine (default: 10)")
    parser.add_argument("--reply-tokens", type=int, default=REPLY_TOKENS, help="reply length in text tokens")
    parser.add_argument("--threads", type=int, help="torch threads (default: one per core)")
    parser.add_argument("--kernel", default="all",
                        help="kernels to measure, comma-separated: avx512, avx2, torch, auto ($CONCEPT_TALKER_KERNEL or "
                             "the CPU's best), or all (every instruction set this CPU runs; default)")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 streaming runs and int8 decoding")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the static-cache + torch.compile baseline (its compilation takes minutes)")
    parser.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                        help="wall: elapsed time (default); cpu: this process's CPU time with one thread, for a "
                             "machine shared with other work (what one core does while this process runs)")


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

    The talker speaks the reply's phonemes on a timeline whose symbol lengths its (random) duration head predicts,
    so the reply's audio length follows from its text; the engines report their audio seconds, and the real-time
    factors divide by each run's own.
    """
    from concept_talker.loading import load_model

    loaded = load_model(preset)
    model = loaded.model
    model.thinker.to(torch.bfloat16)
    return model, loaded.processor


def reply_ids(processor, reply_tokens: int) -> list[int]:
    """The first `reply_tokens` tokens of `REPLY_TEXT` (repeated as needed)."""
    ids = processor.tokenizer(REPLY_TEXT, add_special_tokens=False).input_ids
    return (ids * (reply_tokens // len(ids) + 1))[:reply_tokens]


def settings(reply_tokens: int, kernel: str = "auto", int8: bool = False) -> dict:
    # Greedy everywhere: every run does the same work. The audio may run a little past the text (talker EOS).
    extra = dict(thinker_dtype="int8", talker_dtype="int8") if int8 else {}
    return dict(thinker_max_new_tokens=reply_tokens, talker_do_sample=False, max_audio_seconds=12.0, kernel=kernel,
                **extra)


def kernels_that_ran(model, config) -> dict:
    """Which code the thinker and the talker run on under `config` (a SpokenGenerationConfig)."""
    from modeling_concept_talker.generation import fast_talker_runner, make_runner

    thinker = make_runner(model, 1, config, 8)
    talker = fast_talker_runner(model, config, 8)
    return {"thinker": getattr(thinker, "kernel", "reference"),
            "talker": "reference" if talker is None else talker.kernel}


def run_streaming(model, processor, wave: np.ndarray, rate: int, reply_tokens: int, kernel: str = "auto",
                  int8: bool = False) -> dict:
    """One spoken turn fed live, answered by streaming; times from the end of speech."""
    from modeling_concept_talker.streaming import SpokenTurn

    listen_start = now()
    turn = SpokenTurn(model, processor, sampling_rate=rate, **settings(reply_tokens, kernel, int8))
    ran = getattr(turn.runner, "kernel", "reference")
    piece = int(PIECE_SECONDS * rate)
    for start in range(0, len(wave), piece):
        turn.feed(wave[start : start + piece])
    listen_s = now() - listen_start
    end_of_speech = now()
    first, audio_s, text = None, 0.0, []
    for chunk in turn.stream_reply(reply_ids(processor, reply_tokens)):
        if first is None:
            first = now() - end_of_speech
        audio_s += chunk.duration
        text = chunk.text_tokens
    total = now() - end_of_speech
    return {"first_audio_s": first, "total_s": total, "audio_s": audio_s, "rtf": total / audio_s,
            "reply_tokens": len(text), "listen_compute_s": listen_s, "thinker_kernel": ran}


@torch.no_grad()
def run_baseline(model, processor, wave: np.ndarray, rate: int, reply_tokens: int,
                 compiled: CompiledForward | None = None) -> dict:
    """The plain way: whole question -> thinker `generate()` -> talker over the whole reply -> one codec decode.
    With `compiled`, the thinker's `generate()` runs with a static cache and the compiled forward."""
    from contextlib import nullcontext

    from modeling_concept_talker.generation import PromptTail, SpokenGenerationConfig, TalkerStream
    from modeling_concept_talker.processing_concept_talker import build_prompt

    start = now()
    inputs = processor(text=build_prompt(), audio=wave, sampling_rate=rate, return_tensors="pt")
    embeds = model.embed_inputs(inputs["input_ids"], input_values=inputs.get("input_values"),
                                input_values_mask=inputs.get("input_values_mask"))
    thinker = model.thinker
    with compiled or nullcontext():
        out = thinker.generate(
            inputs_embeds=embeds.to(thinker.dtype), attention_mask=inputs["attention_mask"],
            max_new_tokens=reply_tokens, min_new_tokens=reply_tokens, do_sample=False,
            output_hidden_states=True, return_dict_in_generate=True, pad_token_id=thinker.config.eos_token_id,
            **(compiled.generate_kwargs if compiled else {}),
        )
    thinker_s = now() - start
    tokens = torch.tensor(reply_ids(processor, reply_tokens))  # spoken as the streaming engine speaks them
    # the state that chose token i is the last position's final hidden state of generate step i
    states = [step[-1][0, -1] for step in out.hidden_states]
    prompt = PromptTail(model)  # the talker's prompt states, from generate()'s hidden states of the prompt
    prompt.add(embeds, out.hidden_states[0][-1].to(embeds.dtype))
    # the talker as the streaming engine runs it (its decoder on the native kernel where there is one)
    talker = TalkerStream(model, SpokenGenerationConfig(**settings(reply_tokens)), processor.tokenizer,
                          prompt=prompt.states())
    token_embeds = model.get_input_embeddings()(tokens[None])[0]
    for i, state in enumerate(states):
        talker.add_token(int(tokens[i]), state, token_embeds[i], last=i == len(states) - 1)
    talker.end_text()
    talker_start = now()
    while not talker.finished:
        if not talker.write_ready():
            break
    frames = talker.all_frames()
    talker_s = now() - talker_start
    decode_start = now()
    audio = model.codec.decode(frames[None])[0]
    decode_s = now() - decode_start
    total = now() - start
    audio_s = audio.shape[-1] / model.codec.sampling_rate
    return {"first_audio_s": total, "total_s": total, "audio_s": audio_s, "rtf": total / audio_s,
            "thinker_s": thinker_s, "talker_s": talker_s, "decode_s": decode_s, "frames": int(frames.shape[-1]),
            "talker_frames_per_s": frames.shape[-1] / talker_s}


@torch.no_grad()
def thinker_decode(model, reply_tokens: int, kernels: list[str], compiled: CompiledForward | None = None,
                   int8: bool = True, prompt_length: int = 60, rounds: int = 3, log=print) -> dict:
    """Thinker decode tokens/s of the spoken-reply runner on each kernel (bf16, and int8 weights) and of
    `generate()` (plain; static cache + torch.compile), against the bf16 roofline.

    Memory bandwidth on a shared machine drifts by tens of percent within minutes, so each of `rounds` rounds
    measures it right before and after its own decodes (the higher reading counts: the conservative choice), and
    the fractions are the median over rounds.
    """
    from modeling_concept_talker.generation import SpokenGenerationConfig, make_runner

    thinker = model.thinker
    prompt = torch.randint(0, thinker.config.vocab_size - 1000, (1, prompt_length),
                           generator=torch.Generator().manual_seed(1))
    bytes_per_token = weight_bytes_per_token(thinker, torch.bfloat16)
    length = prompt_length + reply_tokens + 1
    engines = {}
    for kernel in kernels:
        engines[f"{kernel}/bf16"] = SpokenGenerationConfig(kernel=kernel)
        if int8:
            engines[f"{kernel}/int8"] = SpokenGenerationConfig(kernel=kernel, thinker_dtype="int8")
    measured = []
    ran = {}
    for _ in range(rounds):
        before = measure_bandwidth()
        row = {}
        for name, config in engines.items():
            runner = make_runner(model, 1, config, length)
            ran[name] = getattr(runner, "kernel", "reference")
            if name.endswith("/int8"):
                ran[name + "_weight_bytes_per_token"] = runner.weight_bytes_per_token()
            row[name] = time_runner(runner, prompt, reply_tokens)["tok_s"]
        row["generate"] = time_generate(thinker, prompt, reply_tokens)["tok_s"]
        if compiled is not None:
            with compiled:
                row["generate_compiled"] = time_generate(thinker, prompt, reply_tokens,
                                                         **compiled.generate_kwargs)["tok_s"]
        bandwidth = max(before, measure_bandwidth())
        row.update(bandwidth_gb_s=bandwidth / 1e9, roofline_tok_s=bandwidth / bytes_per_token)
        measured.append(row)
        log("thinker decode round: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()))
    result = {key: statistics.median(r[key] for r in measured) for key in measured[0]}
    result["fractions"] = {
        name: statistics.median(r[name] / r["roofline_tok_s"] for r in measured)
        for name in measured[0] if name not in ("bandwidth_gb_s", "roofline_tok_s")
    }
    result["ratios"] = {}
    for kernel in kernels:
        bf16 = [r[f"{kernel}/bf16"] for r in measured]
        result["ratios"][f"{kernel}/bf16_over_generate"] = statistics.median(
            a / r["generate"] for a, r in zip(bf16, measured))
        if compiled is not None:
            result["ratios"][f"{kernel}/bf16_over_generate_compiled"] = statistics.median(
                a / r["generate_compiled"] for a, r in zip(bf16, measured))
        if int8:
            result["ratios"][f"{kernel}/int8_over_bf16"] = statistics.median(
                r[f"{kernel}/int8"] / a for a, r in zip(bf16, measured))
    if compiled is not None:
        result["ratios"]["generate_compiled_over_generate"] = statistics.median(
            r["generate_compiled"] / r["generate"] for r in measured)
    result.update(kernels=ran, weight_bytes_per_token=bytes_per_token, rounds=measured)
    return result


def summarize(runs: list[dict], key: str) -> dict:
    values = [r[key] for r in runs]
    return {"p50": statistics.median(values), "p95": percentile(values, 95), "min": min(values), "max": max(values)}


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = list(results["runs"])
    left.boxplot([[1000 * r["first_audio_s"] for r in results["runs"][name]] for name in names],
                 tick_labels=[name.replace("/", "\n") for name in names])
    left.axhline(TARGETS["first_audio_ms_p50"], color="tab:red", linestyle="--", label="target p50 300 ms")
    left.set_ylabel("first audio after end of speech (ms)")
    left.set_yscale("log")
    left.tick_params(axis="x", labelsize=7)
    left.legend()
    left.set_title(f"{results['preset']}: {results['reply_tokens']}-token reply to a 5 s question")
    decode = results["thinker_decode"]
    bars = [name for name in decode["fractions"]]
    right.bar([name.replace("/", "\n") for name in bars], [decode[name] for name in bars], color="tab:blue")
    right.axhline(decode["roofline_tok_s"], color="tab:green", linestyle="--", label="bf16 roofline")
    right.set_ylabel("thinker decode tokens/s")
    right.tick_params(axis="x", labelsize=7)
    right.legend()
    right.set_title(f"roofline at {decode['bandwidth_gb_s']:.1f} GB/s measured ({results['cpu']})", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_bench(preset: str = "0.5b", runs: int = 10, reply_tokens: int = REPLY_TOKENS, kernels: str = "all",
              int8: bool = True, compile_baseline: bool = True, log=print) -> dict:
    from modeling_concept_talker.generation import SpokenGenerationConfig

    try:
        from concept_talker_kernels import describe_cpu
    except ImportError:
        describe_cpu = platform.machine  # noqa: N806
    kernel_names = kernels_to_measure(kernels)
    model, processor = build(preset)
    rate = 16000
    wave = question_wave(rate)
    cpu = describe_cpu()
    log(f"{preset} preset, random weights, thinker bf16, {torch.get_num_threads()} threads; CPU: {cpu}; kernels: "
        f"{', '.join(kernel_names)}; warming up")
    ran = {kernel: kernels_that_ran(model, SpokenGenerationConfig(**settings(reply_tokens, kernel)))
           for kernel in kernel_names}
    engines = {}
    for kernel in kernel_names:
        engines[f"streaming/{kernel}"] = lambda kernel=kernel: run_streaming(model, processor, wave, rate,
                                                                            reply_tokens, kernel)
        if int8:
            engines[f"streaming-int8/{kernel}"] = lambda kernel=kernel: run_streaming(
                model, processor, wave, rate, reply_tokens, kernel, int8=True)
    engines["baseline"] = lambda: run_baseline(model, processor, wave, rate, reply_tokens)
    compiled = None
    if compile_baseline:
        compiled = CompiledForward(model.thinker)
        engines["baseline-compiled"] = lambda: run_baseline(model, processor, wave, rate, reply_tokens, compiled)
    for name, engine in engines.items():  # warm-up: kernel builds, snapshots, allocator, oneDNN, compilation
        start = time.perf_counter()
        engine()
        log(f"warm-up {name}: {time.perf_counter() - start:.1f} s")
    measured: dict[str, list[dict]] = {name: [] for name in engines}
    with OtherCpuShare() as others:
        for i in range(runs):
            for name, engine in engines.items():
                result = engine()
                measured[name].append(result)
                log(f"run {i + 1:2d} {name:>24}: first audio {1000 * result['first_audio_s']:7.0f} ms, "
                    f"total {result['total_s']:6.2f} s, audio {result['audio_s']:.2f} s, rtf {result['rtf']:.3f}")
    decode = thinker_decode(model, reply_tokens, kernel_names, compiled, int8=int8, log=log)
    baseline = measured["baseline"]
    base_first = summarize(baseline, "first_audio_s")

    def streaming_summary(name: str, kernel: str) -> dict:
        runs_ = measured[name]
        first = summarize(runs_, "first_audio_s")
        summary = {
            "first_audio_ms_p50": 1000 * first["p50"],
            "first_audio_ms_p95": 1000 * first["p95"],
            "rtf": statistics.median(r["rtf"] for r in runs_),
            "reply_audio_s": statistics.median(r["audio_s"] for r in runs_),
            "reply_tokens_made": min(r["reply_tokens"] for r in runs_),
            "listen_compute_s_for_5s": statistics.median(r["listen_compute_s"] for r in runs_),
            "speedup_first_audio": base_first["p50"] / first["p50"],
            "thinker_kernel": runs_[0]["thinker_kernel"],
        }
        if "baseline-compiled" in measured:
            summary["speedup_first_audio_vs_compiled"] = (
                summarize(measured["baseline-compiled"], "first_audio_s")["p50"] / first["p50"])
        return summary

    by_kernel = {}
    for kernel in kernel_names:
        entry = streaming_summary(f"streaming/{kernel}", kernel)
        entry["ran"] = ran[kernel]
        entry["thinker_tok_s"] = decode[f"{kernel}/bf16"]
        entry["thinker_roofline_fraction"] = decode["fractions"][f"{kernel}/bf16"]
        if int8:
            entry["int8"] = streaming_summary(f"streaming-int8/{kernel}", kernel)
            entry["int8"].update(
                thinker_tok_s=decode[f"{kernel}/int8"],
                thinker_fraction_of_bf16_roofline=decode["fractions"][f"{kernel}/int8"],
                int8_over_bf16_tok_s=decode["ratios"][f"{kernel}/int8_over_bf16"],
            )
        entry["meets"] = {
            "first_audio_ms_p50": entry["first_audio_ms_p50"] <= TARGETS["first_audio_ms_p50"],
            "rtf": entry["rtf"] <= TARGETS["rtf"],
            "thinker_roofline_fraction": entry["thinker_roofline_fraction"] >= TARGETS["thinker_roofline_fraction"],
            "speedup_first_audio": entry["speedup_first_audio"] >= TARGETS["speedup_first_audio"],
        }
        if int8:
            entry["meets"]["int8_over_bf16_tok_s"] = (
                entry["int8"]["int8_over_bf16_tok_s"] >= TARGETS["int8_over_bf16_tok_s"])
        by_kernel[kernel] = entry
    main = by_kernel[kernel_names[0]]
    results = {
        "preset": preset,
        "weights": "random",
        "reply_tokens": reply_tokens,
        "question_seconds": QUESTION_SECONDS,
        "threads": torch.get_num_threads(),
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "torch": torch.__version__},
        "cpu": cpu,
        "kernels_measured": kernel_names,
        # the first kernel's figures (the fastest this CPU runs, with --kernel all), as before
        "kernel": main["ran"]["thinker"],
        "first_audio_ms_p50": main["first_audio_ms_p50"],
        "first_audio_ms_p95": main["first_audio_ms_p95"],
        "rtf": main["rtf"],
        "reply_audio_s": main["reply_audio_s"],
        "reply_tokens_made": main["reply_tokens_made"],
        "listen_compute_s_for_5s": main["listen_compute_s_for_5s"],
        "thinker_tok_s": main["thinker_tok_s"],
        "thinker_roofline_fraction": main["thinker_roofline_fraction"],
        "generate_roofline_fraction": decode["fractions"]["generate"],
        "talker_frames_per_s": statistics.median(r["talker_frames_per_s"] for r in baseline),
        "baseline_first_audio_ms_p50": 1000 * base_first["p50"],
        "baseline_first_audio_ms_p95": 1000 * base_first["p95"],
        "baseline_rtf": statistics.median(r["rtf"] for r in baseline),
        "speedup_first_audio": main["speedup_first_audio"],
        "peak_rss_mb": peak_rss_bytes() / 2**20,
        "other_processes_cpu_share": others.share,
        "by_kernel": by_kernel,
        "thinker_decode": decode,
        "targets": TARGETS,
        "runs": measured,
    }
    if compiled is not None:
        compiled_first = summarize(measured["baseline-compiled"], "first_audio_s")
        results.update(baseline_compiled_first_audio_ms_p50=1000 * compiled_first["p50"],
                       baseline_compiled_rtf=statistics.median(r["rtf"] for r in measured["baseline-compiled"]))
    results["meets"] = main["meets"]
    for kernel, entry in by_kernel.items():
        log(f"[{entry['ran']['thinker']}] first audio p50 {entry['first_audio_ms_p50']:.0f} ms (p95 "
            f"{entry['first_audio_ms_p95']:.0f}) vs baseline {results['baseline_first_audio_ms_p50']:.0f} ms: "
            f"{entry['speedup_first_audio']:.1f}x; rtf {entry['rtf']:.3f}; thinker {entry['thinker_tok_s']:.1f} tok/s "
            f"= {100 * entry['thinker_roofline_fraction']:.0f}% of the roofline"
            + (f"; int8 {entry['int8']['thinker_tok_s']:.1f} tok/s = {entry['int8']['int8_over_bf16_tok_s']:.2f}x bf16, "
               f"first audio {entry['int8']['first_audio_ms_p50']:.0f} ms" if int8 else ""))
    log(f"plain generate() {decode['generate']:.1f} tok/s"
        + (f", static cache + torch.compile {decode['generate_compiled']:.1f} tok/s, first audio "
           f"{results['baseline_compiled_first_audio_ms_p50']:.0f} ms" if compiled is not None else "")
        + f"; talker {results['talker_frames_per_s']:.0f} frames/s; peak RSS {results['peak_rss_mb']:.0f} MB; "
        f"other processes took {100 * (others.share or 0):.0f}% of the CPU")
    return results


def run(args) -> int:
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1.")
    with measuring(args.clock, args.threads):
        results = run_bench(args.preset, args.runs, args.reply_tokens, args.kernel, int8=not args.no_int8,
                            compile_baseline=not args.no_compile)
    results["clock"] = args.clock
    if args.json:
        write_json(args.json, results)
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
