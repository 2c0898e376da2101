"""Refresh the embedded default model (`checkpoints/tiny-lyra/`) from a training run's `final` folder.

    python -m concept_talker.hub.embedded runs/tiny-lyra/final [--out checkpoints/tiny-lyra]

Keeps what `chat` needs and nothing machine-specific: the config (with the Lyra folder cleared: it is found at
load time), the trainable weights, the base thinker in bf16 (half the bytes; it loads back in the config's dtype),
the processor settings, the recipe, its evaluation and loss curves. Leaves out the remote-code `.py` files (this
repository is the code) and the tokenizer files (the offline Qwen2.5 tokenizer, or the Hub's, is used). Writes into a temporary
folder and renames it, so an interrupted refresh leaves the old model whole.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

from concept_talker.files import move_into_place
from concept_talker.loading import EMBEDDED_MODEL

KEPT_FILES = ("config.json", "generation_config.json", "model.safetensors", "processor_config.json",
              "chat_template.jinja")


def export_embedded(final_dir: str, out_dir: str = str(EMBEDDED_MODEL), eval_results: str | None = None) -> str:
    import torch
    import yaml
    from safetensors.torch import load_file, save_file

    from concept_talker.hub.push import read_eval_results, read_recipe, redact_local_paths

    with open(os.path.join(final_dir, "config.json")) as f:
        config = json.load(f)
    if config.get("saved_weights") != "trainable" or config.get("thinker_name_or_path") != "thinker":
        raise SystemExit(f"{final_dir} is not a trainable-only checkpoint with its base thinker in thinker/: give the "
                         "`final` folder of a tiny recipe run.")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=".embedded-")
    try:
        for name in KEPT_FILES:
            if os.path.isfile(os.path.join(final_dir, name)):
                shutil.copy2(os.path.join(final_dir, name), staging)
        # the recipe and the evaluation, with this machine's paths redacted (as on the Hub)
        recipe = read_recipe(os.path.join(final_dir, "training_recipe.yaml"))
        if recipe is not None:
            with open(os.path.join(staging, "training_recipe.yaml"), "w") as f:
                yaml.safe_dump(recipe, f, sort_keys=False)
        eval_results = eval_results or os.path.join(os.path.dirname(os.path.abspath(final_dir)), "eval_results.json")
        results = read_eval_results(eval_results) or read_eval_results(os.path.join(final_dir, "eval_results.json"))
        if results is not None:
            with open(os.path.join(staging, "eval_results.json"), "w") as f:
                json.dump(redact_local_paths(results), f, indent=2)
        curves = os.path.join(os.path.dirname(os.path.abspath(final_dir)), "loss_curves.png")
        if os.path.isfile(curves):
            shutil.copy2(curves, staging)
        config.get("codec_config", {}).pop("model_dir", None)
        if config.get("ear_config") is not None:
            # The ear is the public Whisper base (its weights are not copied here): the Hub id, found offline in
            # ../shared/assets/whisper-base (or $CONCEPT_TALKER_WHISPER_DIR) by the loader.
            config["ear_name_or_path"] = "openai/whisper-base"
        with open(os.path.join(staging, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        os.makedirs(os.path.join(staging, "thinker"))
        for name in ("config.json", "generation_config.json"):
            shutil.copy2(os.path.join(final_dir, "thinker", name), os.path.join(staging, "thinker"))
        weights = load_file(os.path.join(final_dir, "thinker", "model.safetensors"))
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()},
                  os.path.join(staging, "thinker", "model.safetensors"), metadata={"format": "pt"})
        move_into_place(staging, out_dir, replace=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("final_dir", help="the `final` folder of a tiny-lyra recipe run")
    parser.add_argument("--out", default=str(EMBEDDED_MODEL))
    args = parser.parse_args(argv)
    print(export_embedded(args.final_dir, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
