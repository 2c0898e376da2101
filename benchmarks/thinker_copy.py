"""How fast the small thinker learns to copy: a toy task that isolates the skill listening needs.

Transcribing and "repeat after me" ask the thinker to write the tokens it reads in the concept slots, in order. The
tiny presets' thinker is trained from scratch, and it learns this slowly (copy-from-perfect-slots CER 0.55 after the
text stage). This measures the skill alone, on the tiny-lyra thinker's shape (4 x 128, tied embeddings, random
init): sequences `[prefix] START x1..xn SEP x1..xn END` of random tokens, the loss on the copy only, accuracy of the
copied tokens every 100 steps. `--prefix` puts that many tokens before the sequence (the chat template puts 24 before
the concept slots); `--bare-steps` trains without the prefix first (a curriculum); `--vocab` sets how many distinct
tokens the copies are drawn from (the data's vocabulary is about 10,000) and `--embedding-std` the std of the token
embeddings at initialisation (0.02 is transformers' default; the tiny presets' `thinker_embedding_std` is 0.1).

    python -m benchmarks.thinker_copy --prefix 0 --steps 600
    python -m benchmarks.thinker_copy --prefix 40 --steps 600
    python -m benchmarks.thinker_copy --prefix 40 --bare-steps 600 --steps 1000 --json OUT.json
    python -m benchmarks.thinker_copy --vocab 8000 --steps 800                        # 0.22 at step 800
    python -m benchmarks.thinker_copy --vocab 8000 --embedding-std 0.1 --steps 800    # 0.81 at step 800
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

START, SEP, END, FIRST_TOKEN = 2, 3, 4, 10
PREFIX_TOKENS = 5  # the prefix cycles through token ids 5..9


def tiny_lyra_thinker(vocab: int, embedding_std: float | None = None):
    """A random thinker of the tiny-lyra preset's shape over `vocab` toy tokens; `embedding_std`: its (tied) token
    embeddings' std at initialisation (None: transformers' default)."""
    from transformers import Qwen2ForCausalLM

    from configuration import load_preset

    config = load_preset("tiny-lyra").thinker_config
    config.vocab_size, config.pad_token_id = vocab + FIRST_TOKEN, None
    thinker = Qwen2ForCausalLM(config)
    if embedding_std is not None:
        with torch.no_grad():
            thinker.get_input_embeddings().weight.normal_(0.0, embedding_std)
    return thinker


def batch(generator: torch.Generator, rows: int, vocab: int, prefix: int) -> tuple[torch.Tensor, int]:
    """`[rows, prefix + 2n + 3]` token ids (n from 3 to 11) and n."""
    n = int(torch.randint(3, 12, (1,), generator=generator))
    tokens = torch.randint(FIRST_TOKEN, FIRST_TOKEN + vocab, (rows, n), generator=generator)
    filler = (torch.arange(prefix) % PREFIX_TOKENS + PREFIX_TOKENS).expand(rows, prefix)
    mark = lambda token: torch.full((rows, 1), token)  # noqa: E731
    return torch.cat([filler, mark(START), tokens, mark(SEP), tokens, mark(END)], dim=1), n


def run(vocab: int = 1000, prefix: int = 0, steps: int = 600, bare_steps: int = 0, lr: float = 1e-3, rows: int = 32,
        seed: int = 0, every: int = 100, embedding_std: float | None = None, log=print) -> dict:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    thinker = tiny_lyra_thinker(vocab, embedding_std)
    optimizer = torch.optim.AdamW(thinker.parameters(), lr=lr, weight_decay=0.0)
    curve, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        length = 0 if step <= bare_steps else prefix
        ids, n = batch(generator, rows, vocab, length)
        logits = thinker(input_ids=ids).logits[:, :-1]
        targets = ids[:, 1:].clone()
        targets[:, : length + n + 1] = -100  # the loss on the copy (and its end) only
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % every == 0:
            copied = logits.argmax(-1)[:, length + n + 1 : length + 2 * n + 1]
            accuracy = float((copied == ids[:, length + n + 2 : length + 2 * n + 2]).float().mean())
            curve.append({"step": step, "prefix": length, "loss": loss.item(), "copy_accuracy": accuracy})
            log(f"step {step:5d}  prefix {length:3d}  loss {loss.item():6.3f}  copy accuracy {accuracy:.3f}  "
                f"({time.perf_counter() - start:.0f} s)")
    return {"vocab": vocab, "prefix": prefix, "bare_steps": bare_steps, "lr": lr, "rows": rows, "seed": seed,
            "embedding_std": embedding_std,
            "threads": torch.get_num_threads(), "curve": curve}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=1000, help="random tokens the copies are made of")
    parser.add_argument("--prefix", type=int, default=0, help="tokens before each sequence")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--bare-steps", type=int, default=0, help="the first steps without the prefix")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embedding-std", type=float, help="token embeddings' std at initialisation")
    parser.add_argument("--json", help="write the curve to this file")
    args = parser.parse_args(argv)
    report = run(args.vocab, args.prefix, args.steps, args.bare_steps, args.lr, seed=args.seed,
                 embedding_std=args.embedding_std)
    if args.json:
        from concept_talker.files import write_json

        write_json(args.json, report)


if __name__ == "__main__":
    main()
