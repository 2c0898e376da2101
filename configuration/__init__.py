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


# Fields a thinker config takes though its class no longer declares them (transformers folds them into
# `rope_parameters`); the presets use `rope_theta`.
LEGACY_THINKER_FIELDS = {"rope_theta", "rope_scaling"}


def config_fields(config_class, inherited: bool = True) -> set[str]:
    """The field names a config class declares (with `inherited`, also its bases', e.g. `PreTrainedConfig`'s
    `dtype`), with their aliases; class-level settings (`ClassVar`) left out."""
    from transformers import PreTrainedConfig

    names = {"model_type"}
    for klass in config_class.__mro__:
        if not inherited and klass is PreTrainedConfig:
            break
        annotations = vars(klass).get("__annotations__", {})
        names |= {name for name, kind in annotations.items() if "ClassVar" not in str(kind)}
    return names | set(getattr(config_class, "attribute_map", {}) or {})


def check_override_fields(preset: dict, overrides: dict) -> None:
    """Raise a `ValueError` naming any override key that its config class does not have (`talker_config.
    num_hiden_layers`), with the nearest field name: a typo would otherwise be kept as a stray attribute, train the
    wrong model silently, and be saved into the checkpoint's config."""
    import difflib

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from modeling_concept_talker import ConceptTalkerConfig
    from modeling_concept_talker.configuration_concept_talker import ConceptAdapterConfig, TalkerConfig

    def refuse(where: str, key: str, known: set[str], config_class):
        near = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        own = sorted(config_fields(config_class, inherited=False) - {"model_type"})
        raise ValueError(f"Unknown model setting '{where}{key}': {config_class.__name__} has no such field.{hint} "
                         f"Its fields: {', '.join(own)}.")

    top = config_fields(ConceptTalkerConfig)
    for key, value in overrides.items():
        if key not in top:
            refuse("", key, top, ConceptTalkerConfig)
        if not isinstance(value, dict):
            continue
        if key in ("adapter_config", "talker_config"):
            config_class = ConceptAdapterConfig if key == "adapter_config" else TalkerConfig
            known = config_fields(config_class)
        elif key in ("thinker_config", "codec_config"):
            default = "qwen2" if key == "thinker_config" else "encodec"
            model_type = value.get("model_type") or (preset.get(key) or {}).get("model_type") or default
            if model_type not in CONFIG_MAPPING:
                raise ValueError(f"{key}.model_type {model_type!r} is not a known model type.")
            config_class = CONFIG_MAPPING[model_type]
            known = config_fields(config_class) | (LEGACY_THINKER_FIELDS if key == "thinker_config" else set())
        else:
            continue
        for field in value:
            if field not in known:
                refuse(f"{key}.", field, known, config_class)


def load_preset(name_or_path: str, **overrides):
    """A `ConceptTalkerConfig` from a preset name (`"tiny"`, `"0.5b"`) or a JSON file, with field overrides
    (nested groups merged field by field: `merge_settings`; every override's name checked: `check_override_fields`)."""
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
    check_override_fields(fields, overrides)
    return ConceptTalkerConfig(**merge_settings(fields, overrides))
