"""Finding a model and its processor from what a user types: a checkpoint folder, a Hub id, or a preset name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shared offline copy of the Qwen2.5 tokenizer, where this project is checked out next to it.
OFFLINE_TOKENIZER = REPO_ROOT.parent / "shared" / "assets" / "qwen2.5-tokenizer"
HUB_TOKENIZER = "Qwen/Qwen2.5-0.5B"


@dataclass
class LoadedModel:
    model: object
    processor: object
    description: str  # one line saying plainly what the model is
    trained: bool  # False for a preset with random weights


def default_tokenizer() -> str:
    """`$CONCEPT_TALKER_TOKENIZER`, else the offline shared copy if present, else the Hub's Qwen2.5 tokenizer."""
    if os.environ.get("CONCEPT_TALKER_TOKENIZER"):
        return os.environ["CONCEPT_TALKER_TOKENIZER"]
    if OFFLINE_TOKENIZER.is_dir():
        return str(OFFLINE_TOKENIZER)
    return HUB_TOKENIZER


def load_model(spec: str, tokenizer: str | None = None, dtype=None, **preset_overrides) -> LoadedModel:
    """Load a Concept-Talker for inference.

    Args:
        spec: a folder saved with `save_pretrained` (processor files next to it), a Hub id, or a preset name
            (`tiny`, `0.5b`, `tiny-lyra`: random weights, said plainly in the description).
        tokenizer: tokenizer folder or Hub id for presets and for checkpoints saved without a processor.
        dtype: e.g. `torch.bfloat16` for the weights.
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
        description = (
            f"the '{spec}' preset with RANDOM weights (no trained checkpoint given): the reply text and audio are "
            f"noise; the {config.codec_type} codec is "
            + ("the real Lyra model" if config.codec_type == "lyra_soundstream" else "random too")
        )
        return LoadedModel(model, processor, description, trained=False)

    kwargs = {} if dtype is None else {"dtype": dtype}
    try:
        model = ConceptTalkerForConditionalGeneration.from_pretrained(spec, **kwargs).eval()
    except OSError as err:
        raise SystemExit(
            f"Could not load a Concept-Talker model from {spec!r} ({err}). Give a folder saved with save_pretrained, "
            f"a Hub id, or one of the presets: {', '.join(preset_names())}."
        ) from err
    try:
        processor = ConceptTalkerProcessor.from_pretrained(spec)
    except (OSError, ValueError, TypeError):
        processor = ConceptTalkerProcessor.from_config(model.config, tokenizer or default_tokenizer())
    codec = model.config.codec_type
    description = f"{spec} ({codec} codec, {model.config.thinker_config.num_hidden_layers}-layer thinker)"
    return LoadedModel(model, processor, description, trained=True)
