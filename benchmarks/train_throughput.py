"""Training throughput of the `0.5b` recipe's reply stage: its first steps, on this machine (issue 5).

    python -m benchmarks.train_throughput --json benchmarks/results/train_0.5b_cpu.json [--steps 4] [--bf16]

The real path, with random weights (no Hub here): the `0.5b` preset (Qwen2.5-0.5B's dimensions with LoRA r=16,
EnCodec 24 kHz at 8 codebooks), `SpokenReplyTrainer` with the recipe's settings (gradient checkpointing, the
adapter at its own learning rate), `SpokenTurnCollator` over rows shaped like the synthetic data: a 5 s question
(375 frames), a 4 s reply (300 frames) and its text. The first step is a warm-up; the rest are timed.

Reported: tokens/s, counting what one step processes: thinker positions (prompt, concept slots and reply text) +
talker steps (audio frames + the delay pattern's extra steps + the reply-text states it reads); and each part.
No GPU was lent to the sessions that built this, so there is no GPU figure (tokens/s, MFU) yet.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch

QUESTION_FRAMES = 375  # 5 s at 75 Hz
REPLY_FRAMES = 300  # 4 s
REPLY_TEXT = "Brave means ready to face danger or pain without fear. A brave person acts even when afraid."


def rows(n: int, num_codebooks: int, codebook_size: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "id": f"bench-{i}",
            "instruction": "",
            "question_text": "What does brave mean?",
            "reply_text": REPLY_TEXT,
            "question_codes": rng.integers(0, codebook_size, (num_codebooks, QUESTION_FRAMES)).tolist(),
            "reply_codes": rng.integers(0, codebook_size, (num_codebooks, REPLY_FRAMES)).tolist(),
        }
        for i in range(n)
    ]


def run_bench(steps: int = 4, batch_size: int = 2, bf16: bool = False, preset: str = "0.5b", log=print) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback, TrainingArguments

    from concept_talker.data.collators import SpokenTurnCollator
    from concept_talker.loading import load_model
    from concept_talker.training.trainers import SpokenReplyTrainer

    loaded = load_model(preset)
    model, processor = loaded.model, loaded.processor
    model.train()
    config = model.config
    collator = SpokenTurnCollator(processor, "reply", config.codec_num_codebooks)
    data = Dataset.from_list(rows(batch_size * (steps + 1), config.codec_num_codebooks, config.codebook_size))
    sample = collator(data.select(range(batch_size)).to_list())
    thinker_tokens = int(sample["attention_mask"].sum())
    reply_text_tokens = int((sample["labels"] != -100).sum())
    talker_steps = batch_size * (REPLY_FRAMES + config.codec_num_codebooks + reply_text_tokens // batch_size)

    step_times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_times.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, max_steps=steps + 1, per_device_train_batch_size=batch_size, learning_rate=2e-4,
            gradient_checkpointing=True, bf16=bf16, use_cpu=not torch.cuda.is_available(), report_to=[],
            save_strategy="no", logging_steps=1, dataloader_num_workers=0, remove_unused_columns=False,
            disable_tqdm=True,
        )
        trainer = SpokenReplyTrainer(model=model, args=args, train_dataset=data, data_collator=collator,
                                     adapter_learning_rate=5e-5, callbacks=[Clock()])
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        log(f"{preset} reply stage, batch {batch_size}, {thinker_tokens} thinker positions + {talker_steps} talker "
            f"steps per batch, {trainable / 1e6:.1f}M of {total / 1e6:.0f}M parameters train, bf16={bf16}")
        trainer.train()
    timed = step_times[1:]
    step_s = float(np.median(timed))
    tokens = thinker_tokens + talker_steps
    result = {
        "preset": preset,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "torch": torch.__version__},
        "bf16": bf16,
        "batch_size": batch_size,
        "gradient_checkpointing": True,
        "steps_timed": len(timed),
        "warmup_step_s": step_times[0],
        "step_s_median": step_s,
        "thinker_positions_per_batch": thinker_tokens,
        "talker_steps_per_batch": talker_steps,
        "tokens_per_s": tokens / step_s,
        "thinker_tokens_per_s": thinker_tokens / step_s,
        "talker_steps_per_s": talker_steps / step_s,
        "trainable_parameters": trainable,
        "parameters": total,
    }
    log(f"median step {step_s:.2f} s: {result['tokens_per_s']:.0f} tokens/s "
        f"({result['thinker_tokens_per_s']:.0f} thinker positions/s, {result['talker_steps_per_s']:.0f} talker steps/s)")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--steps", type=int, default=4, help="timed steps (after one warm-up step)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (as the recipe on a GPU)")
    parser.add_argument("--preset", default="0.5b")
    args = parser.parse_args(argv)
    result = run_bench(args.steps, args.batch_size, args.bf16, args.preset)
    if args.json:
        from concept_talker.files import write_json

        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
