"""Shared fixtures. Tests run offline: real assets come from ../shared/assets, models are tiny and random."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
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
def tiny_model(tiny_config, tiny_processor):
    from modeling_concept_talker import ConceptTalkerForConditionalGeneration

    torch.manual_seed(0)
    model = ConceptTalkerForConditionalGeneration(tiny_config).eval()
    model.tokenizer = tiny_processor.tokenizer  # spells the replies for the talker's phonemes
    return model


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
        if model.ear is not None:  # a random ear hears every clip alike unless its weights are this large too
            for name, p in model.ear.encoder.named_parameters():
                if p.ndim >= 2 and "embed_positions" not in name:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.15)
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


def reply_symbol_inputs(processor, config, replies, frames):
    """The talker's inputs for replies (texts) lasting `frames` codec frames each: their symbols (espeak-ng's
    phonemes, as the house voice reads them), the answer token of each symbol, and each symbol's frames (the reply's
    frames shared out evenly). Returns `reply_symbols`, `reply_symbol_tokens`, `reply_symbol_frames`, padded."""
    from modeling_concept_talker.phonemes import reply_symbols, symbol_ids
    from concept_talker.data.collators import symbol_tokens

    rows = []
    for text, total in zip(replies, frames):
        symbols = reply_symbols(text)
        ids = symbol_ids(symbols.symbols, config.talker_config.phoneme_symbols)
        answer = processor.tokenizer(text + "<|im_end|>", add_special_tokens=False).input_ids
        shares = np.diff(np.round(np.linspace(0, total, len(ids) + 1))).astype(int).tolist()
        rows.append((ids, symbol_tokens(symbols.chars, answer, processor.tokenizer), shares))
    longest = max(len(r[0]) for r in rows)
    pad = lambda values, fill: values + [fill] * (longest - len(values))  # noqa: E731
    return {
        "reply_symbols": torch.tensor([pad(r[0], -100) for r in rows]),
        "reply_symbol_tokens": torch.tensor([pad(r[1], 0) for r in rows]),
        "reply_symbol_frames": torch.tensor([pad(r[2], 0) for r in rows]),
    }
