"""`concept-talker train`: the command line of `concept_talker.training.train`."""

from __future__ import annotations

import argparse
import json
import logging
import os

from concept_talker.training.train import TrainingRun



TAKES_OVERRIDES = True  # concept_talker.cli passes undeclared `--key value` pairs as recipe overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe file, e.g. configuration/tiny.yaml")
    parser.add_argument("--output_dir", "--output-dir", dest="output_dir", help="where the run writes everything")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output_dir where it stopped")
    parser.epilog = "Any other --dotted.key VALUE overrides the recipe, e.g. --stages.reply.max_steps 50 --data.synth.n 500"


def run(args) -> int:
    from concept_talker.training.recipes import RecipeError, load_recipe

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = [o for o in getattr(args, "overrides", []) if o != "--"]
    try:
        recipe = load_recipe(args.recipe, overrides)
    except RecipeError as err:
        raise SystemExit(f"Recipe error: {err}") from err
    output_dir = args.output_dir or recipe["output_dir"]
    if not output_dir:
        raise SystemExit("Give --output_dir (or output_dir in the recipe).")
    recipe["output_dir"] = os.path.abspath(output_dir)
    results = TrainingRun(recipe, output_dir, resume=args.resume).run()
    if results:
        print(json.dumps({k: v for k, v in results.items() if not isinstance(v, dict | list)}, indent=2))
    return 0
