"""`concept-talker push`: what a pushed repository holds (dry run), the upload through HfApi (mocked: the Hub is not
reachable here), and the model card's metadata round trip through `huggingface_hub.ModelCard`."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from modeling_concept_talker import ConceptTalkerForConditionalGeneration, ConceptTalkerProcessor
from concept_talker.cli import main as cli
from concept_talker.hub.push import push_model

EVAL_RESULTS = {"stage1_cer": 0.25, "stage2_reply_accuracy": 0.5, "wer": 0.31, "ceiling_wer": 0.12,
                "rate_duration_ratio": 1.4,
                "split": "test", "num_examples": 40, "broken": float("nan"), "note": "not a metric",
                "eval_runtime": 12.5, "epoch": 3.0}
RECIPE = (
    "seed: 0\noutput_dir: /home/alice/runs/tiny\nmodel: {preset: tiny, dtype: float32}\ndata: {synth: {n: 2000}}\n"
    "stages:\n  text: {max_steps: 300, learning_rate: 0.001}\n  reply: {max_steps: 400}\n"
)


def make_trained_run(folder, tokenizer_dir):
    """A tiny trainable-only checkpoint as a training run leaves it: its own small base thinker in a local folder
    (referenced relatively), trained LoRA, processor, eval_results.json and training_recipe.yaml."""
    from transformers import Qwen2ForCausalLM

    from configuration import load_preset

    torch.manual_seed(0)
    config = load_preset("tiny")
    base = Qwen2ForCausalLM(config.thinker_config)
    base.save_pretrained(folder / "thinker")
    model = ConceptTalkerForConditionalGeneration._assemble(
        load_preset("tiny", thinker_name_or_path="thinker"), base, None
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)  # a trained adapter, so LoRA weights matter
    model.eval().save_pretrained(folder)
    processor = ConceptTalkerProcessor.from_config(config, tokenizer_dir)
    processor.save_pretrained(folder)
    (folder / "eval_results.json").write_text(json.dumps(EVAL_RESULTS))
    (folder / "training_recipe.yaml").write_text(RECIPE)
    return model, processor


@pytest.fixture(scope="module")
def run(tmp_path_factory, tokenizer_dir):
    """(folder, model, processor) of a trained run; tests only read the folder."""
    folder = tmp_path_factory.mktemp("run")
    return folder, *make_trained_run(folder, tokenizer_dir)


@pytest.fixture(scope="module")
def dry_trainable(run, tmp_path_factory):
    folder = run[0]
    out = tmp_path_factory.mktemp("dry") / "trainable"
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        # The load-back check is tested on the merged push below; here it would only repeat the loading tests.
        argv = ["push", "--model", str(folder), "--repo-id", "me/ct-tiny", "--no-verify", "--dry-run", str(out)]
        assert cli(argv) == 0
    return out, stdout.getvalue()


def repo_files(folder) -> dict[str, int]:
    from concept_talker.hub.push import list_files

    return dict(list_files(str(folder)))


def test_dry_run_writes_a_complete_trainable_only_repository(run, dry_trainable):
    folder, model, _ = run
    out, printed = dry_trainable
    files = repo_files(out)
    expected = {"README.md", "config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
                "tokenizer_config.json", "chat_template.jinja", "thinker/config.json", "thinker/model.safetensors",
                "configuration_concept_talker.py", "modeling_concept_talker.py", "processing_concept_talker.py",
                "pipeline_concept_talker.py", "generation.py", "audio.py", "eval_results.json", "training_recipe.yaml"}
    assert expected <= set(files)
    assert not [p for p in files if p.endswith((".bin", ".pt", ".pth", ".pkl"))]
    # The listing names every file with its size, and nothing else.
    for path, size in files.items():
        assert f"{size:,} B" in printed and path in printed, path
    assert f"{len(files)} files, {sum(files.values()):,} bytes" in printed

    config = json.loads((out / "config.json").read_text())
    assert config["saved_weights"] == "trainable" and config["thinker_name_or_path"] == "thinker"
    assert config["custom_pipelines"]["speech-to-speech"]["impl"] == "pipeline_concept_talker.ConceptTalkerPipeline"
    assert set(load_file(out / "model.safetensors")) == model.trainable_state_keys()
    # The base thinker in the repo is the one the adapters were trained on, without them.
    base = load_file(out / "thinker" / "model.safetensors")
    assert not any("lora_" in k for k in base)
    source = load_file(folder / "thinker" / "model.safetensors")
    assert base.keys() == source.keys() and all(torch.equal(base[k], source[k]) for k in base)
    # Local paths of the training machine are not published.
    assert "/home/alice" not in (out / "training_recipe.yaml").read_text()
    for path in files:
        if path.endswith((".json", ".yaml", ".md")):
            assert str(folder) not in (out / path).read_text(), path
    assert json.loads((out / "eval_results.json").read_text())["stage1_cer"] == 0.25


def test_dry_run_merged_has_every_weight_and_no_adapters(run, tmp_path):
    folder, model, processor = run
    out = tmp_path / "merged"
    staged = push_model(model, "me/ct-tiny", merged=True, dry_run=str(out), processor=processor, model_dir=str(folder))
    assert staged.kind == "merged" and staged.folder == str(out)  # and it loaded back, computing the same logits
    files = repo_files(out)
    assert not any(p.startswith("thinker/") for p in files)
    config = json.loads((out / "config.json").read_text())
    assert config["saved_weights"] == "full" and config["lora_r"] == 0
    assert config["thinker_name_or_path"] is None  # a local folder would mean nothing to a reader
    keys = set(load_file(out / "model.safetensors"))
    assert not any("lora_" in k for k in keys)
    tied = {"thinker.lm_head.weight"}  # the tiny thinker ties its output layer to its embeddings
    assert keys == {k.replace(".base_layer", "") for k in model.state_dict() if "lora_" not in k} - tied
    assert "pipeline_concept_talker.py" in files and "README.md" in files

    # The load-back check catches a repository that does not compute what the model computes.
    from concept_talker.hub.push import PushError, verify_staged

    heads = model.talker.heads.detach().clone()
    try:
        with torch.no_grad():
            model.talker.heads.add_(1.0)
        with pytest.raises(PushError, match="talker weights differ"):
            verify_staged(staged, model)
    finally:
        with torch.no_grad():
            model.talker.heads.copy_(heads)


def test_model_card_metadata_round_trips_and_reports_only_recorded_metrics(dry_trainable):
    from huggingface_hub import ModelCard

    out, _ = dry_trainable
    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "audio-to-audio"
    assert {"concept-talker", "speech-to-speech", "lora", "encodec"} <= set(data.tags)
    assert data.license == "apache-2.0" and data.language == ["en"]
    assert data.base_model is None  # the tiny thinker was trained from scratch, not from a Hub model
    recorded = {r.metric_name: r.metric_value for r in data.eval_results}
    assert recorded == {"Transcript CER (stage 1)": 0.25, "Reply accuracy (stage 2)": 0.5,
                        "Spoken reply WER": 0.31, "Recogniser WER ceiling": 0.12, "Slow / fast duration ratio": 1.4}
    assert {r.dataset_split for r in data.eval_results} == {"test"}
    assert sorted(data.metrics) == ["accuracy", "cer", "ratio", "wer"]
    text = card.text
    assert "Audio code accuracy" not in text  # not recorded, so not reported
    assert 'pipeline("speech-to-speech", model="me/ct-tiny", trust_remote_code=True)' in text
    assert "`pipeline_concept_talker.py`" in text and "allow_pickle=True" in text
    assert "stage `text`: max_steps=300, learning_rate=0.001" in text
    assert "in `thinker/`" in text
    # The card says what loading the remote code needs and does, as read from the files themselves.
    from model_cards.card import remote_code_imports, third_party

    imports = remote_code_imports(out)
    assert "pipeline_concept_talker.py" in imports and "modeling_concept_talker.py" in imports
    assert all(f"`{module}`" in text for module in third_party(m for ms in imports.values() for m in ms))
    for name, modules in imports.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        assert ("native code" in row) == ("ctypes" in modules), name


def test_card_without_evaluation_or_recipe_says_so(run, tmp_path):
    from huggingface_hub import ModelCard

    from model_cards.card import CardFacts, render_model_card

    model = run[1]
    facts = CardFacts(repo_id="me/ct", config=model.config, kind="merged",
                      parameter_counts=model.parameter_counts(), base_model="Qwen/Qwen2.5-0.5B",
                      eval_results={"wer": float("inf"), "dataset": "x"}, datasets=["me/tutoring-speech"])
    render_model_card(facts).save(tmp_path / "README.md")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == "Qwen/Qwen2.5-0.5B" and card.data.base_model_relation == "finetune"
    assert card.data.datasets == ["me/tutoring-speech"]
    assert card.data.eval_results is None and card.data.metrics is None  # an infinite WER is not a result
    assert "No evaluation results were recorded" in card.text
    assert "The training recipe was not recorded" in card.text
    assert '"Speak slowly." may not change how fast it speaks' in card.text  # the tiny talker reads no prompt states


def test_card_says_how_far_a_rate_instruction_is_followed(tmp_path):
    from configuration import load_preset
    from model_cards.card import CardFacts, render_model_card

    config = load_preset("tiny", talker_config={"prompt_states": 16})
    facts = CardFacts(repo_id="me/ct", config=config, kind="merged", parameter_counts={"talker": 1},
                      eval_results={"rate_duration_ratio": 1.95})
    text = render_model_card(facts).text
    assert "as far as `rate_duration_ratio` says (here 1.95)" in text and "the prompt's last 16 positions" in text


def test_push_to_hub_uploads_the_staged_folder_through_hfapi(run, monkeypatch):
    import huggingface_hub

    folder, model, processor = run
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", {**kwargs, "files": repo_files(kwargs["folder_path"])}))
            return "https://huggingface.co/me/ct-tiny/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    result = push_model(model, "me/ct-tiny", processor=processor, private=True, token="hf_x", model_dir=str(folder),
                               verify=False)
    assert result.endswith("/commit/abc")
    assert calls[0] == ("init", "hf_x")
    assert calls[1] == ("create_repo", "me/ct-tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    upload = calls[2][1]
    assert upload["repo_id"] == "me/ct-tiny" and upload["delete_patterns"] == ["*"]
    files = upload["files"]
    assert {"config.json", "model.safetensors", "thinker/model.safetensors", "README.md",
            "pipeline_concept_talker.py", "tokenizer.json", "eval_results.json"} <= set(files)
    assert not os.path.exists(upload["folder_path"])  # staged in a temporary folder, removed after the upload


def test_push_says_what_to_do_when_it_cannot(run, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from concept_talker.hub.push import PushError

    folder, model, processor = run
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "old.txt").write_text("x")
    assert cli(["push", "--model", str(folder), "--repo-id", "me/x", "--dry-run", str(tmp_path / "busy")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert cli(["push", "--model", str(tmp_path / "nope"), "--repo-id", "me/x", "--dry-run", str(tmp_path / "a")]) == 2
    assert "No checkpoint folder" in capsys.readouterr().err
    assert cli(["push", "--model", str(folder), "--repo-id", "no-namespace", "--dry-run", str(tmp_path / "b")]) == 2
    assert "ORG/NAME" in capsys.readouterr().err

    class Offline:
        def __init__(self, token=None):
            pass

        def create_repo(self, *args, **kwargs):
            raise ConnectionError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    with pytest.raises(PushError, match=r"(?s)network unreachable.*hf auth login.*dry run"):
        push_model(model, "me/x", processor=processor, verify=False)
