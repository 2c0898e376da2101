"""Thinker decode speed against the memory-bandwidth roofline (issue 3).

    python -m benchmarks.thinker_decode --json OUT.json

On the 0.5b preset's thinker (Qwen2.5-0.5B's dimensions, random weights, bf16), in one process:

- memory read bandwidth: two methods over 512 MiB (16x the L3 cache), median of 7 reads each: `torch.sum` of an
  fp32 tensor, and the native kernel's plain vector loads (AVX-512 or AVX2, the fastest this CPU runs) over a block
  on huge pages (4 KB pages cost TLB misses; on one thread torch.sum also falls short of plain loads). Measured right
  before and right after every timed run, since neighbours on a shared machine change it; the roofline uses the
  highest of these readings;
- bytes of weights one decoded token reads: all decoder layers, the final norm and the whole lm_head matrix (tied to
  the embedding in Qwen2.5-0.5B: 27% of the model), plus the token's embedding row, in the dtype used;
- decode tokens/s of (a) transformers `generate()` (greedy, 40 new tokens after a 60-token prompt; per-token times
  from a streamer), (b) `generate()` with transformers' documented fast path (a static cache and `torch.compile` of
  the forward; engine `generate_compiled`, compiled before timing), (c) `ThinkerRunner` and (d) `FastThinkerRunner`
  on each kernel (`--kernels`: avx512, avx2, torch; default every instruction set this CPU runs), with bf16 and
  with int8 weights (40 greedy steps after the same prompt): the median step time gives tokens/s, the mean is
  reported too; int8 is also given as a ratio to bf16 on the same kernel and against the bf16 roofline;
- roofline fraction = tokens/s / (bandwidth / bytes per token), per round with that round's bandwidth;
- prefill time of the 60 positions for the runners, at once and as 3 chunks of 20 (streamed concepts); peak RSS;
- the CPU share other processes took during each run (from /proc/stat), since a shared 2-core machine is rarely
  idle: runs with a large share understate every engine, most of all the multi-threaded ones.

Engines run in interleaved rounds; the summary gives medians over rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import statistics
import time

import torch
from torch import nn


# ---- measuring functions (reused by `concept-talker bench`) ------------------------------------------------
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def use_clock(name: str) -> None:
    """What the measurements count: "wall" (elapsed seconds; default) or "cpu" (this process's CPU seconds, with one
    torch thread: what one core does while this process runs on it, however little of the machine it gets when
    others share it; memory stalls count, waiting for the scheduler does not)."""
    global _clock
    if name not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {name!r}")
    if name == "cpu":
        torch.set_num_threads(1)
    _clock = CLOCKS[name]


@contextlib.contextmanager
def measuring(clock: str, threads: int | None = None):
    """Measure with `clock` (see `use_clock`) and `threads` torch threads (None: as they are), then put both back:
    a benchmark run from a test or a notebook leaves the process as it found it."""
    global _clock
    saved_clock, saved_threads = _clock, torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        use_clock(clock)
        yield
    finally:
        _clock = saved_clock
        torch.set_num_threads(saved_threads)


def now() -> float:
    """The benchmark clock (see `use_clock`)."""
    return _clock()

def torch_read_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 7) -> float:
    """Memory read bandwidth in bytes/s: median time of `torch.sum` over an `nbytes` fp32 tensor (after a warm-up)."""
    data = torch.ones(nbytes // 4)
    data.sum()
    times = []
    for _ in range(repeats):
        start = now()
        data.sum()
        times.append(now() - start)
    return nbytes / statistics.median(times)


def measure_bandwidths(nbytes: int = 512 * 2**20, repeats: int = 7) -> dict[str, float]:
    """Read bandwidth (bytes/s) by each method: `torch_sum` (torch.sum over an fp32 tensor on 4 KB pages) and, where
    the fast thinker's kernel is available, `native_read` (plain AVX-512 loads over a block on huge pages)."""
    from modeling_concept_talker.fast_thinker import native_read_bandwidth

    result = {"torch_sum": torch_read_bandwidth(nbytes, repeats)}
    native = native_read_bandwidth(nbytes, repeats, clock=now)
    if native is not None:
        result["native_read"] = native
    return result


def measure_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 7) -> float:
    """Memory read bandwidth in bytes/s: the highest of the methods of `measure_bandwidths` (the conservative
    choice for a roofline: a higher bandwidth means a lower fraction)."""
    return max(measure_bandwidths(nbytes, repeats).values())


def weight_bytes_per_token(thinker: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of weights one decode step of `thinker` reads, each parameter counted in `dtype` (default: its own).

    Counted: every parameter of every decoder layer, the final norm, the whole lm_head matrix, and one row of the
    input embedding (the whole table is only read when it is the tied lm_head, which is then counted once).
    """
    def size(p: torch.Tensor) -> int:
        return p.numel() * (torch.empty(0, dtype=dtype).element_size() if dtype is not None else p.element_size())

    backbone = thinker.model
    seen: set[int] = set()
    total = 0
    for module in (backbone.layers, backbone.norm, thinker.lm_head):
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += size(p)
    embedding = backbone.embed_tokens.weight
    if id(embedding) not in seen:
        total += size(embedding[0])
    return total


class _TokenClock:
    """A `generate()` streamer that timestamps each new token."""

    def __init__(self):
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value):
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(now())

    def end(self):
        pass


def time_generate(thinker: nn.Module, prompt_ids: torch.Tensor, new_tokens: int = 40, **generate_kwargs) -> dict:
    """Plain transformers `generate()`, greedy: prefill seconds and the per-token decode times. `generate_kwargs`
    go to `generate()` (e.g. `cache_implementation="static"`)."""
    clock = _TokenClock()
    start = now()
    with torch.no_grad():
        out = thinker.generate(
            prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=thinker.config.eos_token_id,
            streamer=clock,
            **generate_kwargs,
        )
    steps = [b - a for a, b in zip(clock.times, clock.times[1:])]
    return _decode_stats(steps, prefill_s=clock.times[0] - start, tokens=out[0, prompt_ids.shape[1] :].tolist())


def time_prefill(runner, prompt_ids: torch.Tensor, chunks: int = 1) -> tuple[float, torch.Tensor]:
    """Seconds to append the prompt to a runner in `chunks` equal appends, and the last logits."""
    start = now()
    for piece in prompt_ids.chunk(chunks, dim=1):
        logits, _ = runner.append(runner.embed(piece))
    return now() - start, logits


def time_runner(runner, prompt_ids: torch.Tensor, new_tokens: int = 40) -> dict:
    """A runner (`ThinkerRunner` interface): prefill the prompt in one append, then greedy steps."""
    prefill, logits = time_prefill(runner, prompt_ids)
    steps, tokens = [], []
    for _ in range(new_tokens):
        start = now()
        token = logits.argmax(-1, keepdim=True)
        logits, _ = runner.append(runner.embed(token))
        steps.append(now() - start)
        tokens.append(int(token[0, 0]))
    return _decode_stats(steps, prefill_s=prefill, tokens=tokens)


def _decode_stats(steps: list[float], prefill_s: float, tokens: list[int]) -> dict:
    return {
        "prefill_s": prefill_s,
        "step_s_median": statistics.median(steps),
        "tok_s": 1.0 / statistics.median(steps),
        "tok_s_mean": len(steps) / sum(steps),
        "steps": len(steps),
        "tokens": tokens,
    }


class OtherCpuShare:
    """Context manager: CPU time other processes (and the hypervisor's steal) took while the block ran, as a
    fraction of all cores (0: the machine was ours; 0.5 on 2 cores: one core busy elsewhere). None off Linux."""

    share: float | None = None

    @staticmethod
    def _busy_seconds() -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:9]]
        except OSError:
            return None
        user, nice, system, idle, iowait, irq, softirq, steal = fields
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    def __enter__(self):
        self._busy, self._own, self._wall = self._busy_seconds(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        busy = self._busy_seconds()
        if busy is not None and self._busy is not None:
            wall = time.perf_counter() - self._wall
            other = busy - self._busy - (time.process_time() - self._own)
            self.share = max(0.0, other / (wall * (os.cpu_count() or 1)))


def rss_bytes() -> int:
    """Current resident set size."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_thinker(preset: str = "0.5b", dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> nn.Module:
    """The preset's thinker with random weights."""
    from transformers import AutoModelForCausalLM

    from configuration import load_preset

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(load_preset(preset).thinker_config, dtype=dtype).eval()


# ---- the benchmark -------------------------------------------------------------------------------------------
def run(
    preset: str = "0.5b",
    rounds: int = 3,
    prompt_length: int = 60,
    new_tokens: int = 40,
    engines: tuple[str, ...] = ("generate", "generate_compiled", "thinker_runner", "fast_thinker_runner"),
    kernels: tuple[str, ...] | None = None,
    int8: bool = True,
    log=print,
) -> dict:
    from modeling_concept_talker.fast_thinker import FastThinkerRunner, load_native_kernel
    from modeling_concept_talker.thinker_runner import ThinkerRunner

    from benchmarks.engines import CompiledForward, kernels_to_measure

    dtype = torch.bfloat16
    rss_start = rss_bytes()
    thinker = build_thinker(preset, dtype)
    rss_thinker = rss_bytes()
    lib, why = load_native_kernel()
    max_length = prompt_length + new_tokens + 8
    kernels = list(kernels or kernels_to_measure("all"))
    fast_engines = {}
    if "fast_thinker_runner" in engines:
        engines = tuple(name for name in engines if name != "fast_thinker_runner")
        snapshots = {"bf16": FastThinkerRunner(thinker, max_length=max_length, dtype=dtype, backend="torch")}
        if int8:
            snapshots["int8"] = FastThinkerRunner(thinker, max_length=max_length, weights="int8", backend="torch")
        for kernel in kernels:
            for fmt, snapshot in snapshots.items():
                fast_engines[f"fast/{kernel}/{fmt}"] = snapshot.sharing_weights(1, max_length, backend=kernel)
        engines = engines + tuple(fast_engines)
    rss_fast = rss_bytes()
    compiled = CompiledForward(thinker) if "generate_compiled" in engines else None
    bytes_per_token = weight_bytes_per_token(thinker, dtype)
    prompt = torch.randint(0, 150000, (1, prompt_length), generator=torch.Generator().manual_seed(1))
    try:
        from concept_talker_kernels import describe_cpu

        cpu = describe_cpu()
    except ImportError:
        cpu = platform.machine()
    log(
        f"{preset} thinker, bf16, {bytes_per_token / 1e6:.1f} MB of weights per token, {torch.get_num_threads()} "
        f"threads, CPU: {cpu}; fast runners: "
        + ", ".join(f"{name} on {runner.kernel}" for name, runner in fast_engines.items())
        + (f" (no native kernel: {why})" if why else "")
    )
    if compiled is not None:
        start = time.perf_counter()
        with compiled:
            time_generate(thinker, prompt, 3, **compiled.generate_kwargs)
        log(f"static cache + torch.compile: compiled in {time.perf_counter() - start:.0f} s")

    results: dict[str, list[dict]] = {name: [] for name in engines}
    for round_index in range(rounds):
        for name in engines:
            before = measure_bandwidths()
            with OtherCpuShare() as others:
                if name == "generate":
                    stats = time_generate(thinker, prompt, new_tokens)
                elif name == "generate_compiled":
                    with compiled:
                        stats = time_generate(thinker, prompt, new_tokens, **compiled.generate_kwargs)
                elif name == "thinker_runner":
                    stats = time_runner(ThinkerRunner(thinker), prompt, new_tokens)
                    stats["prefill_3x20_s"] = time_prefill(ThinkerRunner(thinker), prompt, chunks=3)[0]
                else:
                    fast = fast_engines[name]
                    fast.reset()
                    stats = time_runner(fast, prompt, new_tokens)
                    fast.reset()
                    stats["prefill_3x20_s"] = time_prefill(fast, prompt, chunks=3)[0]
            after = measure_bandwidths()
            bandwidth = max(max(before.values()), max(after.values()))
            roofline = bandwidth / bytes_per_token
            stats.update(
                bandwidths_before=before,
                bandwidths_after=after,
                bandwidth_bytes_s=bandwidth,
                roofline_tok_s=roofline,
                fraction=stats["tok_s"] / roofline,
                other_cpu_share=others.share,
            )
            results[name].append(stats)
            log(
                f"round {round_index + 1} {name:>20}: {stats['tok_s']:6.2f} tok/s (mean {stats['tok_s_mean']:.2f}), "
                f"bandwidth {bandwidth / 1e9:5.1f} GB/s, roofline {roofline:5.1f} tok/s, "
                f"fraction {stats['fraction']:.3f}, prefill {stats['prefill_s']:.3f} s"
                + (f", other processes {100 * others.share:.0f}% CPU" if others.share is not None else "")
            )

    def median(name, key):
        values = [r[key] for r in results[name] if key in r]
        return statistics.median(values) if values else None

    summary = {
        name: {
            key: median(name, key)
            for key in (
                "tok_s", "tok_s_mean", "bandwidth_bytes_s", "roofline_tok_s", "fraction", "prefill_s", "prefill_3x20_s",
                "other_cpu_share",
            )
            if median(name, key) is not None
        }
        for name in engines
    }

    def ratio(a: str, b: str) -> float:
        return statistics.median(x["tok_s"] / y["tok_s"] for x, y in zip(results[a], results[b]))

    ratios = {}
    for name in fast_engines:
        for base in ("generate", "generate_compiled"):
            if base in engines:
                ratios[f"{name}_over_{base}"] = ratio(name, base)
        if name.endswith("/int8") and name[: -len("int8")] + "bf16" in fast_engines:
            ratios[f"{name}_over_bf16"] = ratio(name, name[: -len("int8")] + "bf16")
    if "generate" in engines and "generate_compiled" in engines:
        ratios["generate_compiled_over_generate"] = ratio("generate_compiled", "generate")
    summary["ratios"] = ratios
    if "thinker_runner" in engines:
        for name in fast_engines:
            same = [
                sum(a == b for a, b in zip(f["tokens"], t["tokens"])) / len(f["tokens"])
                for f, t in zip(results[name], results["thinker_runner"])
            ]
            summary[name]["tokens_equal_to_thinker_runner"] = min(same)
    report = {
        "preset": preset,
        "clock": "cpu" if _clock is time.process_time else "wall",
        "dtype": "bfloat16",
        "threads": torch.get_num_threads(),
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "torch": torch.__version__,
        "prompt_length": prompt_length,
        "new_tokens": new_tokens,
        "weight_bytes_per_token": bytes_per_token,
        "bandwidth_method": (
            "highest of: torch.sum over a 512 MiB fp32 tensor, and the native kernel's vector loads over 512 MiB "
            "on huge pages; median of 7 reads each, measured before and after each run"
        ),
        "cpu": cpu,
        "fast_kernels": {name: runner.kernel for name, runner in fast_engines.items()},
        "int8_weight_bytes_per_token": (
            snapshots["int8"].weight_bytes_per_token() if fast_engines and int8 else None),
        "native_unavailable_reason": why,
        "summary": summary,
        "rounds": {name: [{k: v for k, v in r.items() if k != "tokens"} for r in rs] for name, rs in results.items()},
        "fast_runner_memory_bytes": {fmt: r.memory() for fmt, r in snapshots.items()} if fast_engines else None,
        "rss_bytes": {"start": rss_start, "thinker": rss_thinker, "with_fast_runner": rss_fast, "peak": peak_rss_bytes()},
    }
    for name in engines:
        s = summary[name]
        log(
            f"{name:>20}: {s['tok_s']:6.2f} tok/s, {100 * s['fraction']:.1f}% of the bf16 roofline "
            f"({s['roofline_tok_s']:.1f} tok/s at {s['bandwidth_bytes_s'] / 1e9:.1f} GB/s), prefill 60: {s['prefill_s']:.3f} s"
            + (f", 3x20: {s['prefill_3x20_s']:.3f} s" if "prefill_3x20_s" in s else "")
        )
    for name, value in ratios.items():
        log(f"{name}: {value:.2f}x")
    log(f"peak RSS {report['rss_bytes']['peak'] / 2**30:.2f} GiB")
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the report to this file")
    parser.add_argument("--preset", default="0.5b")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-length", type=int, default=60)
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    parser.add_argument(
        "--engines", default="generate,generate_compiled,thinker_runner,fast_thinker_runner",
        help="comma-separated subset"
    )
    parser.add_argument("--kernels", default="all",
                        help="kernels of the fast runner: avx512, avx2, torch (comma-separated), or all (default: every "
                             "instruction set this CPU runs)")
    parser.add_argument("--no-int8", action="store_true", help="skip the fast runner with int8 weights")
    parser.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                        help="wall: elapsed time (default); cpu: CPU time of one thread (a machine shared with others)")
    args = parser.parse_args(argv)
    from benchmarks.engines import kernels_to_measure

    with measuring(args.clock, args.threads):
        report = run(args.preset, args.rounds, args.prompt_length, args.new_tokens, tuple(args.engines.split(",")),
                     tuple(kernels_to_measure(args.kernels)), int8=not args.no_int8)
    if args.json:
        from concept_talker.files import write_json

        write_json(args.json, report)


if __name__ == "__main__":
    main()
