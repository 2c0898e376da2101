"""What int8 weights cost in output: the thinker's next-token logits with int8 weights against bf16 (and fp32).

    python -m benchmarks.int8_agreement --json benchmarks/results/int8_agreement.json

Real text (held-out tutoring dialogues, `concept_talker.data.dialogue`, test split, tokenized with the Qwen2.5 tokenizer) is
read one token at a time (the decode path, where the native kernel runs) by `FastThinkerRunner`s over the same
thinker: fp32 weights (the exact function), bf16 weights (what spoken replies use), and int8 weights with one scale
per output channel. At each of `--positions` positions the next-token logits are compared:

- **top-1 agreement**: the share of positions whose highest logit is the same token (int8 vs bf16, and each vs
  fp32: bf16's own agreement with fp32 says how much of the difference is rounding that bf16 already has);
- **KL divergence** of the next-token distributions (nats, mean over positions) and the largest logit difference.

Thinkers: the tiny trained one (`checkpoints/tiny-lyra/thinker`, trained on this text) and the `0.5b` preset with
random weights (Qwen2.5-0.5B's dimensions; its near-uniform logits make top-1 a strict test: ties break on
rounding). Each native kernel this CPU runs (`--kernel`) is measured, and plain PyTorch where there is none.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.nn import functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_THINKER = os.path.join(REPO, "checkpoints", "tiny-lyra", "thinker")


def tutoring_text(turns: int = 60, split: str = "test", seed: int = 0) -> str:
    """Held-out tutoring dialogues as plain text: each turn's question and reply on lines of their own."""
    from concept_talker.data.dialogue import generate_dialogues

    return "\n".join(f"{turn.question_text}\n{turn.reply_text}" for turn in generate_dialogues(turns, split, seed))


def tokenizer_dir() -> str:
    assets = os.environ.get("CONCEPT_TALKER_ASSETS", os.path.join(os.path.dirname(REPO), "shared", "assets"))
    return os.path.join(assets, "qwen2.5-tokenizer")


def load_thinker(name: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    if name == "tiny-lyra":
        return AutoModelForCausalLM.from_pretrained(TINY_THINKER, dtype=torch.float32).eval()
    from benchmarks.thinker_decode import build_thinker

    return build_thinker(name, torch.float32)


@torch.no_grad()
def next_token_logits(runner, ids: torch.Tensor) -> torch.Tensor:
    """`[positions, vocab]` fp32: the logits after each token of `ids` `[1, positions]`, read one at a time."""
    runner.reset()
    rows = []
    for i in range(ids.shape[1]):
        logits, _ = runner.append(runner.embed(ids[:, i : i + 1]))
        rows.append(logits[0])
    return torch.stack(rows)


def compare(test: torch.Tensor, reference: torch.Tensor) -> dict:
    """Top-1 agreement, mean KL(reference || test) in nats, largest logit difference, over positions."""
    kl = F.kl_div(F.log_softmax(test, -1), F.log_softmax(reference, -1), log_target=True, reduction="none").sum(-1)
    return {
        "top1_agreement": float((test.argmax(-1) == reference.argmax(-1)).float().mean()),
        "kl_mean": float(kl.mean()),
        "max_abs_logit_diff": float((test - reference).abs().max()),
        "reference_logit_std": float(reference.std()),
    }


def measure(thinker_name: str, ids: torch.Tensor, kernels: list[str], log=print) -> dict:
    from modeling_concept_talker.fast_thinker import FastThinkerRunner

    thinker = load_thinker(thinker_name)
    length = ids.shape[1] + 8
    snapshots = {
        "fp32": FastThinkerRunner(thinker, max_length=length, dtype=torch.float32, backend="torch", weights="share"),
        "bf16": FastThinkerRunner(thinker, max_length=length, dtype=torch.bfloat16, backend="torch"),
        "int8": FastThinkerRunner(thinker, max_length=length, weights="int8", backend="torch"),
    }
    del thinker
    result = {"positions": int(ids.shape[1]), "by_kernel": {}}
    for kernel in kernels:
        start = time.perf_counter()
        logits, ran = {}, {}
        for fmt, snapshot in snapshots.items():
            runner = snapshot.sharing_weights(1, length, backend=kernel)
            ran[fmt] = runner.kernel
            logits[fmt] = next_token_logits(runner, ids)
        entry = {
            "ran": ran,
            "int8_vs_bf16": compare(logits["int8"], logits["bf16"]),
            "int8_vs_fp32": compare(logits["int8"], logits["fp32"]),
            "bf16_vs_fp32": compare(logits["bf16"], logits["fp32"]),
            "seconds": time.perf_counter() - start,
        }
        result["by_kernel"][kernel] = entry
        log(f"{thinker_name} on {ran['int8']}: top-1 agreement int8 vs bf16 "
            f"{100 * entry['int8_vs_bf16']['top1_agreement']:.1f}%, int8 vs fp32 "
            f"{100 * entry['int8_vs_fp32']['top1_agreement']:.1f}%, bf16 vs fp32 "
            f"{100 * entry['bf16_vs_fp32']['top1_agreement']:.1f}%; KL int8||bf16 {entry['int8_vs_bf16']['kl_mean']:.2e} "
            f"nats over {ids.shape[1]} positions")
    return result


def run(thinkers: list[str], positions: int, kernels: list[str], log=print) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir())
    ids = tokenizer(tutoring_text(), return_tensors="pt").input_ids[:, :positions]
    if ids.shape[1] < positions:
        raise SystemExit(f"the text has only {ids.shape[1]} tokens; ask for fewer --positions")
    log(f"{positions} positions of held-out tutoring text, e.g. {tokenizer.decode(ids[0, :24])!r}")
    return {
        "text": "concept_talker.data.dialogue test split, seed 0: question and reply per line",
        "positions": positions,
        "quantization": "int8 weights, symmetric, one fp32 scale per output channel (lm_head and tied embedding too)",
        "thinkers": {name: measure(name, ids, kernels, log) for name in thinkers},
    }


def main(argv=None) -> None:
    from benchmarks.engines import kernels_to_measure

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--thinkers", default="tiny-lyra,0.5b",
                        help="comma-separated: tiny-lyra (checkpoints/tiny-lyra/thinker) and/or model presets")
    parser.add_argument("--positions", type=int, default=300)
    parser.add_argument("--kernel", default="all", help="avx512, avx2, torch (comma-separated) or all")
    args = parser.parse_args(argv)
    report = run(args.thinkers.split(","), args.positions, kernels_to_measure(args.kernel))
    if args.json:
        from concept_talker.files import write_json

        write_json(args.json, report)


if __name__ == "__main__":
    main()
