"""How a run learnt to listen and to speak: the held-out figures of each checkpoint it kept, against the training step,
beside trivial baselines, as JSON and a PNG.

For each checkpoint folder (a stage's `checkpoint-N`; a run keeps only its last `save_total_limit`, so set that high
or copy the checkpoints as they are written):
- **listening**: the stage-1 transcript CER of validation questions (held-out items, the same espeak-ng voices as
  training), against the *prior* baseline (the training split's most common question, written for every question);
  and the concept accuracy (each slot's nearest token is the one spoken there) against the *blank* baseline (every slot
  read as the blank token);
- **speaking** (checkpoints whose talker trained, the reply stage): the Whisper WER of the spoken replies with the
  reply text forced, against the ceiling (the same sentences in the house voice through the codec) and the garbage
  control (the model's audio played backwards).

    python -m benchmarks.learning_curve --data runs/tiny-lyra/data \
        runs/tiny-lyra/align/checkpoint-* runs/tiny-lyra/reply/checkpoint-* \
        --json benchmarks/results/learning_curve.json --png benchmarks/results/learning_curve.png

The steps on the x axis run on from stage to stage (the reply stage's step 250 after a 3,000-step align stage is 3,250).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections import Counter

SPEAKING_STAGES = ("reply",)


def checkpoint_stage_and_step(path: str) -> tuple[str, int]:
    """A checkpoint's stage (its parent folder's name, or the prefix of a copied `<stage>-checkpoint-N`) and step."""
    name = os.path.basename(os.path.normpath(path))
    match = re.fullmatch(r"(?:(\w+)-)?checkpoint-(\d+)", name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint folder (checkpoint-N, or <stage>-checkpoint-N).")
    stage = match.group(1) or os.path.basename(os.path.dirname(os.path.normpath(path)))
    with open(os.path.join(path, "trainer_state.json")) as f:
        return stage, int(json.load(f)["global_step"])


def checkpoint_processor(config, path: str):
    """The processor of a Trainer checkpoint, which holds the tokenizer but not the processor's settings: from the
    model's config."""
    from modeling_concept_talker import ConceptTalkerProcessor

    return ConceptTalkerProcessor.from_config(config, path)


def blank_share(processor, config, rows: list[dict]) -> float:
    """The share of scored concept slots whose label is the blank token: the accuracy of reading every slot as blank."""
    from concept_talker.data.collators import SpokenTurnCollator

    collator = SpokenTurnCollator(processor, "transcribe", config)
    labels = collator(rows)["concept_labels"]
    scored = labels != -100
    return float((labels[scored] == config.concept_blank_token_id).float().mean())


def prior_transcript_cer(dataset, rows: list[dict]) -> float:
    """CER of writing the training split's most common question for every question."""
    from concept_talker.evaluation.metrics import load_metric

    prior = Counter(dataset["train"]["question_text"]).most_common(1)[0][0]
    references = [row["question_text"] for row in rows]
    return load_metric("error_rate").compute(predictions=[prior] * len(rows), references=references)["cer"]


def checkpoint_figures(path: str, dataset, rows: list[dict], speech_rows: list[dict], judge,
                       max_new_tokens: int) -> dict:
    """Listening (and, for a speaking stage, speaking) figures of one checkpoint."""
    from modeling_concept_talker import ConceptTalkerForConditionalGeneration

    from concept_talker.evaluation.evaluate import concept_accuracy
    from concept_talker.evaluation.metrics import load_metric
    from concept_talker.evaluation.speech import speech_intelligibility
    from concept_talker.evaluation.turns import greedy_texts

    stage, step = checkpoint_stage_and_step(path)
    model = ConceptTalkerForConditionalGeneration.from_pretrained(path).eval()
    processor = checkpoint_processor(model.config, path)
    transcripts = greedy_texts(model, processor, rows, "transcribe", max_new_tokens)
    rates = load_metric("error_rate").compute(predictions=transcripts, references=[r["question_text"] for r in rows])
    figures = {"checkpoint": os.path.abspath(path), "stage": stage, "step": step, "stage1_cer": rates["cer"],
               **concept_accuracy(model, processor, rows)}
    if stage in SPEAKING_STAGES and speech_rows:
        spoken = speech_intelligibility(model, processor, speech_rows, judge, free_replies=False)
        figures.update({"spoken_wer": spoken["wer"], "ceiling_wer": spoken["ceiling_wer"],
                        "garbage_wer": spoken["garbage_wer"], "judge": spoken["judge"]})
    return figures


def plot(results: dict, path: str) -> None:
    """Listening and speaking against the run's step, baselines dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from concept_talker.files import atomic_path

    points = results["checkpoints"]
    fig, (listen, speak) = plt.subplots(1, 2, figsize=(11, 3.8))
    steps = [p["run_step"] for p in points]
    listen.plot(steps, [p["stage1_cer"] for p in points], "o-", label="transcript CER (validation)")
    listen.plot(steps, [p["concept_accuracy"] for p in points], "s-", label="concept accuracy")
    listen.axhline(results["baselines"]["prior_transcript_cer"], ls="--", color="C0", alpha=0.6,
                   label="CER of the commonest question")
    listen.axhline(results["baselines"]["blank_concept_accuracy"], ls="--", color="C1", alpha=0.6,
                   label="accuracy of all-blank")
    for stage, start in results["stage_starts"].items():
        listen.axvline(start, color="grey", lw=0.6)
        listen.text(start, 1.02, stage, fontsize=8, transform=listen.get_xaxis_transform())
    listen.set_title("listening", pad=14)
    speaking = [p for p in points if "spoken_wer" in p]
    if speaking:
        steps = [p["run_step"] for p in speaking]
        speak.plot(steps, [p["spoken_wer"] for p in speaking], "o-", label="spoken reply WER (text forced)")
        speak.plot(steps, [p["ceiling_wer"] for p in speaking], "^--", label="ceiling: house voice through the codec")
        speak.plot(steps, [p["garbage_wer"] for p in speaking], "v:", label="garbage: the replies backwards")
        speak.set_title(f"speaking (judge: {speaking[0]['judge'].split(',')[0]})", pad=14)
    for axis in (listen, speak):
        axis.set_xlabel("training step (all stages)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint folders (checkpoint-N or <stage>-checkpoint-N)")
    parser.add_argument("--data", required=True, help="the run's dataset folder (concept-talker synth)")
    parser.add_argument("--stages", default="align,reply",
                        help="the run's stages in order, for the x axis (default: align,reply)")
    parser.add_argument("--examples", type=int, default=60, help="validation questions transcribed")
    parser.add_argument("--speech-examples", type=int, default=12, help="validation replies spoken and judged")
    parser.add_argument("--judge", help="Whisper folder or Hub id (default: the offline whisper-base)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--png", help="draw the curves to this file")
    args = parser.parse_args(argv)
    from datasets import load_from_disk

    from modeling_concept_talker import ConceptTalkerConfig

    from concept_talker.data.synth import HOUSE_PITCH
    from concept_talker.evaluation.evaluate import with_features
    from concept_talker.evaluation.speech import build_judge

    dataset = load_from_disk(args.data)
    validation = with_features(dataset["validation"])
    rows = [validation[i] for i in range(min(args.examples, len(validation)))]
    house = [validation[i] for i in range(len(validation)) if validation[i].get("reply_pitch") in (None, HOUSE_PITCH)]
    speech_rows = house[: args.speech_examples]
    stage_order = args.stages.split(",")
    found = [(checkpoint_stage_and_step(path), path) for path in args.checkpoints]
    unknown = {stage for (stage, _), _ in found} - set(stage_order)
    if unknown:
        raise SystemExit(f"Checkpoints of stages {sorted(unknown)} are not in --stages {args.stages}: name them there.")
    found.sort(key=lambda item: (stage_order.index(item[0][0]), item[0][1]))
    first = found[0][1]
    config = ConceptTalkerConfig.from_pretrained(first)
    processor = checkpoint_processor(config, first)
    judge = build_judge(args.judge, []) if any(stage in SPEAKING_STAGES for (stage, _), _ in found) else None
    results = {"data": os.path.abspath(args.data), "validation_examples": len(rows),
               "speech_examples": len(speech_rows),
               "baselines": {"prior_transcript_cer": prior_transcript_cer(dataset, rows),
                             "blank_concept_accuracy": blank_share(processor, config, rows)},
               "checkpoints": [], "stage_starts": {}}
    offset = 0
    for stage in stage_order:
        steps = [step for (name, step), _ in found if name == stage]
        if not steps:
            continue
        results["stage_starts"][stage] = offset
        for (name, step), path in found:
            if name == stage:
                figures = checkpoint_figures(path, dataset, rows, speech_rows, judge, args.max_new_tokens)
                figures["run_step"] = offset + step
                results["checkpoints"].append(figures)
                print(json.dumps({k: v for k, v in figures.items() if k != "checkpoint"}), flush=True)
        offset += max(steps)
    if args.json:
        from concept_talker.files import write_json

        write_json(args.json, results, indent=1)
    if args.png:
        plot(results, args.png)


if __name__ == "__main__":
    main()
