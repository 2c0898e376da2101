"""Pushed repositories load as a stranger would load them: in a fresh process where concept-talker cannot be imported,
through AutoModel / AutoProcessor / pipeline with trust_remote_code, from a folder in Hub layout and from the Hub cache
(offline, by repo id); the model card's usage snippets run as printed. Loading refuses pickled weights unless asked,
and config format versions either migrate or fail saying what reads them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modeling_concept_talker import ConceptTalkerForConditionalGeneration, ConceptTalkerProcessor, build_prompt
from modeling_concept_talker.configuration_concept_talker import CONFIG_FORMAT_VERSION, ConfigFormatError
from concept_talker.hub.push import push_model

REPO_ID = "me/ct-tiny"

# Runs in a fresh interpreter with the project's packages blocked: only the files in the repositories can be used.
# The model card's two snippets, as printed (pointed at local copies, replies shortened), load the merged repo through
# `pipeline` and the trainable-only repo through AutoModel / AutoProcessor; the Hub-cache copy loads by repo id.
STRANGER = textwrap.dedent(
    """
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeling_concept_talker", "configuration", "concept_talker", "benchmarks",
                                      "model_cards"):
                raise ModuleNotFoundError(f"blocked: {name}")
    sys.meta_path.insert(0, Block())

    import contextlib, io, json, os
    import numpy as np, torch
    from transformers import AutoModel

    spec = json.load(open(sys.argv[1]))
    audio = np.load(spec["audio"])
    results = {}

    def describe(name, model, processor, prompt):
        batch = processor(text=prompt, audio=audio, sampling_rate=16000)
        with torch.no_grad():
            torch.save(model(**batch).logits, os.path.join(spec["out"], name + "_logits.pt"))
        results[name] = {"module": type(model).__module__, "has_lora": model.has_lora,
                         "thinker": model.config.thinker_name_or_path, "processor": type(processor).__name__}

    namespaces = []
    for code in spec["snippets"]:
        namespace, printed = {"__name__": "__snippet__"}, io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(code, namespace)
        namespaces.append(namespace)
        results.setdefault("printed", []).append(printed.getvalue())

    tutor, reply = namespaces[0]["tutor"], namespaces[0]["reply"]
    results["pipeline"] = {"class": type(tutor).__module__ + "." + type(tutor).__name__, "keys": sorted(reply),
                           "dtype": str(reply["audio"].dtype), "samples": len(reply["audio"]),
                           "rate": reply["sampling_rate"], "text": reply["text"]}
    describe("merged", tutor.model, tutor.processor, namespaces[1]["prompt"])
    describe("trainable", namespaces[1]["model"], namespaces[1]["processor"], namespaces[1]["prompt"])
    results["trainable"]["samples"] = len(namespaces[1]["reply"].waveforms[0])

    model = AutoModel.from_pretrained(spec["hub_repo"], trust_remote_code=True).eval()
    describe("hub", model, namespaces[1]["processor"], namespaces[1]["prompt"])
    print(json.dumps(results))
    """
)


def make_trained_run(folder, tokenizer_dir):
    """A tiny trainable-only checkpoint whose base thinker is a local folder next to it (as the tiny recipe leaves
    it), with trained LoRA; returns the model and its processor."""
    from transformers import Qwen2ForCausalLM

    from configuration import load_preset

    torch.manual_seed(0)
    config = load_preset("tiny")
    base = Qwen2ForCausalLM(config.thinker_config)
    base.save_pretrained(folder / "thinker")
    referring = load_preset("tiny", thinker_name_or_path="thinker")  # the base thinker, relative to the checkpoint
    model = ConceptTalkerForConditionalGeneration._assemble(referring, base, None)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    model.eval().save_pretrained(folder)
    processor = ConceptTalkerProcessor.from_config(config, tokenizer_dir)
    processor.save_pretrained(folder)
    return model, processor


def card_snippets(readme: str, pipeline_repo: str, model_repo: str, question: str, reply: str) -> list[str]:
    """The README's two Python blocks (pipeline, AutoModel), pointed at local copies of the repos and shortened (3
    reply tokens, 0.3 s of audio); otherwise as printed."""
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert len(blocks) == 2, "the card should show a pipeline snippet and an AutoModel snippet"
    shortened = "thinker_max_new_tokens=3, max_audio_seconds=0.3, seed=0, thinker_runner='reference'"
    edited = []
    for block, repo in zip(blocks, (pipeline_repo, model_repo), strict=True):
        for old, new in ((f'"{REPO_ID}"', repr(repo)), ('"question.wav"', repr(question)),
                         ("thinker_max_new_tokens=64", shortened)):
            assert old in block, f"the card's snippet no longer contains {old}"
            block = block.replace(old, new)
        edited.append(block.replace('"reply.wav"', repr(reply)))
    return edited


@pytest.fixture(scope="module")
def run(tmp_path_factory, tokenizer_dir):
    """(folder, model, processor) of a trained run; the folder is only read (tests that change it copy it)."""
    folder = tmp_path_factory.mktemp("run")
    return folder, *make_trained_run(folder, tokenizer_dir)


@pytest.fixture(scope="module", autouse=True)
def stranger_process(run, tmp_path_factory):
    """Push the tiny model (dry run, both kinds), lay the trainable repo out in an offline Hub cache, and start one
    fresh process, with the package blocked, that loads everything. It runs in the background while the in-process
    tests of this module run; `stranger` waits for it."""
    import soundfile

    root = tmp_path_factory.mktemp("stranger")
    run_folder, model, processor = run
    for kind in ("trainable", "merged"):
        push_model(model, REPO_ID, dry_run=str(root / kind), merged=kind == "merged", processor=processor,
                          model_dir=str(run_folder), verify=False)
    # The Hub cache layout (models--ORG--NAME/refs/main + snapshots/<commit>/...), read offline by repo id.
    commit = "0123456789abcdef0123456789abcdef01234567"
    cache = root / "hub-cache"
    shutil.copytree(root / "trainable", cache / "models--me--ct-hub" / "snapshots" / commit)
    (cache / "models--me--ct-hub" / "refs").mkdir(parents=True)
    (cache / "models--me--ct-hub" / "refs" / "main").write_text(commit)

    audio = np.random.default_rng(0).standard_normal(6400).astype(np.float32) * 0.1  # 0.4 s at 16 kHz
    np.save(root / "question.npy", audio)
    soundfile.write(root / "question.wav", audio, 16000, subtype="FLOAT")  # float samples: read back exactly
    readme = (root / "trainable" / "README.md").read_text()
    spec = {
        "audio": str(root / "question.npy"), "out": str(root), "hub_repo": "me/ct-hub",
        "snippets": card_snippets(readme, str(root / "merged"), str(root / "trainable"), str(root / "question.wav"),
                                  str(root / "reply.wav")),
    }
    (root / "spec.json").write_text(json.dumps(spec))
    # Remote code is cached by commit, and this fake commit never changes: a module cache of its own keeps an older
    # run's code from being loaded.
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_MODULES_CACHE": str(root / "modules"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    with open(root / "stdout.txt", "w") as stdout, open(root / "stderr.txt", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", STRANGER, str(root / "spec.json")], cwd=root, env=env,
                                   stdout=stdout, stderr=stderr, text=True)
    try:
        yield process, root, audio
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def stranger(stranger_process, run):
    """(results, root folder, source model, batch) once the stranger's process has finished."""
    process, root, audio = stranger_process
    returncode = process.wait(timeout=300)
    assert returncode == 0, (root / "stderr.txt").read_text()[-4000:]
    _, model, processor = run
    batch = processor(text=build_prompt("Speak slowly."), audio=audio, sampling_rate=16000)
    return json.loads((root / "stdout.txt").read_text().strip().splitlines()[-1]), root, model, batch


# ---- trust: pickles ---------------------------------------------------------------------------------------------
def to_pickle(folder):
    """Replace a folder's model.safetensors by a pickled pytorch_model.bin with the same tensors."""
    weights = load_file(folder / "model.safetensors")
    torch.save(weights, folder / "pytorch_model.bin")
    os.remove(folder / "model.safetensors")


def test_pickled_weights_are_refused_unless_allowed(run, tmp_path):
    _, model, _ = run
    model.save_pretrained(tmp_path, trainable_only=False)
    to_pickle(tmp_path)
    with pytest.raises(OSError, match=r"pytorch_model\.bin.*allow_pickle=True"):
        ConceptTalkerForConditionalGeneration.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="allow_pickle=True"):
        ConceptTalkerForConditionalGeneration.from_pretrained(tmp_path, use_safetensors=False)
    loaded = ConceptTalkerForConditionalGeneration.from_pretrained(tmp_path, allow_pickle=True)
    expected = model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())


def test_pickled_base_thinker_is_refused_and_a_missing_one_is_explained(run, tmp_path):
    folder, model, _ = run
    shutil.copytree(folder, tmp_path / "run")
    to_pickle(tmp_path / "run" / "thinker")
    with pytest.raises(OSError, match=r"base thinker.*pickle.*allow_pickle=True"):
        ConceptTalkerForConditionalGeneration.from_pretrained(tmp_path / "run")

    # A base thinker that was on the machine that saved the checkpoint, but is not here.
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["thinker_name_or_path"] = str(tmp_path / "gone")
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    with pytest.raises(OSError, match=r"not here.*thinker_name_or_path=.*concept-talker push"):
        ConceptTalkerForConditionalGeneration.from_pretrained(tmp_path / "run")
    shutil.move(tmp_path / "run" / "thinker", tmp_path / "elsewhere")
    loaded = ConceptTalkerForConditionalGeneration.from_pretrained(
        tmp_path / "run", thinker_name_or_path=str(tmp_path / "elsewhere"), allow_pickle=True
    )
    assert loaded.config.thinker_name_or_path == str(tmp_path / "elsewhere")
    ids = torch.tensor([[9707, 11, 1879]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_a_base_thinker_on_the_hub_loads_at_its_own_revision(run, tmp_path):
    """The checkpoint's `revision` names a commit of the checkpoint's repo, not of the base thinker's."""
    folder, model, _ = run
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    base_repo = tmp_path / "cache" / "models--org--tiny-thinker"
    shutil.copytree(folder / "thinker", base_repo / "snapshots" / commit)
    (base_repo / "refs").mkdir()
    (base_repo / "refs" / "main").write_text(commit)
    (tmp_path / "checkpoint").mkdir()
    shutil.copy(folder / "model.safetensors", tmp_path / "checkpoint")
    config = {**json.loads((folder / "config.json").read_text()), "thinker_name_or_path": "org/tiny-thinker"}
    (tmp_path / "checkpoint" / "config.json").write_text(json.dumps(config))
    loaded = ConceptTalkerForConditionalGeneration.from_pretrained(
        tmp_path / "checkpoint", revision="v1.0", cache_dir=str(tmp_path / "cache"), local_files_only=True
    )
    assert loaded.config.thinker_name_or_path == "org/tiny-thinker"
    ids = torch.tensor([[9707, 11, 1879]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


# ---- config format versions -----------------------------------------------------------------------------------
def saved_with_version(model, folder, version, rename=None):
    model.save_pretrained(folder, trainable_only=False)
    config = json.loads((folder / "config.json").read_text())
    config["config_format_version"] = version
    for old, new in (rename or {}).items():
        config[old] = config.pop(new)
    (folder / "config.json").write_text(json.dumps(config))


def test_config_from_a_newer_format_says_to_upgrade_or_use_its_own_code(run, tmp_path):
    saved_with_version(run[1], tmp_path, 99)
    with pytest.raises(ConfigFormatError, match=rf"version 99.*up to {CONFIG_FORMAT_VERSION}.*trust_remote_code=True"
                                                r".*pip install -U"):
        ConceptTalkerForConditionalGeneration.from_pretrained(tmp_path)


def test_config_from_an_older_format_migrates_or_says_which_release_reads_it(run, tmp_path, monkeypatch):
    from modeling_concept_talker import configuration_concept_talker as configuration

    model = run[1]
    # Format 2 heard through the codec and spoke on a read/write schedule: no migration reaches format 3, and the
    # error names the release that reads it. Were there one (here: format 2 calling the talker's loss weight
    # `audio_weight`), it would be applied on loading.
    monkeypatch.setattr(model.config, "audio_loss_weight", 2.5)
    saved_with_version(model, tmp_path, 2, rename={"audio_weight": "audio_loss_weight"})
    with pytest.raises(ConfigFormatError, match=r"format version 2.*no migration from version 2.*"
                                                r"concept-talker==0\.2\.0.*trust_remote_code"):
        ConceptTalkerForConditionalGeneration.from_pretrained(tmp_path)

    def from_2(config):
        config["audio_loss_weight"] = config.pop("audio_weight")
        return config

    monkeypatch.setitem(configuration.CONFIG_MIGRATIONS, 2, from_2)
    loaded = ConceptTalkerForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.audio_loss_weight == 2.5 and loaded.config.config_format_version == CONFIG_FORMAT_VERSION
    assert torch.equal(loaded.talker.heads, model.talker.heads)


# ---- loading as a stranger (last: the fresh process runs while the tests above run) -------------------------
def test_trainable_only_repo_loads_without_the_package_and_answers(stranger):
    results, root, model, batch = stranger
    info = results["trainable"]
    assert info["module"].startswith("transformers_modules.") and info["processor"] == "ConceptTalkerProcessor"
    assert info["has_lora"] and info["thinker"].startswith(str(root / "trainable"))  # the repo's own thinker/
    with torch.no_grad():
        expected = model(**batch).logits
    assert torch.equal(torch.load(root / "trainable_logits.pt"), expected)
    assert info["samples"] > 0


def test_merged_repo_loads_without_the_package_and_answers(stranger):
    results, root, model, batch = stranger
    info = results["merged"]
    assert info["module"].startswith("transformers_modules.") and not info["has_lora"]
    with torch.no_grad():
        expected = model(**batch).logits
    assert torch.allclose(torch.load(root / "merged_logits.pt"), expected, atol=1e-4)


def test_trainable_only_repo_loads_from_the_hub_cache_by_repo_id(stranger):
    results, root, model, batch = stranger
    info = results["hub"]
    # The base thinker came from the repo's thinker/ folder in the cached snapshot, not from anywhere else.
    assert info["thinker"].startswith(str(root / "hub-cache" / "models--me--ct-hub" / "snapshots"))
    assert info["thinker"].rstrip("/").endswith("thinker") and info["has_lora"]
    with torch.no_grad():
        expected = model(**batch).logits
    assert torch.equal(torch.load(root / "hub_logits.pt"), expected)


def test_card_snippets_and_pipeline_work_for_a_stranger(stranger):
    results, root, model, _ = stranger
    info = results["pipeline"]
    assert info["class"].startswith("transformers_modules.") and info["class"].endswith("ConceptTalkerPipeline")
    assert info["keys"] == ["audio", "sampling_rate", "text"] and isinstance(info["text"], str)
    assert info["dtype"] == "float32" and info["samples"] > 0 and info["rate"] == model.config.sampling_rate
    assert results["printed"][0] == info["text"] + "\n"  # the snippet prints the reply text
    assert results["trainable"]["samples"] > 0
    assert (root / "reply.wav").exists()  # written by the AutoModel snippet
