"""Training recipes: YAML files in `configuration/`, overridden from the command line.

    concept-talker train --recipe configuration/tiny.yaml --output_dir runs/tiny --stages.reply.max_steps 50

A recipe has a fixed shape (`RECIPE_SCHEMA`); every key is checked when the run starts, so a typo fails at once
with its name instead of being ignored. Each stage's settings are `transformers.TrainingArguments` fields (plus
`enabled` and `learning_rate_adapter`), checked by building the `TrainingArguments`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import fields

import yaml

STAGES = ("copy", "text", "align", "reply")
# Stages that run only when the recipe names them (the others run unless `enabled: false`). `copy`: a from-scratch
# thinker learns to copy, on copy turns alone, before the text stage (see `CopyTurns`).
OPTIONAL_STAGES = ("copy",)
# Besides TrainingArguments: `voice` (reply stage: pass reference clips), `concept_labels` (align and reply: the
# dense slot-by-slot signal, default on), `text_labels` (align: the frozen thinker's transcript loss, default on),
# `text_vocabulary` ("data": score the losses over the tokens of the data only, for a thinker trained from scratch),
# `copy_turns` (text and reply stages: the share of rows replaced by fresh random-word copy turns, `CopyTurns`) and
# `transcribe_rows` and `question_rows` (text and align: how many of the dataset's general-English rows, and of its
# extra renditions of training questions, join the stage; default all), `repeat_rows` (reply stage: how many of the
# dataset's general-English "repeat after me" turns join it; default all) and
# `transcribe_turns` (reply stage: the share of rows that transcribe their question instead of answering it, so that
# the thinker's LoRA keeps reading the concepts while it learns the replies).
STAGE_EXTRA_KEYS = {"enabled", "adapter_learning_rate", "max_train_examples", "voice", "concept_labels",
                    "text_labels", "text_vocabulary", "copy_turns", "transcribe_rows", "question_rows",
                    "repeat_rows", "transcribe_turns"}

# Keys a recipe may have, with their defaults. `None` under a mapping means "any TrainingArguments field".
RECIPE_SCHEMA = {
    "seed": 0,
    "output_dir": None,
    "model": {
        "preset": "tiny",  # preset name or JSON file (configuration/model-*.json)
        "overrides": {},  # ConceptTalkerConfig fields
        "tokenizer": None,  # folder or Hub id; default: the offline Qwen2.5 copy, else the Hub
        "thinker": None,  # a pretrained thinker (Hub id / folder): skips the text stage
        "codec": None,  # a pretrained codec (Hub id / EnCodec folder / Lyra folder); default: the preset's
        "ear": None,  # the Whisper model (Hub id / folder) the preset's ear loads; needed when the preset has one
    },
    "data": {
        "path": None,  # an existing dataset folder (save_to_disk); None: synthesise into <output_dir>/data
        "synth": {"n": 2000, "num_proc": 1, "voices": None, "seed": 0, "transcribe_rows": 0,
                  "transcribe_vocabulary": None, "question_rows": 0, "repeat_rows": 0,
                  "repeat_vocabulary": 3000, "reply_tts": "piper", "voice_variant_share": 0.4,
                  "perturb_share": 0.3},
    },
    "stages": {name: None for name in STAGES},
    # The trained checkpoint's default reply settings (`SpokenGenerationConfig` fields, e.g. talker_temperature),
    # written into its generation_config.json; `generate`, `chat` and the evaluation use them unless told otherwise.
    "generation": {},
    "eval": {"max_examples": 200, "max_new_tokens": 48, "speech": False, "speech_examples": 40, "judge": None,
             "voice": False, "voice_examples": 12, "house_voice_questions": 0, "real_speech": None,
             "real_speech_examples": 40},
}


# What each plain setting of a recipe holds: (kind, bound); kinds: "int" (bound: its smallest value), "number"
# (bound: it must be above it), "bool", "str", "strings" (a list of strings); a "?" also allows null. Every one is
# checked when the recipe is loaded, before any work.
VALUE_RULES = {
    "seed": ("int", 0),
    "output_dir": ("str?", None),
    "model.preset": ("str", None),
    "model.tokenizer": ("str?", None),
    "model.thinker": ("str?", None),
    "model.codec": ("str?", None),
    "model.ear": ("str?", None),
    "data.path": ("str?", None),
    "data.synth.n": ("int", 1),
    "data.synth.num_proc": ("int", 1),
    "data.synth.voices": ("strings?", None),
    "data.synth.seed": ("int", 0),
    "data.synth.transcribe_rows": ("int", 0),
    "data.synth.question_rows": ("int", 0),
    "data.synth.repeat_rows": ("int", 0),
    "data.synth.repeat_vocabulary": ("int", 1),
    "data.synth.transcribe_vocabulary": ("int?", 1),
    "data.synth.reply_tts": ("str", None),
    "data.synth.voice_variant_share": ("share", None),
    "data.synth.perturb_share": ("share", None),
    "eval.max_examples": ("int", 1),
    "eval.max_new_tokens": ("int", 1),
    "eval.speech": ("bool", None),
    "eval.speech_examples": ("int", 1),
    "eval.voice": ("bool", None),
    "eval.voice_examples": ("int", 1),
    "eval.judge": ("str?", None),
    "eval.house_voice_questions": ("int", 0),
    "eval.real_speech": ("str?", None),
    "eval.real_speech_examples": ("int", 1),
}
# The same for a stage's settings that are not TrainingArguments fields.
STAGE_EXTRA_RULES = {
    "enabled": ("bool", None),
    "voice": ("bool", None),
    "adapter_learning_rate": ("number?", 0),
    "max_train_examples": ("int?", 1),
    "concept_labels": ("bool", None),
    "text_labels": ("bool", None),
    "text_vocabulary": ("str?", None),
    "copy_turns": ("share", None),
    "transcribe_rows": ("int?", 0),
    "question_rows": ("int?", 0),
    "repeat_rows": ("int?", 0),
    "transcribe_turns": ("share", None),
}
# `text_vocabulary` takes one value: "data" (or null, the whole vocabulary).
TEXT_VOCABULARIES = ("data",)


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the key and what to do."""


def checked_value(where: str, value, kind: str, minimum):
    """`value` of recipe key `where` as its `kind` says (numbers written as strings read as numbers), or a
    `RecipeError` naming the key, what it holds and what it must hold."""
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None and optional:
        return None
    if kind in ("int", "number", "share") and isinstance(value, str):
        value = _number_or_string(value)
    if kind == "int" and isinstance(value, float) and value.is_integer():
        value = int(value)
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "strings": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "share": isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1,
    }[kind]
    words = {"int": "a whole number", "number": "a number", "bool": "true or false", "str": "a string",
             "strings": "a list of strings",
             "share": "a share between 0 and 1"}[kind]
    # a whole number has a smallest value; a number (a learning rate) must be above its bound
    bound = "" if minimum is None else f" >= {minimum}" if kind == "int" else f" > {minimum}"
    if ok and minimum is not None:
        ok = value >= minimum if kind == "int" else value > minimum
    if not ok:
        raise RecipeError(f"{where} must be {words}{bound}{' or null' if optional else ''}, got {value!r}.")
    return value


def check_values(recipe: dict) -> None:
    """Check (and convert in place) every plain setting of a merged recipe against `VALUE_RULES`."""
    for key, (kind, minimum) in VALUE_RULES.items():
        *groups, name = key.split(".")
        node = recipe
        for group in groups:
            node = node[group]
        node[name] = checked_value(key, node[name], kind, minimum)
    if not isinstance(recipe["model"]["overrides"] or {}, dict):
        raise RecipeError(f"model.overrides must be a mapping of model settings, got {recipe['model']['overrides']!r}.")


def check_model(model: dict) -> None:
    """Build the model's config from the preset and overrides (no weights), so that an unknown or bad model setting
    (`model.overrides.talker_config.num_hiden_layers`) fails now, naming it."""
    from configuration import load_preset

    try:
        load_preset(model["preset"], **(model["overrides"] or {}))
    except (TypeError, ValueError) as err:
        raise RecipeError(f"model: {err}") from err


def _merge(schema: dict, values: dict, path: str) -> dict:
    merged = copy.deepcopy(schema)
    for key, value in (values or {}).items():
        where = f"{path}{key}"
        if key not in schema:
            raise RecipeError(f"Unknown recipe key '{where}'. Known keys here: {', '.join(sorted(schema))}.")
        if isinstance(schema[key], dict) and schema[key] and key != "overrides":
            if not isinstance(value, dict):
                raise RecipeError(f"Recipe key '{where}' holds settings: give a mapping, got {value!r}.")
            merged[key] = _merge(schema[key], value, where + ".")
        else:
            merged[key] = value
    return merged


def _parse_value(text: str):
    """A command-line value as YAML would read it: numbers (also `3e-3`, which YAML 1.1 leaves a string),
    booleans, null, lists; else the string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return _number_or_string(value) if isinstance(value, str) else value


def _number_or_string(value: str):
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number


def apply_overrides(recipe: dict, overrides: list[str]) -> dict:
    """Apply `--dotted.key value` pairs (also `--key=value`) to a raw recipe mapping."""
    recipe = copy.deepcopy(recipe)
    items = list(overrides)
    while items:
        flag = items.pop(0)
        if not flag.startswith("--"):
            raise RecipeError(f"Expected an override like --stages.reply.max_steps 10, got {flag!r}.")
        key, eq, value = flag[2:].partition("=")
        if not eq:
            if not items or items[0].startswith("--"):
                raise RecipeError(f"Override --{key} has no value: write --{key} VALUE.")
            value = items.pop(0)
        node = recipe
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"Override --{key}: '{part}' is not a group of settings.")
        node[parts[-1]] = _parse_value(value)
    return recipe


def load_recipe(path: str, overrides: list[str] | None = None) -> dict:
    """Read a recipe file, apply overrides, fill defaults and check every key. Returns the resolved mapping."""
    if not os.path.isfile(path):
        raise RecipeError(f"No recipe file {path!r}: pass one of configuration/*.yaml or your own.")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise RecipeError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise RecipeError(f"{path} must hold a mapping of settings.")
    raw = apply_overrides(raw, overrides or [])
    recipe = _merge(RECIPE_SCHEMA, raw, "")
    recipe["recipe_path"] = os.path.abspath(path)
    check_values(recipe)
    for name in STAGES:
        stage = recipe["stages"].get(name)
        stage = {"enabled": False} if stage is None and name in OPTIONAL_STAGES else stage or {}
        if not isinstance(stage, dict):
            raise RecipeError(f"stages.{name} must be a mapping of TrainingArguments fields.")
        check_stage(name, stage, recipe["seed"])
        recipe["stages"][name] = stage
    check_generation(recipe["generation"])
    check_model(recipe["model"])
    return recipe


def check_generation(generation) -> None:
    """`generation` must name `SpokenGenerationConfig` fields with values it accepts."""
    from modeling_concept_talker.generation import SpokenGenerationConfig

    if not isinstance(generation, dict):
        raise RecipeError(f"generation must be a mapping of reply settings (e.g. talker_temperature: 0.5), got "
                          f"{generation!r}.")
    try:
        SpokenGenerationConfig.from_kwargs(generation)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"generation: {err}") from err


def training_argument_names() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in fields(TrainingArguments) if f.init}


def check_stage(name: str, stage: dict, seed: int = 0) -> None:
    """Check every key and value of stage `name`: its extra keys by `STAGE_EXTRA_RULES`, the rest by building its
    `TrainingArguments` (as the stage will)."""
    known = training_argument_names() | STAGE_EXTRA_KEYS
    unknown = sorted(set(stage) - known)
    if unknown:
        raise RecipeError(
            f"Unknown setting(s) {unknown} in stages.{name}: a stage takes transformers TrainingArguments fields "
            f"and {sorted(STAGE_EXTRA_KEYS)}."
        )
    if "output_dir" in stage:
        raise RecipeError(f"stages.{name}.output_dir is set by the run (<output_dir>/{name}): remove it.")
    for key, (kind, minimum) in STAGE_EXTRA_RULES.items():
        if key in stage:
            stage[key] = checked_value(f"stages.{name}.{key}", stage[key], kind, minimum)
    if stage.get("text_vocabulary") not in (None, *TEXT_VOCABULARIES):
        raise RecipeError(f"stages.{name}.text_vocabulary must be one of {list(TEXT_VOCABULARIES)} or null, got "
                          f"{stage['text_vocabulary']!r}.")
    if stage.get("copy_turns") and name not in ("text", "reply"):
        raise RecipeError(f"stages.{name}.copy_turns: a share of copy turns is for the text and reply stages (the "
                          "copy stage trains on nothing else, the align stage on speech only); remove it here.")
    for key, rows in (("transcribe_rows", "the general-English rows"), ("question_rows", "the extra questions")):
        if stage.get(key) is not None and name not in ("text", "align"):
            raise RecipeError(f"stages.{name}.{key}: {rows} join the listening stages (text and align) only; remove "
                              "it here.")
    if stage.get("repeat_rows") is not None and name != "reply":
        raise RecipeError(f"stages.{name}.repeat_rows: the spoken repeat turns join the reply stage only (they are "
                          "there for the talker); remove it here.")
    if stage.get("transcribe_turns") and name != "reply":
        raise RecipeError(f"stages.{name}.transcribe_turns: a share of transcription turns among the replies is for "
                          "the reply stage (align transcribes every row already); remove it here.")
    coerce_numbers(name, stage)
    if stage.get("enabled", True):
        import warnings

        import torch

        with warnings.catch_warnings():  # deprecation notices are for when the stage runs
            warnings.simplefilter("ignore")
            try:
                training_arguments(stage, os.path.join("<output_dir>", name), seed,
                                   use_cpu=stage.get("use_cpu", not torch.cuda.is_available()))
            except RecipeError as err:
                raise RecipeError(f"stages.{name}: {err}") from err


def coerce_numbers(name: str, stage: dict) -> None:
    """Turn numbers written as strings (YAML 1.1 reads `learning_rate: 3e-3` as the string "3e-3") into the
    float or int the TrainingArguments field holds; anything else there fails here, naming the key."""
    from transformers import TrainingArguments

    defaults = {f.name: f.default for f in fields(TrainingArguments) if f.init}
    for key, value in stage.items():
        default = defaults.get(key)
        if not isinstance(value, str) or isinstance(default, bool) or not isinstance(default, int | float):
            continue
        number = _number_or_string(value)
        if isinstance(number, str):
            raise RecipeError(f"stages.{name}.{key} must be a number, got {value!r}.")
        stage[key] = float(number) if isinstance(default, float) else number


def training_arguments(stage: dict, output_dir: str, seed: int, **extra):
    """`TrainingArguments` of a stage (its extra keys removed), writing under `output_dir`."""
    from transformers import TrainingArguments

    values = {k: v for k, v in stage.items() if k not in STAGE_EXTRA_KEYS}
    values.update(extra)
    values.setdefault("seed", seed)
    values.setdefault("data_seed", seed)
    try:
        return TrainingArguments(output_dir=output_dir, **values)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"Stage settings for {output_dir} are not valid TrainingArguments: {err}") from err


def save_recipe(recipe: dict, path: str) -> None:
    """Write the resolved recipe (what actually ran) as YAML."""
    with open(path, "w") as f:
        yaml.safe_dump(recipe, f, sort_keys=False)
