"""The concept adapter as its own `PreTrainedModel` (`ConceptTalkerAdapterModel`): built from its config alone, the
same network as the one inside the whole model, saved and loaded on its own; the sizes it takes from the other parts
filled in by the top config (also for configs saved without them) and checked against those parts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from configuration import load_preset
from modeling_concept_talker import (ConceptAdapterConfig, ConceptTalkerAdapterModel,
                                     ConceptTalkerForConditionalGeneration)
from modeling_concept_talker.configuration_concept_talker import CONFIG_FORMAT_VERSION, SIZES_FROM_OTHER_PARTS

# Whisper ear without style queries; Whisper ear with them (a voice gets an input of its own: the codec's latents);
# the codec as the ear (a voice is read through the speech input).
CONFIGS = {
    "whisper ear": {},
    "whisper ear, voice": {"talker_config": {"num_style_concepts": 4}},
    "codec ear, voice": {"ear_config": None, "talker_config": {"num_style_concepts": 4}},
}


def lively(adapter: ConceptTalkerAdapterModel, seed: int = 0) -> ConceptTalkerAdapterModel:
    """Weights far from their initial values, so that equal outputs mean equal weights in the right places."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return adapter.eval()


def adapter_outputs(adapter: ConceptTalkerAdapterModel) -> list[torch.Tensor]:
    """Concepts and their mask for two padded clips of the ear's frames (2.4 s and 1.1 s), and the style concepts of
    two reference clips of codec latents where the adapter has style queries."""
    config = adapter.config
    generator = torch.Generator().manual_seed(1)
    frames = int(2.4 * config.window_frames)
    latents = torch.randn(2, frames, config.feature_size, generator=generator)
    mask = torch.arange(frames)[None] < torch.tensor([[frames], [int(1.1 * config.window_frames)]])
    with torch.no_grad():
        outputs = list(adapter(latents, mask))
        if config.num_style_concepts:
            voice_frames = config.voice_window_frames if config.voice_feature_size else config.window_frames
            width = config.voice_feature_size or config.feature_size
            voice = torch.randn(2, 3 * voice_frames, width, generator=generator)
            outputs.append(adapter.style(voice, torch.arange(3 * voice_frames)[None] < torch.tensor([[90], [40]])))
    return outputs


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_the_adapter_built_from_its_config_alone_is_the_one_inside_the_model(overrides):
    config = load_preset("tiny", **overrides)
    torch.manual_seed(0)
    model = ConceptTalkerForConditionalGeneration(config).eval()
    standalone = ConceptTalkerAdapterModel(config.adapter_config).eval()
    inside = model.concept_adapter.state_dict()
    assert {k: v.shape for k, v in standalone.state_dict().items()} == {k: v.shape for k, v in inside.items()}
    assert model.concept_adapter.config is config.adapter_config
    # The same network: the model's weights in the standalone adapter compute the model's concepts.
    lively(model.concept_adapter)
    standalone.load_state_dict(model.concept_adapter.state_dict())
    for mine, theirs in zip(adapter_outputs(standalone), adapter_outputs(model.concept_adapter), strict=True):
        assert torch.equal(mine, theirs)
    if config.adapter_config.num_style_concepts:  # how the model reads a voice: from its codec latents
        assert (config.adapter_config.voice_feature_size > 0) == (config.ear_type == "whisper")


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_a_standalone_adapter_round_trips_through_save_pretrained(overrides, tmp_path):
    config = load_preset("tiny", **overrides).adapter_config
    adapter = lively(ConceptTalkerAdapterModel(config))
    adapter.save_pretrained(tmp_path)
    loaded = ConceptTalkerAdapterModel.from_pretrained(tmp_path).eval()
    for name in SIZES_FROM_OTHER_PARTS["adapter_config"]:
        assert getattr(loaded.config, name) == getattr(config, name), name
    for mine, theirs in zip(adapter_outputs(loaded), adapter_outputs(adapter), strict=True):
        assert torch.equal(mine, theirs)


def test_an_adapter_config_without_the_sizes_of_the_other_parts_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match="feature_size, window_frames and thinker_hidden_size come from the ear"):
        ConceptTalkerAdapterModel(ConceptAdapterConfig())


def test_a_config_saved_without_the_parts_sizes_loads_with_them_filled_in(tmp_path):
    """Configs saved before the parts' sizes were fields (the talker's and the adapter's) load as they did: the sizes
    are filled in from the other parts, in the same format version (older code reads the new fields as extra
    attributes, and builds the same weights)."""
    config = load_preset("tiny", talker_config={"num_style_concepts": 4})
    torch.manual_seed(0)
    model = ConceptTalkerForConditionalGeneration(config).eval()
    lively(model.concept_adapter)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["config_format_version"] == CONFIG_FORMAT_VERSION
    for part, sizes in SIZES_FROM_OTHER_PARTS.items():
        assert all(saved[part][name] is not None for name in sizes)
        for name in sizes:
            del saved[part][name]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = ConceptTalkerForConditionalGeneration.from_pretrained(tmp_path).eval()
    for part, sizes in SIZES_FROM_OTHER_PARTS.items():
        for name in sizes:
            assert getattr(getattr(loaded.config, part), name) == getattr(getattr(config, part), name), (part, name)
    for mine, theirs in zip(adapter_outputs(loaded.concept_adapter), adapter_outputs(model.concept_adapter),
                            strict=True):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize(("field", "value", "says"), [
    ("feature_size", 99, r"feature_size=99, but it must be 64: the whisper ear's frames are that wide"),
    ("window_frames", 40, r"window_frames=40, but it must be 50: a 1 s window holds that many frames of the 50 Hz ear"),
    ("thinker_hidden_size", 32, r"thinker_hidden_size=32, but it must be 64: the thinker is that wide"),
    ("voice_feature_size", 128, r"voice_feature_size=128, but it must be 0: there are no style queries"),
])
def test_adapter_sizes_that_disagree_with_the_other_parts_are_refused(field, value, says):
    with pytest.raises(ValueError, match=says + r".*leave it unset"):
        load_preset("tiny", adapter_config={field: value})


def test_the_embedded_checkpoint_keeps_its_saved_adapter(assets):
    """`checkpoints/tiny-lyra` was saved before the adapter's sizes were config fields: its adapter gets them from its
    parts (Whisper base's 512-wide frames; the Lyra codec's 64-wide latents for a voice) and loads with every saved
    weight in place, under the same names."""
    from safetensors.torch import load_file

    folder = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny-lyra"
    assert "feature_size" not in json.loads((folder / "config.json").read_text())["adapter_config"]
    saved = {k.removeprefix("concept_adapter."): v for k, v in load_file(folder / "model.safetensors").items()
             if k.startswith("concept_adapter.")}
    model = ConceptTalkerForConditionalGeneration.from_pretrained(folder,
                                                                  codec_model_dir=str(assets / "lyra-soundstream"))
    adapter = model.config.adapter_config
    assert (adapter.feature_size, adapter.window_frames, adapter.thinker_hidden_size) == (512, 50, 128)
    assert (adapter.num_style_concepts, adapter.voice_feature_size, adapter.voice_window_frames) == (4, 64, 50)
    state = model.concept_adapter.state_dict()
    assert state.keys() == saved.keys()
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
