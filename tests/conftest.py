"""Shared fixtures. Tests run offline: real assets come from ../shared/assets, models are tiny and random."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("CONCEPT_TALKER_ASSETS", REPO.parent / "shared" / "assets"))


@pytest.fixture(scope="session")
def assets() -> Path:
    if not ASSETS.is_dir():
        pytest.fail(f"The shared assets are missing at {ASSETS}: set CONCEPT_TALKER_ASSETS to their folder.")
    return ASSETS


@pytest.fixture(scope="session")
def tokenizer_dir(assets) -> str:
    return str(assets / "qwen2.5-tokenizer")


@pytest.fixture
def tiny_config():
    from configuration import load_preset

    return load_preset("tiny")


@pytest.fixture
def tiny_processor(tiny_config, tokenizer_dir):
    from modeling_concept_talker import ConceptTalkerProcessor

    return ConceptTalkerProcessor.from_config(tiny_config, tokenizer_dir)


@pytest.fixture
def tiny_model(tiny_config):
    from modeling_concept_talker import ConceptTalkerForConditionalGeneration

    torch.manual_seed(0)
    return ConceptTalkerForConditionalGeneration(tiny_config).eval()


def liven(model, seed: int = 0):
    """Give a random model weights large enough that its replies depend on what it hears.

    A freshly initialised thinker (std 0.02, tied embeddings) answers every input with the same token, which would
    make tests of "same reply" pass for the wrong reason. Larger random weights make the greedy reply a sensitive
    function of the audio, so equal replies mean equal computations.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.thinker.named_parameters()) + list(model.concept_adapter.named_parameters()):
            if p.ndim == 2 and "lora_" not in name:
                std = 0.5 if "embed" in name else 0.15
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


@pytest.fixture
def lively_model(tiny_model):
    return liven(tiny_model)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread: on a 2-core machine shared with other work, multi-threaded ops stall on each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
