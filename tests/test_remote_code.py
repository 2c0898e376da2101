"""A saved checkpoint loads through AutoModel / AutoProcessor with trust_remote_code, in a fresh process where the
concept-talker package cannot be imported, and gives the same outputs. The remote code holds no native code: its
fast runner runs plain PyTorch without the `concept_talker_kernels` package, and the native kernel where that package
is installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from modeling_concept_talker import build_prompt

# Runs in a fresh interpreter. The project's packages are blocked, so only the files saved next to the weights
# (the remote code) can be used.
LOADER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = ["modeling_concept_talker", "configuration", "concept_talker", "benchmarks"] + sys.argv[2:]
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"blocked: {name}")
    sys.meta_path.insert(0, Block())

    import importlib, json, numpy as np, torch
    from transformers import AutoModel, AutoProcessor
    folder = sys.argv[1]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    build_prompt = sys.modules[type(processor).__module__].build_prompt
    audio = np.load(folder + "/question.npy")
    batch = processor(text=build_prompt(), audio=audio, sampling_rate=16000)
    with torch.no_grad():
        logits = model(**batch).logits
    torch.save(logits, folder + "/remote_logits.pt")
    fast_thinker = importlib.import_module(type(model).__module__.rsplit(".", 1)[0] + ".fast_thinker")
    runner = fast_thinker.FastThinkerRunner(model.thinker, max_length=32)
    runner.append(runner.embed(batch["input_ids"][:, :8]))
    print(json.dumps({"model_module": type(model).__module__, "processor": type(processor).__name__,
                      "has_lora": model.has_lora, "kernel": runner.kernel, "fast_module": fast_thinker.__name__,
                      "why": runner.native_unavailable_reason}))
    """
)


@pytest.mark.parametrize("kernels_installed", [False, True])
def test_checkpoint_loads_as_remote_code_without_the_package(tiny_model, tiny_processor, tmp_path, kernels_installed):
    audio = np.random.default_rng(0).standard_normal(40000).astype(np.float32) * 0.1
    with torch.no_grad():
        for name, p in tiny_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)  # a trained adapter, so LoRA weights matter
    batch = tiny_processor(text=build_prompt(), audio=audio, sampling_rate=16000)
    with torch.no_grad():
        expected = tiny_model(**batch).logits
    tiny_model.save_pretrained(tmp_path)
    tiny_processor.save_pretrained(tmp_path)
    np.save(tmp_path / "question.npy", audio)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_concept_talker.ConceptTalkerForConditionalGeneration"

    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".cpp", ".c", ".so")]  # no native code uploaded
    assert not (tmp_path / "concept_talker_kernels").exists()
    blocked = [] if kernels_installed else ["concept_talker_kernels"]
    env = dict(os.environ)
    if kernels_installed:  # as `pip install concept-talker` would: the kernels package (alone) on the path
        import concept_talker_kernels

        site = tmp_path.parent / f"{tmp_path.name}-site"
        site.mkdir()
        (site / "concept_talker_kernels").symlink_to(os.path.dirname(concept_talker_kernels.__file__))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(tmp_path), *blocked], cwd=tmp_path, capture_output=True, text=True,
        timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["model_module"].startswith("transformers_modules.")
    assert info["processor"] == "ConceptTalkerProcessor" and info["has_lora"]
    assert torch.equal(torch.load(tmp_path / "remote_logits.pt"), expected)
    assert info["fast_module"].startswith("transformers_modules.")  # the runner came from the remote code
    if not kernels_installed:
        assert info["kernel"] == "torch" and "not installed" in info["why"]
    else:
        import concept_talker_kernels

        if concept_talker_kernels.supported_isas():
            assert info["kernel"] != "torch", info["why"]
