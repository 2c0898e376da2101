"""The concept adapter alone: how well a fresh adapter learns to read a run's spoken questions into concept slots, in
minutes and without the thinker's forward pass. The quick way to try a listening idea before a whole align stage.

A fresh `ConceptTalkerAdapterModel`, built from a checkpoint's config, reads the Whisper frames stored with the
dataset's questions. The checkpoint's thinker gives the token embeddings the concepts are read against; it stays
frozen. Each batch is scored one of two ways (`--loss`):
- `slots`, as the align stage scores it (`concept_loss`): each slot against the token spoken in its stretch of time,
  or the blank token;
- `ctc`: CTC over the clip's slots, the blank token as CTC's blank, and the question's tokens as the target. The
  timings then only bound the sequence; the adapter places the tokens itself.

The transcript reads each slot as its nearest token over the data's tokens. Blanks are dropped, and under CTC repeated
readings as well. CER is measured against the question on the test split (held-out voices and items).
`--target` sets what a slot is read against: the thinker's token embeddings (`thinker`, as the model reads concepts),
or a fixed table of its own: `phonemes`, each token a sum of random vectors for the phoneme 1-3-grams of its espeak-ng
pronunciation (so tokens that sound alike lie close, and a token never heard is made of sounds heard in others), or
`random`, a random vector per token (the same table without the sound in it: the control). Whether an output that
carries the word's sound lets the adapter read words it never heard.
`--transcribe-rows` and `--question-rows` set how many of the dataset's general-English sentences and of its extra
renditions of training questions join the dialogue questions in training. Each reading also reports the share of
the test questions' words that the transcript holds, by how often the word was spoken in the training rows
(`word_recall`: never, 1-9, 10-99, 100 or more times): whether the adapter misses words for the voices or for want
of hearing them.

    python -m benchmarks.adapter_alone --checkpoint runs/tiny-lyra/final --data runs/tiny-lyra/data --steps 800 \
        --json benchmarks/results/adapter_alone.json
"""

from __future__ import annotations

import argparse
import collections
import itertools
import math
import random
import re
import time

import torch
from torch.nn import functional as F


def warmup_cosine(step: int, steps: int, learning_rate: float, warmup: int = 50) -> float:
    """The learning rate at `step` of `steps` (1-based): linear warm-up over `warmup` steps, under a cosine decay to 0,
    as the recipes' stages schedule it. The alone-benchmarks set it on their optimiser every step."""
    return learning_rate * min(1.0, step / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))


def config_overrides(pairs: list[str], flag: str) -> dict:
    """`["hidden_size=384", "num_layers=4"]` -> `{"hidden_size": 384, "num_layers": 4}` (values read as a recipe
    override reads them); `flag` names the option in the error."""
    from concept_talker.training.recipes import _parse_value

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"{flag} takes KEY=VALUE pairs, got {pair!r}.")
        overrides[key] = _parse_value(value)
    return overrides


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


# How often a word was spoken in training: the bins of `word_recall`, each from its smallest count.
TRAINING_COUNT_BINS = ((0, "never"), (1, "1-9"), (10, "10-99"), (100, "100+"))


def word_recall(references: list[str], readings: list[str], heard: collections.Counter) -> dict:
    """For each bin of `TRAINING_COUNT_BINS`: the test words whose training count falls in it, and the share of them
    that their question's reading holds (as many times as the question says them)."""
    found = {name: [0, 0] for _, name in TRAINING_COUNT_BINS}
    for reference, reading in zip(references, readings):
        left = collections.Counter(words_of(reading))
        for word in words_of(reference):
            name = [n for low, n in TRAINING_COUNT_BINS if heard[word] >= low][-1]
            found[name][0] += 1
            if left[word] > 0:
                left[word] -= 1
                found[name][1] += 1
    return {name: {"words": total, "recall": round(hits / total, 3) if total else None}
            for name, (total, hits) in found.items()}


def slot_batch(rows: list[dict], collator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frames `[clips, frames, width]`, their mask and each slot's label `[clips, slots]` (blank where none spoken)."""
    from concept_talker.data.collators import pad_frames

    frames, mask = pad_frames([row["question_features"] for row in rows])
    windows = -(-frames.shape[1] // collator.config.window_frames)
    labels = torch.full((len(rows), windows * collator.per_window), -100, dtype=torch.long)
    for i, row in enumerate(rows):
        own = collator.slot_labels(row, collator.windows(row))
        labels[i, : len(own)] = torch.tensor(own)
    return frames, mask, labels


def ctc_loss(model, concepts, concept_mask, labels, vocabulary) -> torch.Tensor:
    """CTC over each clip's real slots: the tokens of its labels in order, the blank token as CTC's blank."""
    from modeling_concept_talker.concept_reading import vocabulary_index

    blank = model.config.concept_blank_token_id
    log_probs = model.concept_logits(concepts, vocabulary).log_softmax(-1).transpose(0, 1)  # [slots, clips, vocab]
    targets = [vocabulary_index(vocabulary, row[(row != blank) & (row != -100)]) for row in labels]
    return F.ctc_loss(log_probs, torch.cat(targets), concept_mask.sum(1), torch.tensor([len(t) for t in targets]),
                      blank=int(vocabulary_index(vocabulary, torch.tensor([blank]))[0]), zero_infinity=True)


def table_logits(concepts: torch.Tensor, table: torch.Tensor, scale: float) -> torch.Tensor:
    """`[..., width]` concepts read against a fixed table of unit vectors `[vocab, width]`: scaled cosine similarity,
    as `concept_logits` reads the thinker's embeddings."""
    return scale * F.normalize(concepts.float(), dim=-1) @ table.T


@torch.no_grad()
def read_questions(model, adapter, rows, collator, vocabulary, collapse: bool, batch_size: int = 16,
                   table: torch.Tensor | None = None) -> list[str]:
    """Each question as its slots read: nearest token per real slot, blanks dropped (and repeats, with `collapse`)."""
    blank = model.config.concept_blank_token_id
    texts = []
    for start in range(0, len(rows), batch_size):
        frames, mask, _ = slot_batch(rows[start : start + batch_size], collator)
        concepts, concept_mask = adapter(frames, mask)
        logits = (model.concept_logits(concepts, vocabulary) if table is None
                  else table_logits(concepts, table, model.config.concept_logit_scale))
        read = vocabulary[logits.argmax(-1)]
        for tokens, real in zip(read.tolist(), concept_mask.tolist()):
            kept, previous = [], None
            for token, is_real in zip(tokens, real):
                if is_real and token != blank and not (collapse and token == previous):
                    kept.append(token)
                previous = token if is_real else None
            texts.append(collator.tokenizer.decode(kept).strip())
    return texts


def train_adapter(model, processor, dataset, loss: str, steps: int, batch_size: int = 16, learning_rate: float = 1e-3,
                  transcribe_rows: int | None = None, examples: int = 100, seed: int = 0, log_every: int = 200,
                  dropout: float | None = None, question_rows: int | None = None, target: str = "thinker",
                  adapter_overrides: dict | None = None) -> dict:
    """Train a fresh adapter for `steps` (with `dropout` instead of its config's, where given, and its config's
    `adapter_overrides`, such as `{"num_layers": 4}`) and measure its reading of the test questions along the way,
    and of as many training questions (how far it fits them)."""
    import copy

    from modeling_concept_talker import ConceptTalkerAdapterModel

    from concept_talker.data.collators import SpokenTurnCollator, dataset_vocabulary
    from concept_talker.data.dataset import with_features
    from concept_talker.evaluation.metrics import load_metric
    from concept_talker.training.train import extra_rows
    from modeling_concept_talker.concept_reading import tokens_sound_table, vocabulary_index

    if loss not in ("slots", "ctc"):
        raise ValueError(f"--loss is slots or ctc, got {loss!r}.")
    if target not in ("thinker", "phonemes", "random"):
        raise ValueError(f"--target is thinker, phonemes or random, got {target!r}.")
    if target != "thinker" and loss != "slots":
        raise ValueError("A fixed table (--target phonemes or random) is read with --loss slots only.")
    torch.manual_seed(seed)
    generator = random.Random(seed)
    config = model.config
    collator = SpokenTurnCollator(processor, "transcribe", config)
    vocabulary = torch.tensor(dataset_vocabulary(processor.tokenizer, dataset, config, copy_turns=True))
    train = list(with_features(dataset["train"]))
    for rows in extra_rows(dataset, {"transcribe_rows": transcribe_rows, "question_rows": question_rows}):
        train += list(with_features(rows))
    test_split = with_features(dataset["test"])
    test = [test_split[i] for i in range(min(examples, len(test_split)))]
    references = [row["question_text"] for row in test]
    heard = collections.Counter(word for row in train for word in words_of(row["question_text"]))
    error_rate = load_metric("error_rate")
    model.requires_grad_(False)
    width = config.thinker_config.hidden_size
    table = None  # the thinker's embeddings, through model.concept_logits
    if target == "phonemes":
        table = tokens_sound_table(processor.tokenizer, vocabulary, width, seed,
                                   special=(config.concept_blank_token_id,))
    elif target == "random":
        table = F.normalize(torch.randn(len(vocabulary), width, generator=torch.Generator().manual_seed(seed)), dim=-1)
    adapter_config = copy.deepcopy(config.adapter_config)
    if dropout is not None:
        adapter_config.dropout = dropout
    unknown = [key for key in adapter_overrides or {} if not hasattr(adapter_config, key)]
    if unknown:
        raise SystemExit(f"--adapter: the adapter's config has no {unknown}.")
    for key, value in (adapter_overrides or {}).items():
        setattr(adapter_config, key, value)
    adapter = ConceptTalkerAdapterModel(adapter_config).train()
    seen = generator.sample(train, min(len(test), len(train)))
    seen_references = [row["question_text"] for row in seen]
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=learning_rate, weight_decay=0.01)
    curve, read, started = [], [], time.perf_counter()

    for step in range(1, steps + 1):
        for group in optimizer.param_groups:  # 50 warm-up steps, then cosine, as the align stage
            group["lr"] = warmup_cosine(step, steps, learning_rate)
        frames, mask, labels = slot_batch(generator.sample(train, batch_size), collator)
        concepts, concept_mask = adapter(frames, mask)
        if table is not None:
            scored = concept_mask & (labels != -100)
            value = F.cross_entropy(table_logits(concepts[scored], table, config.concept_logit_scale),
                                    vocabulary_index(vocabulary, labels[scored]))
        elif loss == "slots":
            value, _ = model.concept_loss(concepts, concept_mask, labels, vocabulary)
        else:
            value = ctc_loss(model, concepts, concept_mask, labels, vocabulary)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        if step % log_every == 0 or step == steps:
            adapter.eval()
            read = read_questions(model, adapter, test, collator, vocabulary, collapse=loss == "ctc", table=table)
            read_seen = read_questions(model, adapter, seen, collator, vocabulary, collapse=loss == "ctc", table=table)
            adapter.train()
            curve.append({"step": step, "test_cer": error_rate.compute(predictions=read, references=references)["cer"],
                          "word_recall": word_recall(references, read, heard),
                          "train_cer": error_rate.compute(predictions=read_seen, references=seen_references)["cer"],
                          "seconds": round(time.perf_counter() - started, 1)})
            print(curve[-1], flush=True)
    return {"loss": loss, "target": target, "steps": steps, "batch_size": batch_size, "learning_rate": learning_rate,
            "dropout": adapter_config.dropout, "adapter_overrides": dict(adapter_overrides or {}),
            "adapter_parameters": sum(p.numel() for p in adapter.parameters()), "train_cer": curve[-1]["train_cer"],
            "train_rows": len(train), "test_examples": len(test), "vocabulary": len(vocabulary),
            "test_cer": curve[-1]["test_cer"], "word_recall": curve[-1]["word_recall"], "curve": curve,
            "samples": [{"question": q, "read": r} for q, r in list(zip(references, read))[:5]]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="a Concept-Talker checkpoint: its config builds the adapter, its thinker's embeddings "
                             "are what the concepts are read as")
    parser.add_argument("--data", required=True, help="the dataset folder (concept-talker synth, with an ear's frames)")
    parser.add_argument("--loss", choices=("slots", "ctc"), nargs="+", default=["slots"],
                        help="one or more ways to score the slots (one run each)")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--target", choices=("thinker", "phonemes", "random"), nargs="+", default=["thinker"],
                        help="what the slots are read against, one run each (see above)")
    parser.add_argument("--transcribe-rows", type=int, nargs="+", default=[-1],
                        help="general-English rows that join training, one run each (-1: all, 0: none)")
    parser.add_argument("--question-rows", type=int, nargs="+", default=[-1],
                        help="extra renditions of training questions that join training, one run each (-1: all, 0: none)")
    parser.add_argument("--dropout", type=float, nargs="+", default=[None],
                        help="the adapter's dropout, one run each (default: the checkpoint's config)")
    parser.add_argument("--adapter", nargs="+", default=[], metavar="KEY=VALUE",
                        help="the fresh adapter's config overrides, e.g. num_layers=4 hidden_size=384")
    parser.add_argument("--log-every", type=int, default=200, help="steps between readings of the questions")
    parser.add_argument("--examples", type=int, default=100, help="test questions read (and as many training ones)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    from datasets import load_from_disk

    from modeling_concept_talker import ConceptTalkerForConditionalGeneration, ConceptTalkerProcessor

    model = ConceptTalkerForConditionalGeneration.from_pretrained(args.checkpoint).eval()
    if model.ear is None:
        raise SystemExit(f"{args.checkpoint} hears through its codec; this benchmark reads an ear's stored frames.")
    processor = ConceptTalkerProcessor.from_pretrained(args.checkpoint)
    dataset = load_from_disk(args.data)
    if "question_features" not in dataset["train"].column_names:
        raise SystemExit(f"{args.data} holds no ear frames (question_features): make it with concept-talker synth "
                         "for a model with an ear.")
    runs = []
    for loss, target in itertools.product(args.loss, args.target):
        for rows, questions, dropout in itertools.product(args.transcribe_rows, args.question_rows, args.dropout):
            result = train_adapter(model, processor, dataset, loss, args.steps, args.batch_size, args.learning_rate,
                                   transcribe_rows=None if rows < 0 else rows, examples=args.examples,
                                   dropout=dropout, question_rows=None if questions < 0 else questions,
                                   log_every=args.log_every, target=target,
                                   adapter_overrides=config_overrides(args.adapter, "--adapter"))
            print(f"{loss:5s} {target} transcribe rows {rows:5d} question rows {questions:5d} dropout {result['dropout']}: test "
                  f"CER {result['test_cer']:.3f} (training questions {result['train_cer']:.3f}) after {args.steps} steps")
            runs.append(result)
    if args.json:
        from concept_talker.files import write_json

        write_json(args.json, {"checkpoint": args.checkpoint, "data": args.data, "runs": runs}, indent=1)


if __name__ == "__main__":
    main()
