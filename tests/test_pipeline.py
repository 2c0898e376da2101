"""The `speech-to-speech` pipeline: audio in (file, bytes, array + rate, dict), reply text + float32 audio out, the same
reply as `model.generate`; settings pass through; a saved checkpoint names the pipeline so that
`pipeline(model=folder, trust_remote_code=True)` finds it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import liven
from transformers import pipeline

from modeling_concept_talker import ConceptTalkerForConditionalGeneration, build_prompt
from modeling_concept_talker.pipeline_concept_talker import PIPELINE_TASK, ConceptTalkerPipeline

FAST = dict(thinker_max_new_tokens=3, max_audio_seconds=0.2, seed=0, thinker_runner="reference")


@pytest.fixture(scope="module")
def parts(tokenizer_dir):
    from configuration import load_preset
    from modeling_concept_talker import ConceptTalkerProcessor

    config = load_preset("tiny")
    torch.manual_seed(0)
    model = liven(ConceptTalkerForConditionalGeneration(config).eval())
    return model, ConceptTalkerProcessor.from_config(config, tokenizer_dir)


@pytest.fixture(scope="module")
def tutor(parts):
    model, processor = parts
    return pipeline(PIPELINE_TASK, model=model, processor=processor, device="cpu")


@pytest.fixture(scope="module")
def question():
    return np.random.default_rng(0).standard_normal(6400).astype(np.float32) * 0.1  # 0.4 s at 16 kHz


def direct_reply(parts, audio, instruction=None, **settings):
    model, processor = parts
    batch = processor(text=build_prompt(instruction), audio=audio, sampling_rate=16000)
    reply = model.generate(**batch, tokenizer=processor.tokenizer, **{**FAST, **settings})
    return processor.decode(reply.sequences[0], skip_special_tokens=True).strip(), reply.waveforms[0]


@pytest.fixture(scope="module")
def expected(parts, question):
    """The reply `model.generate` gives to the question (text, waveform)."""
    text, wave = direct_reply(parts, question)
    assert text  # the lively model says something, so equal texts mean something
    return text, wave


def test_pipeline_reads_every_form_of_audio_and_answers_like_generate(tutor, parts, question, expected, tmp_path):
    import soundfile

    assert isinstance(tutor, ConceptTalkerPipeline)
    path = tmp_path / "question.wav"
    soundfile.write(path, question, 16000, subtype="FLOAT")  # float samples: read back exactly
    reference = parts[1](text=build_prompt(), audio=question, sampling_rate=16000)
    forms = [
        (question, {"sampling_rate": 16000}),
        (torch.from_numpy(question), {"sampling_rate": 16000}),
        ({"array": question, "sampling_rate": 16000}, {}),
        ({"raw": question, "sampling_rate": 16000}, {}),
        ({"path": str(path)}, {}),
        (str(path), {}),
        (path.read_bytes(), {}),
    ]
    for inputs, kwargs in forms:
        batch = tutor.preprocess(inputs, **kwargs)
        assert batch.keys() == reference.keys(), type(inputs)
        assert all(torch.equal(batch[k], reference[k]) for k in batch), type(inputs)
    out = tutor(str(path), **FAST)  # end to end, from a file
    assert sorted(out) == ["audio", "sampling_rate", "text"]
    assert out["sampling_rate"] == parts[0].config.sampling_rate
    assert out["audio"].dtype == np.float32 and out["audio"].ndim == 1
    assert out["text"] == expected[0] and np.array_equal(out["audio"], expected[1])


def test_instruction_and_generation_settings_pass_through(tutor, parts, question):
    with_instruction = tutor.preprocess(question, sampling_rate=16000, instruction="Speak slowly.")
    reference = parts[1](text=build_prompt("Speak slowly."), audio=question, sampling_rate=16000)
    assert torch.equal(with_instruction["input_ids"], reference["input_ids"])

    short = {**FAST, "thinker_max_new_tokens": 1}
    assert tutor._sanitize_parameters(**short) == tutor._sanitize_parameters(generate_kwargs=short)
    short_text, short_wave = direct_reply(parts, question, thinker_max_new_tokens=1)
    # A list of inputs gets a list of replies, one each.
    replies = tutor([question, question[:3200]], sampling_rate=16000, return_timings=True, **short)
    assert len(replies) == 2 and replies[0]["text"] == short_text and np.array_equal(replies[0]["audio"], short_wave)
    assert replies[1]["timings"]["audio_s"] == pytest.approx(len(replies[1]["audio"]) / replies[1]["sampling_rate"])
    # Settings given when the pipeline is built apply to every call.
    model, processor = parts
    built = pipeline(PIPELINE_TASK, model=model, processor=processor, device="cpu", **short)
    assert built._forward_params == {"generate_kwargs": short}


def test_bad_inputs_say_what_to_pass(tutor, question, tmp_path):
    with pytest.raises(ValueError, match=r"sampling_rate=16000"):
        tutor(question)
    with pytest.raises(ValueError, match="No such audio file"):
        tutor(str(tmp_path / "missing.wav"))
    with pytest.raises(ValueError, match="'sampling_rate'"):
        tutor({"array": question})
    with pytest.raises(ValueError, match="unexpected key"):
        tutor({"audio": question, "sampling_rate": 16000})
    with pytest.raises(TypeError, match="Cannot read audio from a int"):
        tutor(3)
    with pytest.raises(TypeError, match=r"Unknown argument\(s\) \['temperature'\].*thinker_temperature"):
        tutor(question, sampling_rate=16000, temperature=0.5)


def test_saved_checkpoint_names_its_pipeline_for_remote_code(parts, question, expected, tmp_path):
    model, processor = parts
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["custom_pipelines"] == {
        PIPELINE_TASK: {"impl": "pipeline_concept_talker.ConceptTalkerPipeline", "pt": ["AutoModel"],
                        "type": "multimodal"}
    }
    assert (tmp_path / "pipeline_concept_talker.py").exists()
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        pipeline(model=str(tmp_path))
    remote = pipeline(model=str(tmp_path), trust_remote_code=True, device="cpu")  # the task comes from config.json
    assert remote.task == PIPELINE_TASK and type(remote).__module__.startswith("transformers_modules.")
    out = remote(question, sampling_rate=16000, **FAST)
    assert out["text"] == expected[0] and np.array_equal(out["audio"], expected[1])
