"""The talker alone: how well a talker learns to speak a run's replies, in minutes, with the rest of the model frozen.
The quick way to try a speaking idea (a learning rate, more steps, a wider or deeper talker) before a whole reply
stage.

A checkpoint's thinker and concept adapter stay frozen and give the talker what it reads in the reply stage: the
thinker's states of the reply tokens (the reply text teacher-forced) and the reply's phonemes on the timeline with
their true lengths, on the rows the reply stage learns from (the train split and the spoken repeat turns of the
`repeats` split where the dataset has one; `--repeat-rows N` takes the first N, 0 none). The talker is trained
afresh from the checkpoint's talker config (with `--talker` overrides such as `hidden_size=192`), or, with
`--keep-talker`, further from the checkpoint's own. Every `--eval-every` steps it is
measured on held-out items and voices (the test split):
- teacher-forced code accuracy over all codebooks, beside the copy-the-previous-frame and unigram baselines;
- Whisper's WER of the reference replies spoken by the talker (text forced, durations predicted, as `chat` speaks),
  beside the ceiling (the same sentences in the house voice through the codec) and the garbage control (the talker's
  audio played backwards).

    python -m benchmarks.talker_alone --checkpoint runs/tiny-lyra/final --data runs/tiny-lyra/data --steps 1500 \
        --json benchmarks/results/talker_alone.json
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from benchmarks.adapter_alone import config_overrides, warmup_cosine


def fresh_talker(model, overrides: dict):
    """Replace the model's talker by a new one from its config with `overrides` (the heads' width follows)."""
    from modeling_concept_talker.talker import ConceptTalkerTalkerModel

    config = model.config.talker_config
    unknown = [key for key in overrides if not hasattr(config, key)]
    if unknown:
        raise SystemExit(f"--talker: the talker's config has no {unknown}.")
    for key, value in overrides.items():
        setattr(config, key, value)
    model.talker = ConceptTalkerTalkerModel(config)
    return model


def measure(model, processor, rows, judge, seed: int = 0) -> dict:
    """Teacher-forced code accuracy and Whisper's hearing of the forced replies on `rows`."""
    from concept_talker.evaluation.evaluate import audio_code_accuracy
    from concept_talker.evaluation.speech import speech_intelligibility

    model.eval()
    accuracy = audio_code_accuracy(model, processor, rows)
    heard = speech_intelligibility(model, processor, rows, judge, seed=seed, free_replies=False)
    model.train()
    return {"code_accuracy": accuracy["audio_code_accuracy"],
            "copy_previous_accuracy": accuracy["audio_copy_previous_accuracy"],
            "unigram_accuracy": accuracy["audio_unigram_accuracy"], **heard}


def train_talker(model, processor, dataset, judge, steps: int, batch_size: int = 16, learning_rate: float = 2e-3,
                 examples: int = 24, eval_every: int = 500, seed: int = 0, repeat_rows: int | None = None) -> dict:
    """Train the model's talker alone for `steps` (50 warm-up steps, then cosine, as the reply stage) and measure it
    along the way. It trains on the rows the reply stage does: the train split and the first `repeat_rows` of the
    `repeats` split where the dataset has one (None: all)."""
    from concept_talker.data.collators import SpokenTurnCollator, dataset_vocabulary
    from concept_talker.data.dataset import with_features
    from concept_talker.training.train import stage_train_rows

    torch.manual_seed(seed)
    generator = random.Random(seed)
    collator = SpokenTurnCollator(processor, "reply", model.config, concept_labels=False,
                                  text_vocabulary=dataset_vocabulary(processor.tokenizer, dataset, model.config,
                                                                     copy_turns=True))
    train = with_features(stage_train_rows(dataset, "reply", {"repeat_rows": repeat_rows}, seed))
    test_split = with_features(dataset["test"])
    test = [test_split[i] for i in range(min(examples, len(test_split)))]
    model.set_trainable(concept_adapter=False, thinker="frozen", talker=True)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    duration_weight = model.config.talker_config.duration_loss_weight
    curve, started, losses = [], time.perf_counter(), []
    model.train()
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, steps, learning_rate)
        batch = collator([train[i] for i in generator.sample(range(len(train)), batch_size)])
        out = model(**batch)
        loss = out.audio_loss + duration_weight * out.duration_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if step % eval_every == 0 or step == steps:
            point = {"step": step, "train_loss": round(sum(losses) / len(losses), 4),
                     **measure(model, processor, test, judge, seed),
                     "seconds": round(time.perf_counter() - started, 1)}
            point.pop("judge", None)
            losses.clear()
            curve.append(point)
            print(point, flush=True)
    last = curve[-1]
    return {"steps": steps, "batch_size": batch_size, "learning_rate": learning_rate, "train_rows": len(train),
            "train_words": len({w for text in train["reply_text"] for w in text.lower().split()}),
            "test_examples": len(test),
            "talker_config": {k: v for k, v in model.config.talker_config.to_dict().items()
                              if k in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                                       "dropout", "history_dropout")},
            "talker_parameters": sum(p.numel() for p in model.talker.parameters()),
            "wer": last["wer"], "ceiling_wer": last["ceiling_wer"], "garbage_wer": last["garbage_wer"],
            "code_accuracy": last["code_accuracy"], "curve": curve}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="a Concept-Talker checkpoint: its thinker and adapter (frozen) feed the talker")
    parser.add_argument("--data", required=True, help="the dataset folder (concept-talker synth, with reply codes)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--talker", nargs="*", default=[], metavar="KEY=VALUE",
                        help="talker config overrides for the fresh talker, e.g. hidden_size=192 num_hidden_layers=4")
    parser.add_argument("--keep-talker", action="store_true", help="train the checkpoint's own talker further")
    parser.add_argument("--repeat-rows", type=int, default=None,
                        help="how many of the dataset's spoken repeat turns (its `repeats` split) join the training "
                             "rows (default all)")
    parser.add_argument("--examples", type=int, default=24, help="test replies measured")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--judge", default=None, help="a Whisper model (folder or Hub id; default: the offline one)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    from datasets import load_from_disk

    from concept_talker.evaluation.asr import WhisperRecognizer
    from modeling_concept_talker import ConceptTalkerForConditionalGeneration, ConceptTalkerProcessor

    if args.keep_talker and args.talker:
        raise SystemExit("--talker builds a fresh talker; --keep-talker trains the checkpoint's own: choose one.")
    model = ConceptTalkerForConditionalGeneration.from_pretrained(args.checkpoint)
    processor = ConceptTalkerProcessor.from_pretrained(args.checkpoint)
    if model.tokenizer is None:
        model.tokenizer = processor.tokenizer
    dataset = load_from_disk(args.data)
    if "reply_codes" not in dataset["train"].column_names:
        raise SystemExit(f"{args.data} holds no reply codes: make it with concept-talker synth.")
    if not args.keep_talker:
        fresh_talker(model, config_overrides(args.talker, "--talker"))
    judge = WhisperRecognizer(args.judge)
    result = train_talker(model, processor, dataset, judge, args.steps, args.batch_size, args.learning_rate,
                          args.examples, args.eval_every, repeat_rows=args.repeat_rows)
    print(f"talker alone, {args.steps} steps: WER {result['wer']:.3f} (ceiling {result['ceiling_wer']:.3f}, garbage "
          f"{result['garbage_wer']:.3f}); code accuracy {result['code_accuracy']:.3f}")
    if args.json:
        from concept_talker.files import write_json

        write_json(args.json, {"checkpoint": args.checkpoint, "data": args.data, "judge": judge.describe(),
                               "fresh_talker": not args.keep_talker, "run": result}, indent=1)


if __name__ == "__main__":
    main()
