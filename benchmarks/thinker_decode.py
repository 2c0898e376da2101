"""Thinker decode speed against the memory-bandwidth roofline (issue 3).

    python -m benchmarks.thinker_decode --json OUT.json

On the 0.5b preset's thinker (Qwen2.5-0.5B's dimensions, random weights, bf16), in one process:

- memory read bandwidth: two methods over 512 MiB (16x the L3 cache), median of 7 reads each: `torch.sum` of an
  fp32 tensor, and the fast thinker kernel's plain AVX-512 loads over a block on huge pages (4 KB pages cost TLB
  misses; on one thread torch.sum also falls short of plain loads). Measured right before and right after every
  timed run, since neighbours on a shared machine change it; the roofline uses the highest of these readings;
- bytes of weights one decoded token reads: all decoder layers, the final norm and the whole lm_head matrix (tied to
  the embedding in Qwen2.5-0.5B: 27% of the model), plus the token's embedding row, in the dtype used;
- decode tokens/s of (a) transformers `generate()` (greedy, 40 new tokens after a 60-token prompt; per-token times
  from a streamer), (b) `ThinkerRunner` and (c) `FastThinkerRunner` (40 greedy steps after the same prompt): the
  median step time gives tokens/s, the mean is reported too;
- roofline fraction = tokens/s / (bandwidth / bytes per token), per round with that round's bandwidth;
- prefill time of the 60 positions for the runners, at once and as 3 chunks of 20 (streamed concepts); peak RSS;
- the CPU share other processes took during each run (from /proc/stat), since a shared 2-core machine is rarely
  idle: runs with a large share understate every engine, most of all the multi-threaded ones.

Engines run in interleaved rounds; the summary gives medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time

import torch
from torch import nn


# ---- measuring functions (reused by `concept-talker bench`) ------------------------------------------------
def torch_read_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 7) -> float:
    """Memory read bandwidth in bytes/s: median time of `torch.sum` over an `nbytes` fp32 tensor (after a warm-up)."""
    data = torch.ones(nbytes // 4)
    data.sum()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - start)
    return nbytes / statistics.median(times)


def measure_bandwidths(nbytes: int = 512 * 2**20, repeats: int = 7) -> dict[str, float]:
    """Read bandwidth (bytes/s) by each method: `torch_sum` (torch.sum over an fp32 tensor on 4 KB pages) and, where
    the fast thinker's kernel is available, `native_read` (plain AVX-512 loads over a block on huge pages)."""
    from modeling_concept_talker.fast_thinker import native_read_bandwidth

    result = {"torch_sum": torch_read_bandwidth(nbytes, repeats)}
    native = native_read_bandwidth(nbytes, repeats)
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
        self.times.append(time.perf_counter())

    def end(self):
        pass


def time_generate(thinker: nn.Module, prompt_ids: torch.Tensor, new_tokens: int = 40) -> dict:
    """Plain transformers `generate()`, greedy: prefill seconds and the per-token decode times."""
    clock = _TokenClock()
    start = time.perf_counter()
    with torch.no_grad():
        out = thinker.generate(
            prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=thinker.config.eos_token_id,
            streamer=clock,
        )
    steps = [b - a for a, b in zip(clock.times, clock.times[1:])]
    return _decode_stats(steps, prefill_s=clock.times[0] - start, tokens=out[0, prompt_ids.shape[1] :].tolist())


def time_prefill(runner, prompt_ids: torch.Tensor, chunks: int = 1) -> tuple[float, torch.Tensor]:
    """Seconds to append the prompt to a runner in `chunks` equal appends, and the last logits."""
    start = time.perf_counter()
    for piece in prompt_ids.chunk(chunks, dim=1):
        logits, _ = runner.append(runner.embed(piece))
    return time.perf_counter() - start, logits


def time_runner(runner, prompt_ids: torch.Tensor, new_tokens: int = 40) -> dict:
    """A runner (`ThinkerRunner` interface): prefill the prompt in one append, then greedy steps."""
    prefill, logits = time_prefill(runner, prompt_ids)
    steps, tokens = [], []
    for _ in range(new_tokens):
        start = time.perf_counter()
        token = logits.argmax(-1, keepdim=True)
        logits, _ = runner.append(runner.embed(token))
        steps.append(time.perf_counter() - start)
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
    engines: tuple[str, ...] = ("generate", "thinker_runner", "fast_thinker_runner"),
    log=print,
) -> dict:
    from modeling_concept_talker.fast_thinker import FastThinkerRunner, load_native_kernel
    from modeling_concept_talker.thinker_runner import ThinkerRunner

    dtype = torch.bfloat16
    rss_start = rss_bytes()
    thinker = build_thinker(preset, dtype)
    rss_thinker = rss_bytes()
    lib, why = load_native_kernel()
    max_length = prompt_length + new_tokens + 8
    fast = FastThinkerRunner(thinker, max_length=max_length, dtype=dtype)
    rss_fast = rss_bytes()
    bytes_per_token = weight_bytes_per_token(thinker, dtype)
    prompt = torch.randint(0, 150000, (1, prompt_length), generator=torch.Generator().manual_seed(1))
    log(
        f"{preset} thinker, bf16, {bytes_per_token / 1e6:.1f} MB of weights per token, {torch.get_num_threads()} "
        f"threads, fast runner backend {fast.backend}" + (f" ({why})" if why else "")
    )

    results: dict[str, list[dict]] = {name: [] for name in engines}
    for round_index in range(rounds):
        for name in engines:
            before = measure_bandwidths()
            with OtherCpuShare() as others:
                if name == "generate":
                    stats = time_generate(thinker, prompt, new_tokens)
                elif name == "thinker_runner":
                    stats = time_runner(ThinkerRunner(thinker), prompt, new_tokens)
                    stats["prefill_3x20_s"] = time_prefill(ThinkerRunner(thinker), prompt, chunks=3)[0]
                else:
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
    if "generate" in engines and "fast_thinker_runner" in engines:
        summary["fast_over_generate"] = statistics.median(
            f["tok_s"] / g["tok_s"] for f, g in zip(results["fast_thinker_runner"], results["generate"])
        )
    if "thinker_runner" in engines and "fast_thinker_runner" in engines:
        same = [
            sum(a == b for a, b in zip(f["tokens"], t["tokens"])) / len(f["tokens"])
            for f, t in zip(results["fast_thinker_runner"], results["thinker_runner"])
        ]
        summary["fast_tokens_equal_to_thinker_runner"] = min(same)
    report = {
        "preset": preset,
        "dtype": "bfloat16",
        "threads": torch.get_num_threads(),
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "torch": torch.__version__,
        "prompt_length": prompt_length,
        "new_tokens": new_tokens,
        "weight_bytes_per_token": bytes_per_token,
        "bandwidth_method": (
            "highest of: torch.sum over a 512 MiB fp32 tensor, and the native kernel's AVX-512 loads over 512 MiB "
            "on huge pages; median of 7 reads each, measured before and after each run"
        ),
        "fast_backend": fast.backend,
        "native_unavailable_reason": why,
        "summary": summary,
        "rounds": {name: [{k: v for k, v in r.items() if k != "tokens"} for r in rs] for name, rs in results.items()},
        "fast_runner_memory_bytes": fast.memory(),
        "rss_bytes": {"start": rss_start, "thinker": rss_thinker, "with_fast_runner": rss_fast, "peak": peak_rss_bytes()},
    }
    for name in engines:
        s = summary[name]
        log(
            f"{name:>20}: {s['tok_s']:6.2f} tok/s, {100 * s['fraction']:.1f}% of the roofline "
            f"({s['roofline_tok_s']:.1f} tok/s at {s['bandwidth_bytes_s'] / 1e9:.1f} GB/s), prefill 60: {s['prefill_s']:.3f} s"
            + (f", 3x20: {s['prefill_3x20_s']:.3f} s" if "prefill_3x20_s" in s else "")
        )
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
        "--engines", default="generate,thinker_runner,fast_thinker_runner", help="comma-separated subset"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args.preset, args.rounds, args.prompt_length, args.new_tokens, tuple(args.engines.split(",")))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
