"""Model cards for Concept-Talker checkpoints, rendered from `concept_talker.md` with `huggingface_hub.ModelCard`.

    card = render_model_card(CardFacts(repo_id="ORG/NAME", config=model.config, ...))
    card.save("README.md")                    # ModelCard.load("README.md").data round-trips the metadata

The metadata (YAML front matter) holds `base_model`, `library_name`, `pipeline_tag`, tags, datasets, licence and the
evaluation results as a model index (`eval_results`). Only what was recorded is reported: metrics come from the
training run's `eval_results.json`, the recipe from its `training_recipe.yaml`; absent files are said to be absent.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATE_PATH = Path(__file__).with_name("concept_talker.md")
LIBRARY_NAME = "transformers"
# The Hub's task for audio in, audio out. transformers has no such built-in pipeline: the checkpoint ships its own,
# registered as the custom task "speech-to-speech" (see modeling_concept_talker/pipeline_concept_talker.py).
PIPELINE_TAG = "audio-to-audio"
BASE_TAGS = ("concept-talker", "speech-to-speech", "spoken-dialogue", "audio", "tutor", "custom_code")
CODEC_NAMES = {"encodec": "EnCodec", "mimi": "Mimi", "lyra_soundstream": "Lyra SoundStream"}
DEFAULT_EVAL_DATASET = ("synthetic-spoken-tutoring", "Concept-Talker synthetic spoken tutoring dialogues")


@dataclass(frozen=True)
class MetricInfo:
    metric_type: str  # Hub metric id
    name: str
    task_type: str  # Hub task id
    task_name: str
    meaning: str


# Metrics the training run writes to eval_results.json. Unknown keys are reported under their own name.
METRICS = {
    "stage1_cer": MetricInfo(
        "cer", "Transcript CER (stage 1)", "automatic-speech-recognition", "Reading concepts as words",
        "character error rate of the transcript the thinker writes from the concept tokens alone (lower is better)",
    ),
    "stage2_reply_accuracy": MetricInfo(
        "accuracy", "Reply accuracy (stage 2)", "audio-to-audio", "Spoken tutoring reply",
        "share of spoken questions whose greedy reply text is exactly the reference, ignoring case and punctuation "
        "(higher is better)",
    ),
    "audio_code_accuracy": MetricInfo(
        "accuracy", "Audio code accuracy", "audio-to-audio", "Spoken tutoring reply",
        "share of reply audio codes the talker predicts exactly, teacher-forced (higher is better)",
    ),
    "wer": MetricInfo(
        "wer", "Spoken reply WER", "audio-to-audio", "Spoken tutoring reply",
        "word error rate of a real recogniser (Whisper base through transformers, both sides normalised with "
        "Whisper's English text normaliser) on the generated reply audio against the reply text (lower is better)",
    ),
    "ceiling_wer": MetricInfo(
        "wer", "Recogniser WER ceiling", "audio-to-audio", "Spoken tutoring reply",
        "the same recogniser on reference reply speech passed through the codec: the best WER this measurement "
        "can show",
    ),
    "garbage_wer": MetricInfo(
        "wer", "Recogniser WER on garbage", "audio-to-audio", "Spoken tutoring reply",
        "the same recogniser on the model's spoken replies played backwards: what unintelligible audio of the same "
        "length scores",
    ),
    "rate_duration_ratio": MetricInfo(
        "ratio", "Slow / fast duration ratio", "audio-to-audio", "Tutor controls",
        'median duration of the same reply after "Speak slowly." over after "Speak quickly." (target 1.3 or more)',
    ),
    "voice_f0_match": MetricInfo(
        "accuracy", "Reference voice pitch match", "audio-to-audio", "Tutor controls",
        "share of replies spoken with a held-out reference clip whose median pitch is nearest that clip's among "
        "the candidates (higher is better)",
    ),
    "repeat_exact": MetricInfo(
        "accuracy", "Repeat after me", "audio-to-audio", "Tutor controls",
        'share of "repeat after me" turns whose reply text is exactly the user\'s sentence (higher is better)',
    ),
}
# Keys of eval_results.json that describe the evaluation rather than measure the model (and the Trainer's bookkeeping).
EVAL_METADATA_KEYS = {"dataset", "dataset_name", "dataset_id", "split", "num_examples", "examples", "recipe", "stage",
                      "seed", "step", "global_step", "epoch", "max_examples"}
BOOKKEEPING_SUFFIXES = ("_runtime", "_per_second", "_epoch", "_step")

REMOTE_CODE_FILES = {
    "configuration_concept_talker.py": "the config classes (thinker, codec, concept adapter, talker) and their checks",
    "modeling_concept_talker.py": "the model (codec, concept adapter, LoRA thinker, talker) and checkpoint loading "
    "(safetensors only unless `allow_pickle=True`)",
    "processing_concept_talker.py": "the processor: Qwen2.5 tokenizer, audio checks and resampling, chat format",
    "pipeline_concept_talker.py": "the `speech-to-speech` pipeline (reads audio files with soundfile)",
    "generation.py": "spoken-reply generation: the thinker's and the talker's read/write loop, streaming",
    "audio.py": "audio checks, resampling, reading and writing audio files (soundfile)",
    "codec.py": "the codec interface and the EnCodec / Mimi backends",
    "lyra.py": "the Lyra SoundStream codec backend (TFLite models, ai-edge-litert); used only by Lyra checkpoints",
    "ear.py": "the ear: Whisper's encoder (frozen) on the question's own length, and its streaming form",
    "concept_adapter.py": "the concept adapter: a Perceiver over windows of the ear's frames",
    "phonemes.py": "the reply's phonemes (espeak-ng, loaded with ctypes), spelled as the thinker writes",
    "talker.py": "the talker: a causal transformer writing every codebook of each audio frame on a phoneme timeline",
    "schedule.py": "the talker's phoneme timeline: which phoneme each audio frame speaks, from predicted durations",
    "streaming.py": "streaming input: a spoken turn fed in pieces",
    "thinker_runner.py": "incremental thinker decoding over its key/value cache",
    "fast_thinker.py": "a faster CPU decode loop for the thinker (plain PyTorch where its native kernel is not "
    "built)",
}


@dataclass
class CardFacts:
    """What a model card says about one pushed checkpoint.

    Args:
        repo_id: `ORG/NAME` on the Hub (the usage snippet loads it).
        config: the saved `ConceptTalkerConfig`.
        kind: `"trainable"` (trainable-only weights + base thinker), `"merged"` (LoRA folded in) or `"full"`.
        parameter_counts: parameters per part (`model.parameter_counts()`).
        files: (path in repo, bytes) of every file in the repository.
        base_model: Hub id of the pretrained thinker the model was trained from, if any.
        base_included: the base thinker is in the repository (`thinker/`).
        eval_results: the training run's `eval_results.json` (metric name -> value, plus metadata keys).
        recipe: the training run's `training_recipe.yaml`, parsed (local paths already redacted).
    """

    repo_id: str
    config: object
    kind: str
    parameter_counts: dict[str, int]
    files: list[tuple[str, int]] = field(default_factory=list)
    base_model: str | None = None
    base_included: bool = False
    eval_results: dict | None = None
    recipe: dict | None = None
    license: str = "apache-2.0"
    datasets: list[str] = field(default_factory=list)
    language: list[str] = field(default_factory=lambda: ["en"])
    tags: list[str] = field(default_factory=list)
    code_imports: dict[str, list[str]] = field(default_factory=dict)  # remote-code file -> modules it must import


# Notes for remote-code files that do more than compute with tensors, by the modules they import.
CODE_BEHAVIOUR = {
    "subprocess": "runs external programs",
    "ctypes": "loads native code already on this machine (a system library such as espeak-ng) with ctypes",
}
# Modules the remote code imports only where they are used (inside `try` blocks): (import name, pip name).
OPTIONAL_MODULES = (("peft", "peft"), ("soundfile", "soundfile"), ("ai_edge_litert", "ai-edge-litert"))


def remote_code_imports(folder: str | os.PathLike) -> dict[str, list[str]]:
    """For each remote-code file in `folder`, the modules it imports outside `try` blocks (what loading requires),
    as transformers' remote-code loader checks them."""
    from transformers.dynamic_module_utils import get_imports

    return {
        path.name: [m for m in get_imports(path) if m != "__future__"]
        for path in sorted(Path(folder).glob("*.py"))
    }


def third_party(modules) -> list[str]:
    import sys

    return sorted({m for m in modules if m not in sys.stdlib_module_names})


def is_hub_id(reference: str | None) -> bool:
    """True for `org/name`-shaped references that are not folders on this machine."""
    if not reference or os.path.exists(reference) or os.path.isabs(reference):
        return False
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", reference) is not None and ".." not in reference


def eval_metrics(eval_results: dict | None) -> dict[str, float]:
    """The numeric metrics of an `eval_results.json` mapping (finite numbers only; metadata keys left out)."""
    metrics = {}
    for key, value in (eval_results or {}).items():
        if key in EVAL_METADATA_KEYS or key.endswith(BOOKKEEPING_SUFFIXES):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            metrics[key] = value
    return metrics


def metric_info(key: str) -> MetricInfo:
    return METRICS.get(key) or MetricInfo(key, key.replace("_", " "), "audio-to-audio", "Spoken tutoring reply", "")


def build_eval_results(eval_results: dict | None) -> list:
    """`huggingface_hub.EvalResult`s for the recorded metrics (empty when none were recorded)."""
    from huggingface_hub import EvalResult

    metrics = eval_metrics(eval_results)
    meta = eval_results or {}
    dataset_type = str(meta.get("dataset_id") or DEFAULT_EVAL_DATASET[0])
    dataset_name = str(meta.get("dataset_name") or meta.get("dataset") or DEFAULT_EVAL_DATASET[1])
    split = meta.get("split")
    results = []
    for key, value in metrics.items():
        info = metric_info(key)
        results.append(
            EvalResult(
                task_type=info.task_type, task_name=info.task_name, dataset_type=dataset_type,
                dataset_name=dataset_name, dataset_split=str(split) if split else None,
                metric_type=info.metric_type, metric_name=info.name, metric_value=value,
            )
        )
    return results


def _format_value(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M" if count >= 10_000 else f"{count:,}"


def evaluation_section(eval_results: dict | None) -> str:
    metrics = eval_metrics(eval_results)
    if not metrics:
        return (
            "No evaluation results were recorded with this checkpoint (no `eval_results.json` from its training "
            "run), so none are reported here."
        )
    meta = eval_results or {}
    where = str(meta.get("dataset_name") or meta.get("dataset") or DEFAULT_EVAL_DATASET[1])
    if meta.get("split"):
        where += f", {meta['split']} split"
    examples = meta.get("num_examples", meta.get("examples"))
    if isinstance(examples, int) and not isinstance(examples, bool):
        where += f", {examples} examples"
    lines = [
        f"From the last evaluation of the training run (`eval_results.json`, on {where}); metrics it did not record "
        "are not shown.",
        "",
        "| metric | value | what it measures |",
        "| --- | --- | --- |",
    ]
    for key, value in metrics.items():
        info = metric_info(key)
        lines.append(f"| {info.name} (`{key}`) | {_format_value(value)} | {info.meaning} |")
    return "\n".join(lines)


def _stage_line(name: str, stage) -> str | None:
    if not isinstance(stage, dict) or stage.get("enabled") is False:
        return None
    shown = []
    for key in ("max_steps", "num_train_epochs", "learning_rate", "adapter_learning_rate",
                "per_device_train_batch_size", "gradient_accumulation_steps", "max_train_examples"):
        if stage.get(key) is not None:
            shown.append(f"{key}={stage[key]}")
    return f"stage `{name}`" + (f": {', '.join(shown)}" if shown else "")


def recipe_summary(recipe: dict) -> list[str]:
    """Readable lines about a recipe in the shape of `concept_talker/training/recipes.py`; unknown shapes give no lines."""
    lines = []
    model = recipe.get("model") if isinstance(recipe.get("model"), dict) else {}
    if model:
        part = f"model preset `{model.get('preset')}`" if model.get("preset") else "model"
        if model.get("thinker"):
            part += f", pretrained thinker `{model['thinker']}`"
        if model.get("codec"):
            part += f", codec `{model['codec']}`"
        if model.get("dtype"):
            part += f", {model['dtype']} weights"
        lines.append(part)
    data = recipe.get("data") if isinstance(recipe.get("data"), dict) else {}
    if data.get("path"):
        lines.append(f"data: `{data['path']}`")
    elif isinstance(data.get("synth"), dict):
        synth = data["synth"]
        lines.append(
            f"data: {synth.get('n', '?')} synthetic spoken dialogues rendered by the offline TTS"
            + (f" (voices: {synth['voices']})" if synth.get("voices") else "")
        )
    stages = recipe.get("stages") if isinstance(recipe.get("stages"), dict) else {}
    for name, stage in stages.items():
        line = _stage_line(name, stage)
        if line:
            lines.append(line)
    if recipe.get("seed") is not None:
        lines.append(f"seed {recipe['seed']}")
    return lines


def training_section(recipe: dict | None, kind: str) -> str:
    method = (
        "Concept-Talker trains in stages: a text stage pretrains a small thinker (tiny recipe only), an alignment "
        "stage trains the concept adapter so that the frozen thinker reads concepts as words, and a reply stage "
        "trains the thinker's LoRA adapters (reply text) and the talker (reply audio codes). The codec stays frozen."
    )
    if not recipe:
        return method + "\n\nThe training recipe was not recorded with this checkpoint (no `training_recipe.yaml`)."
    import yaml

    lines = [method, "", "The recipe of this checkpoint (`training_recipe.yaml`, local paths redacted):", ""]
    lines += [f"- {line}" for line in recipe_summary(recipe)]
    lines += ["", "<details><summary>Full recipe</summary>", "", "```yaml",
              yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", "", "</details>"]
    return "\n".join(lines)


def contents_section(facts: CardFacts) -> str:
    files = dict(facts.files)
    weights = files.get("model.safetensors")
    weights_text = f" ({_megabytes(weights)})" if weights else ""
    codec_in_weights = not facts.config.codec_name_or_path and facts.config.codec_type != "lyra_soundstream"
    if facts.kind == "trainable":
        base = (
            "the base thinker is in `thinker/` (loaded from there automatically)"
            if facts.base_included
            else f"the base thinker is [{facts.base_model}](https://huggingface.co/{facts.base_model}), downloaded "
            "when the model loads"
        )
        lines = [
            f"- `model.safetensors`{weights_text}: **trainable-only weights**: the concept adapter, the talker"
            f"{', the codec' if codec_in_weights else ''} and the thinker's LoRA adapters; {base}."
        ]
    elif facts.kind == "merged":
        lines = [f"- `model.safetensors`{weights_text}: **every weight, LoRA merged** into the thinker (plain Qwen2 "
                 "weights; peft is not needed)."]
    else:
        lines = [f"- `model.safetensors`{weights_text}: **every weight** of the model."]
    if any(path.startswith("codec/") for path in files):
        lines.append("- `codec/`: the codec the model speaks through (loaded from there automatically).")
    lines.append("- `config.json`: the model's configuration (it also names the `speech-to-speech` pipeline).")
    processor_files = sorted(p for p in files if "/" not in p and (p.startswith("tokenizer") or p in (
        "processor_config.json", "chat_template.jinja", "vocab.json", "merges.txt", "special_tokens_map.json")))
    if processor_files:
        lines.append(f"- processor and tokenizer: {', '.join(f'`{p}`' for p in processor_files)}.")
    code = sorted(p for p in files if p.endswith(".py") and "/" not in p)
    if code:
        lines.append(f"- remote code: {len(code)} Python files (listed under [Remote code](#remote-code)).")
    for name, what in (("eval_results.json", "the last evaluation of the training run"),
                       ("training_recipe.yaml", "the training recipe")):
        if name in files:
            lines.append(f"- `{name}`: {what}.")
    total = sum(files.values())
    lines.append(f"\n{len(files)} files, {_megabytes(total)} in all.")
    return "\n".join(lines)


def limitations(facts: CardFacts) -> list[str]:
    config = facts.config
    thinker_params = facts.parameter_counts.get("thinker", 0)
    items = []
    if thinker_params < 100_000_000:
        items.append(
            f"The thinker is small ({_millions(thinker_params)} parameters, {config.thinker_config.num_hidden_layers} "
            "layers): a model for tests and CPU demos, not a useful tutor."
        )
    items += [
        "The Concept-Talker recipe trains on short English tutoring dialogues whose speech is synthetic (an offline "
        "TTS with a few voices): expect worse results on natural, noisy, accented or non-English speech and outside "
        "the tutoring domain.",
        f"One turn of user audio is at most {config.max_audio_seconds:g} s (`max_audio_seconds`); longer recordings "
        "must be split.",
        "The thinker can be wrong with confidence. Do not rely on it for facts, grades or safety-critical advice.",
    ]
    codec_name = CODEC_NAMES.get(config.codec_type, config.codec_type)
    talker = config.talker_config
    if talker.num_style_concepts:
        measured = _recorded(facts, "voice_f0_match", " (here {:.2f} of replies nearest the reference's pitch)")
        items.append(
            f"A reference voice (1-5 s) steers the reply's voice only as far as `voice_f0_match` says{measured}; "
            f"the voice is otherwise what the talker learnt from its training speech through the {codec_name} codec. "
            "It is not a voice-cloning system: do not use it to imitate a person without their consent."
        )
    else:
        items.append(f"The reply voice is whatever the talker learnt from its training speech through the "
                     f"{codec_name} codec; it is not a voice-cloning system.")
    if talker.prompt_states:
        measured = _recorded(facts, "rate_duration_ratio", " (here {:.2f})")
        items.append(
            "A typed speaking-rate instruction (\"Speak slowly.\" / \"Speak quickly.\") reaches the talker through its "
            "prompt states and sets the reply's predicted length; it changes how long the reply lasts as far as "
            f"`rate_duration_ratio` says{measured}. Keep instructions short: the talker reads the prompt's last "
            f"{talker.prompt_states} positions."
        )
    else:
        items.append("Typed instructions reach the talker only through the reply's thinker states: \"Speak "
                     "slowly.\" may not change how fast it speaks (this talker reads no prompt states).")
    if "wer" in eval_metrics(facts.eval_results):
        items.append(
            "The spoken-reply WER is Whisper base's hearing of the replies: compare it with the ceiling WER (the same "
            "sentences in the house voice through the codec), not with WERs of other systems."
        )
    if facts.kind == "trainable":
        items.append("Trainable-only checkpoints need peft (LoRA) and load the base thinker as well; the merged "
                     "export does not.")
    return items


def _recorded(facts: CardFacts, key: str, template: str) -> str:
    """`template` filled with the evaluation's figure `key`, or "" where none was recorded."""
    value = facts.eval_results.get(key) if facts.eval_results else None
    return template.format(value) if isinstance(value, float) else ""


def _requirements(facts: CardFacts) -> str:
    import transformers

    required = third_party(m for modules in facts.code_imports.values() for m in modules) or ["torch", "transformers"]
    parts = [f"`transformers=={transformers.__version__}` (the version it was saved with)" if m == "transformers"
             else f"`{m}`" for m in required]
    if facts.config.lora_r > 0 and facts.kind != "merged":
        parts.append("`peft` (LoRA adapters)")
    if facts.config.codec_type == "lyra_soundstream":
        parts.append("`ai-edge-litert` (the Lyra codec)")
    return ", ".join(parts)


def _code_imports(facts: CardFacts) -> str:
    required = third_party(m for modules in facts.code_imports.values() for m in modules)
    text = ", ".join(f"`{m}`" for m in required) + " (and Python's standard library)"
    optional = [pip for module, pip in OPTIONAL_MODULES if module not in required]
    if optional:
        text += "; " + ", ".join(f"`{m}`" for m in optional) + " only where used"
    return text


def _code_rows(facts: CardFacts) -> list[tuple[str, str]]:
    rows = []
    for name, modules in sorted(facts.code_imports.items()):
        what = REMOTE_CODE_FILES.get(name, "part of the Concept-Talker model package")
        notes = [note for module, note in CODE_BEHAVIOUR.items() if module in modules]
        rows.append((name, what + ("; **" + "; ".join(notes) + "**" if notes else "")))
    return rows


def _base_note(facts: CardFacts) -> str:
    if facts.base_model:
        return f"The thinker was trained from [{facts.base_model}](https://huggingface.co/{facts.base_model})."
    if facts.base_included:
        return ("The base thinker is not a model on the Hub (it was a local folder where this checkpoint was trained), "
                "so it is included in this repository, in `thinker/`. It uses the Qwen2.5 tokenizer.")
    return "The thinker is not derived from a model on the Hub. It uses the Qwen2.5 tokenizer."


def card_data(facts: CardFacts):
    """The card's metadata as `huggingface_hub.ModelCardData`."""
    from huggingface_hub import ModelCardData

    results = build_eval_results(facts.eval_results)
    tags = list(BASE_TAGS) + [facts.config.codec_type]
    tags.append({"trainable": "lora", "merged": "merged-lora"}.get(facts.kind, "full-weights"))
    tags += [t for t in facts.tags if t not in tags]
    extra = {}
    if facts.base_model:
        extra["base_model_relation"] = "adapter" if facts.kind == "trainable" else "finetune"
    return ModelCardData(
        base_model=facts.base_model,
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        license=facts.license,
        language=list(facts.language) or None,
        datasets=list(facts.datasets) or None,
        tags=tags,
        metrics=sorted({r.metric_type for r in results}) or None,
        model_name=facts.repo_id.split("/")[-1],
        eval_results=results or None,
        **extra,
    )


def render_model_card(facts: CardFacts, template_path: str | os.PathLike | None = None):
    """The model card (`huggingface_hub.ModelCard`) of one checkpoint, from the template in this folder."""
    from huggingface_hub import ModelCard

    config = facts.config
    parameter_rows = [
        ({"lora": "LoRA adapters"}.get(part, part.replace("_", " ")), _millions(count))
        for part, count in facts.parameter_counts.items()
        if count and not (part == "lora" and facts.kind == "merged")
    ]
    card = ModelCard.from_template(
        card_data(facts),
        template_path=str(template_path or TEMPLATE_PATH),
        title=facts.repo_id.split("/")[-1],
        repo_id=facts.repo_id,
        concepts_per_second=f"{config.concepts_per_second:g}",
        lora_phrase=(" (LoRA adapters merged into its weights)" if facts.kind == "merged"
                     else " with LoRA adapters" if config.lora_r > 0 else ""),
        codec_name=CODEC_NAMES.get(config.codec_type, config.codec_type),
        num_codebooks=config.codec_num_codebooks,
        frame_rate=f"{config.frame_rate:g}",
        sampling_rate=config.sampling_rate,
        base_note=_base_note(facts),
        contents=contents_section(facts),
        parameter_rows=parameter_rows,
        requirements=_requirements(facts),
        evaluation=evaluation_section(facts.eval_results),
        training=training_section(facts.recipe, facts.kind),
        limitations=limitations(facts),
        code_imports=_code_imports(facts),
        remote_code_rows=_code_rows(facts),
        base_pickle_note=(" (the same holds for the base thinker)" if facts.kind == "trainable" else ""),
    )
    return card


__all__ = ["CardFacts", "METRICS", "build_eval_results", "eval_metrics", "is_hub_id", "render_model_card"]
