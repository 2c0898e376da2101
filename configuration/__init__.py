"""Presets and recipes as files.

- `model-<name>.json`: model presets (`tiny` for tests and CPU demos, `0.5b` with Qwen2.5-0.5B's real dimensions).
- `<recipe>.yaml`: training recipes, run with `concept-talker train --recipe configuration/<recipe>.yaml`.
"""

from __future__ import annotations

import json
import os

CONFIGURATION_DIR = os.path.dirname(os.path.abspath(__file__))


def preset_names() -> list[str]:
    """Names of the model presets shipped in this folder."""
    return sorted(f[len("model-") : -len(".json")] for f in os.listdir(CONFIGURATION_DIR) if f.startswith("model-"))


def merge_settings(preset: dict, overrides: dict) -> dict:
    """`overrides` laid over `preset`, group by group: a nested mapping (`talker_config`, `adapter_config`, ...)
    keeps the preset's other fields, so `{"talker_config": {"read_tokens": 3}}` changes one field. A sub-config whose
    `model_type` changes (another codec) replaces the preset's, whose fields belong to the other model type; any
    value that is not a mapping (a number, a config object) replaces the preset's."""
    merged = dict(preset)
    for key, value in overrides.items():
        base = merged.get(key)
        nested = isinstance(value, dict) and isinstance(base, dict)
        if nested and value.get("model_type", base.get("model_type")) == base.get("model_type"):
            merged[key] = merge_settings(base, value)
        else:
            merged[key] = value
    return merged


def load_preset(name_or_path: str, **overrides):
    """A `ConceptTalkerConfig` from a preset name (`"tiny"`, `"0.5b"`) or a JSON file, with field overrides
    (nested groups merged field by field: `merge_settings`)."""
    from modeling_concept_talker import ConceptTalkerConfig

    path = name_or_path
    if not os.path.isfile(path):
        path = os.path.join(CONFIGURATION_DIR, f"model-{name_or_path}.json")
    if not os.path.isfile(path):
        raise ValueError(
            f"No model preset {name_or_path!r}: use one of {', '.join(preset_names())} or the path of a JSON file."
        )
    with open(path) as f:
        fields = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    return ConceptTalkerConfig(**merge_settings(fields, overrides))
