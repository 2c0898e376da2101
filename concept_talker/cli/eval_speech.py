"""`concept-talker eval-speech`: the command line of `concept_talker.evaluation.speech`."""

from __future__ import annotations

import argparse
import json
import os

import torch

from concept_talker.data.dataset import with_features
from concept_talker.evaluation.speech import build_judge, reply_sentences, speech_intelligibility, talker_sampling
from concept_talker.files import write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a trained checkpoint folder (e.g. runs/tiny-lyra/final)")
    parser.add_argument("--data", required=True, help="a dataset made with concept-talker synth (its test split is used)")
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--max-examples", type=int, default=100, help="test rows to use")
    parser.add_argument("--judge", help="Whisper folder or Hub id (default: the offline whisper-base, else the Hub), "
                                        "or 'pocketsphinx'")
    parser.add_argument("--lyra-dir", help="the Lyra SoundStream folder on this machine (for Lyra checkpoints)")
    parser.add_argument("--split", default="test", help="dataset split (default: test, held-out voices and items)")


def run(args) -> int:
    from datasets import load_from_disk

    from modeling_concept_talker import ConceptTalkerForConditionalGeneration, ConceptTalkerProcessor

    kwargs = {"codec_model_dir": args.lyra_dir} if args.lyra_dir else {}
    model = ConceptTalkerForConditionalGeneration.from_pretrained(args.model, **kwargs).eval()
    processor = ConceptTalkerProcessor.from_pretrained(args.model)
    dataset = load_from_disk(args.data)
    if args.split not in dataset:
        raise SystemExit(f"{args.data} has no '{args.split}' split.")
    split = with_features(dataset[args.split])
    rows = [split[i] for i in range(min(len(split), args.max_examples))]
    judge = build_judge(args.judge, reply_sentences(dataset))
    voice = model.config.talker_config.num_style_concepts > 0 and "reference_codes" in split.column_names
    training_replies = dataset["train"]["reply_text"] if "train" in dataset else None
    with torch.inference_mode():
        results = speech_intelligibility(model, processor, rows, judge, voice=voice, training_replies=training_replies)
    results.update({"examples_scored": len(rows), "codec": model.config.codec_type,
                    "model": os.path.abspath(args.model), "split": args.split,
                    "talker_sampling": talker_sampling(model)})
    write_json(args.json, results)
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, list)}, indent=2))
    if model.config.codec_type != "lyra_soundstream":
        print("Note: this model's codec is not Lyra; unless it holds pretrained EnCodec weights its audio is not speech.")
    return 0
