"""Finding a model and its processor from what a user types: a checkpoint folder, a Hub id, or a preset name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shared offline copy of the real Lyra v2 SoundStream models.
OFFLINE_LYRA = REPO_ROOT.parent / "shared" / "assets" / "lyra-soundstream"
# The embedded default model: what `configuration/tiny-lyra.yaml` trains (checkpoints/README.md says how it was made).
EMBEDDED_MODEL = REPO_ROOT / "checkpoints" / "tiny-lyra"


@dataclass
class LoadedModel:
    model: object
    processor: object
    description: str  # one line saying plainly what the model is
    trained: bool  # False for a preset with random weights


def default_tokenizer() -> str:
    """`$CONCEPT_TALKER_TOKENIZER`, else the offline shared copy if present, else the Hub's Qwen2.5 tokenizer (the
    model package's `default_tokenizer_source`: a checkpoint without a tokenizer reads the same one)."""
    from modeling_concept_talker.processing_concept_talker import default_tokenizer_source

    return default_tokenizer_source()


def default_lyra_dir() -> str | None:
    """`$CONCEPT_TALKER_LYRA_DIR`, else the offline shared copy of the Lyra models if present, else None."""
    if os.environ.get("CONCEPT_TALKER_LYRA_DIR"):
        return os.environ["CONCEPT_TALKER_LYRA_DIR"]
    return str(OFFLINE_LYRA) if OFFLINE_LYRA.is_dir() else None


def default_whisper_dir() -> str | None:
    """`$CONCEPT_TALKER_WHISPER_DIR`, else the offline shared copy of Whisper base if present, else None."""
    from modeling_concept_talker.ear import local_whisper

    found = local_whisper("openai/whisper-base")
    return found if os.path.isdir(found) else None


def default_model() -> tuple[str, str | None]:
    """The model `chat` uses when none is given: the embedded trained tiny-lyra checkpoint where the Lyra models
    can be found, else the `tiny` preset (random weights, random codec); and why, when it is the fallback."""
    if (EMBEDDED_MODEL / "config.json").is_file():
        if default_lyra_dir() is not None and default_whisper_dir() is not None:
            return str(EMBEDDED_MODEL), None
        if default_lyra_dir() is None:
            why = ("the embedded trained model speaks through the Lyra codec, whose model files were not found (set "
                   "CONCEPT_TALKER_LYRA_DIR or pass --lyra-dir)")
        else:
            why = ("the embedded trained model hears through Whisper base's encoder, which was not found (set "
                   "CONCEPT_TALKER_WHISPER_DIR to a folder holding openai/whisper-base)")
    else:
        why = "no embedded checkpoint in this copy"
    return "tiny", why


def looks_like_a_path(spec: str) -> bool:
    """True when `spec` can only be meant as a folder on this machine, not a Hub id (`ORG/NAME`): it starts with
    `.`, `~` or a separator, has a backslash or more than one separator, or its first part is a folder here
    (`runs/final` where `runs/` exists)."""
    separators = spec.count("/") + (spec.count(os.sep) if os.sep != "/" else 0)
    return (spec.startswith((".", "~", "/", os.sep)) or "\\" in spec or separators > 1 or spec.endswith("/")
            or (separators == 1 and os.path.isdir(spec.split("/")[0])))


def check_model_spec(spec: str) -> None:
    """Refuse at once a `--model` that is neither a folder here, a preset, nor shaped like a Hub id, so that a
    mistyped path is not looked up on the Hub (with its network retries)."""
    from configuration import preset_names

    if os.path.isdir(spec) or spec in preset_names():
        return
    choices = (f"a checkpoint folder (saved with save_pretrained), a Hub id (ORG/NAME), or a preset "
               f"({', '.join(preset_names())})")
    if os.path.exists(spec):
        raise SystemExit(f"--model {spec!r} is a file, not a checkpoint folder: give the folder that holds its "
                         f"config.json, or {choices}.")
    if looks_like_a_path(spec):
        raise SystemExit(f"--model {spec!r}: no such folder (relative to {os.getcwd()}). Give {choices}.")
    if "/" not in spec:
        raise SystemExit(f"--model {spec!r} is not a folder here, nor a preset, nor a Hub id (those are ORG/NAME). "
                         f"Give {choices}.")


def load_model(spec: str, tokenizer: str | None = None, dtype=None, lyra_dir: str | None = None,
               **preset_overrides) -> LoadedModel:
    """Load a Concept-Talker for inference.

    Args:
        spec: a folder saved with `save_pretrained` (processor files next to it), a Hub id, or a preset name
            (`tiny`, `0.5b`, `tiny-lyra`: random weights, said plainly in the description).
        tokenizer: tokenizer folder or Hub id for presets and for checkpoints saved without a processor.
        dtype: e.g. `torch.bfloat16` for the weights.
        lyra_dir: folder of the Lyra models, for checkpoints that use the Lyra codec (default: the folder in their
            config if it exists, else `default_lyra_dir()`).
        preset_overrides: config fields for a preset (e.g. `codec_config={"model_dir": ...}`).
    """
    import torch

    from configuration import preset_names
    from modeling_concept_talker import ConceptTalkerForConditionalGeneration, ConceptTalkerProcessor

    if spec in preset_names() and not os.path.isdir(spec):
        from configuration import load_preset

        config = load_preset(spec, **preset_overrides)
        torch.manual_seed(0)
        model = ConceptTalkerForConditionalGeneration(config).eval()
        if dtype is not None:
            model = model.to(dtype)
        processor = ConceptTalkerProcessor.from_config(config, tokenizer or default_tokenizer())
        model.tokenizer = processor.tokenizer  # the talker spells the replies with it
        description = (
            f"the '{spec}' preset with RANDOM weights (no trained checkpoint given): the reply text and audio are "
            f"noise; the {config.codec_type} codec is "
            + ("the real Lyra model" if config.codec_type == "lyra_soundstream" else "random too")
        )
        return LoadedModel(model, processor, description, trained=False)

    check_model_spec(spec)
    kwargs = {} if dtype is None else {"dtype": dtype}
    try:
        config = ConceptTalkerForConditionalGeneration.config_class.from_pretrained(spec)
        if config.codec_type == "lyra_soundstream":
            # The Lyra models live outside a local checkpoint, in a folder that differs between machines: where the
            # saved one is not on this machine, use the default. (A relative one names a folder inside the
            # checkpoint, which from_pretrained finds itself.)
            saved = config.codec_config.model_dir
            if lyra_dir is None and (saved is None or (os.path.isabs(saved) and not os.path.isdir(saved))):
                lyra_dir = default_lyra_dir()
            if lyra_dir is not None:
                kwargs["codec_model_dir"] = lyra_dir
        if config.ear_type == "whisper" and config.saved_weights == "trainable":
            # The ear is a Hub id or a folder on the machine that trained it: where it is not a folder here, use the
            # offline copy when it is the same Whisper (its size fits, and the load checks it).
            saved = config.ear_name_or_path
            if (saved is None or not os.path.isdir(saved)) and default_whisper_dir() is not None:
                kwargs["ear_name_or_path"] = default_whisper_dir()
        model = ConceptTalkerForConditionalGeneration.from_pretrained(spec, **kwargs).eval()
    except OSError as err:
        if os.path.isdir(spec):
            raise SystemExit(f"Could not load the Concept-Talker checkpoint in {spec}: {err}") from err
        raise SystemExit(
            f"--model {spec!r} is neither a folder here nor a Hub repository that could be reached ({err}). Give a "
            f"folder saved with save_pretrained, a Hub id, or one of the presets: {', '.join(preset_names())}."
        ) from err
    try:
        processor = ConceptTalkerProcessor.from_pretrained(spec)
    except (OSError, ValueError, TypeError):
        processor = ConceptTalkerProcessor.from_config(model.config, tokenizer or default_tokenizer())
    model.tokenizer = processor.tokenizer  # the talker spells the replies with it
    codec = model.config.codec_type
    codec_words = {"lyra_soundstream": "the real Lyra SoundStream codec", "encodec": "EnCodec", "mimi": "Mimi"}
    description = (f"{spec} ({codec_words.get(codec, codec)}, "
                   f"{model.config.thinker_config.num_hidden_layers}-layer thinker)")
    if os.path.abspath(spec) == str(EMBEDDED_MODEL):
        thinker = model.config.thinker_config
        description = (f"the embedded default: the tiny-lyra recipe's trained model ({spec}), hearing through "
                       f"Whisper base's encoder, a {thinker.num_hidden_layers}-layer, {thinker.hidden_size}-wide "
                       "thinker, and a talker speaking the house voice through the real Lyra SoundStream codec, all "
                       "trained on 2 CPU cores (README: what it gets right and wrong)")
    return LoadedModel(model, processor, description, trained=True)
