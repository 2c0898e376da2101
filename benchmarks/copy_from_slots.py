"""Can a run's thinker copy what the concept slots hold? Its transcripts (and "repeat after me" replies) of questions
whose slots hold their *true* tokens: the ceiling that listening through the concept adapter can reach.

Each question of a dataset split is laid out as the text stage reads it (its tokens in the slots, blanks left out),
behind the tutor's full prompt with "Transcribe the audio." or "Repeat after me."; the thinker writes greedily over
the data's tokens (as the recipes score them, copy-turn words included). CER and WER against the question text, and
the share written exactly.

    python -m benchmarks.copy_from_slots --thinker runs/tiny-lyra/text/thinker --data runs/tiny-lyra/data \
        --json benchmarks/results/copy_from_slots.json
"""

from __future__ import annotations

import argparse
import os

import torch

TASKS = {"transcribe": None, "repeat": "Repeat after me."}


def load_thinker(path: str):
    """A causal LM folder (a run's `text/thinker`) or a Concept-Talker checkpoint (its thinker, LoRA as it is)."""
    import json

    from transformers import AutoModelForCausalLM

    with open(os.path.join(path, "config.json")) as f:
        model_type = json.load(f).get("model_type")
    if model_type == "concept_talker":
        from modeling_concept_talker import ConceptTalkerForConditionalGeneration

        return ConceptTalkerForConditionalGeneration.from_pretrained(path).thinker.eval()
    return AutoModelForCausalLM.from_pretrained(path).eval()


@torch.no_grad()
def copy_from_slots(thinker, processor, config, dataset, split: str, task: str, examples: int,
                    max_new_tokens: int = 40) -> dict:
    """CER / WER / exact share of the thinker's copies of `examples` questions of `split` (see the module doc)."""
    from modeling_concept_talker import build_prompt

    from concept_talker.data.collators import TRANSCRIBE_TASK, SpokenTurnCollator, dataset_vocabulary
    from concept_talker.evaluation.evaluate import with_features
    from concept_talker.evaluation.metrics import load_metric

    tokenizer = processor.tokenizer
    collator = SpokenTurnCollator(processor, "text", config)
    vocabulary = torch.tensor(dataset_vocabulary(tokenizer, dataset, config, copy_turns=True))
    prompt = build_prompt(task=TRANSCRIBE_TASK) if TASKS[task] is None else build_prompt(TASKS[task])
    ends, blank = set(config.reply_end_token_ids), config.concept_blank_token_id
    rows = with_features(dataset[split])
    references, copies = [], []
    for index in range(min(examples, len(rows))):
        row = rows[index]
        slots = [token for token in collator.slot_labels(row, collator.windows(row)) if token != blank]
        ids, cache, written = torch.tensor([collator._prompt_ids(prompt, slots)]), None, []
        for _ in range(max_new_tokens):
            out = thinker(input_ids=ids, cache=cache, use_cache=True)
            cache = out.cache
            token = int(vocabulary[out.logits[0, -1, vocabulary].argmax()])
            if token in ends:
                break
            written.append(token)
            ids = torch.tensor([[token]])
        references.append(row["question_text"])
        copies.append(tokenizer.decode(written).strip())
    rates = load_metric("error_rate").compute(predictions=copies, references=references)
    return {"split": split, "task": task, "examples": len(references), "cer": rates["cer"], "wer": rates["wer"],
            "exact": sum(c == r.strip() for c, r in zip(copies, references)) / len(references),
            "samples": [{"question": r, "copy": c} for r, c in list(zip(references, copies))[:5]]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--thinker", required=True, help="a run's text/thinker folder, or a Concept-Talker checkpoint")
    parser.add_argument("--data", required=True, help="the run's dataset folder (concept-talker synth)")
    parser.add_argument("--config", help="a Concept-Talker checkpoint whose config lays out the slots (default: "
                                         "--thinker when it is one, else the embedded model's)")
    parser.add_argument("--examples", type=int, default=50, help="questions per split")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    from datasets import load_from_disk

    from modeling_concept_talker import ConceptTalkerConfig, ConceptTalkerProcessor

    from concept_talker.loading import EMBEDDED_MODEL, default_tokenizer

    thinker = load_thinker(args.thinker)
    is_checkpoint = os.path.isfile(os.path.join(args.thinker, "processor_config.json"))
    config = ConceptTalkerConfig.from_pretrained(args.config or (args.thinker if is_checkpoint else str(EMBEDDED_MODEL)))
    processor = ConceptTalkerProcessor.from_config(config, default_tokenizer())
    dataset = load_from_disk(args.data)
    results = []
    for task in TASKS:
        for split in ("validation", "test"):
            result = copy_from_slots(thinker, processor, config, dataset, split, task, args.examples)
            print(f"{task:10s} {split:10s} CER {result['cer']:.3f}  WER {result['wer']:.3f}  exact {result['exact']:.2f}")
            results.append(result)
    if args.json:
        from concept_talker.files import write_json

        write_json(args.json, {"thinker": args.thinker, "data": args.data, "results": results})


if __name__ == "__main__":
    main()
