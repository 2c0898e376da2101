"""Nothing lost, nothing planted, no traceback: hostile and careless input gets a clear error, a warning or a refusal.

Each test names the case it guards; without the fix it stands for, it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from modeling_concept_talker import ConceptTalkerConfig, ConceptTalkerForConditionalGeneration, build_prompt
from modeling_concept_talker.generation import SpokenGenerationConfig
from modeling_concept_talker.streaming import SpokenTurn
from concept_talker.cli import main

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "checkpoints" / "tiny-lyra"


def question_file(assets) -> str:
    return str(assets / "speech" / "ljspeech-dev" / "wavs" / "LJ001-0002.flac")


def speech_like(seconds: float = 1.5, rate: int = 16000) -> np.ndarray:
    return (0.1 * np.random.default_rng(0).standard_normal(int(seconds * rate))).astype(np.float32)


# ---- 1. a checkpoint folder without config.json; defaults that are never large ---------------------------------------

def test_a_folder_with_weights_but_no_config_fails_at_once_naming_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "weights-only"
    folder.mkdir()
    shutil.copy(EMBEDDED / "model.safetensors", folder)

    def no_model(self, config):  # should loading ever get this far again, fail without building (it took 24 GB)
        raise AssertionError(f"a model was built from a default config (thinker {config.thinker_config.hidden_size} "
                             "wide)")

    monkeypatch.setattr(ConceptTalkerForConditionalGeneration, "__init__", no_model)
    with pytest.raises(OSError, match=r"weights-only has no config.json.*holds: model.safetensors"):
        ConceptTalkerForConditionalGeneration.from_pretrained(str(folder))
    with pytest.raises(OSError, match="has no config.json"):
        ConceptTalkerConfig.from_pretrained(str(folder))


def test_the_default_config_builds_a_small_model():
    """ConceptTalkerConfig() used to carry Qwen2Config's defaults: a 4096-wide, 32-layer thinker (about 7B
    parameters), which exhausted the machine's memory when built."""
    with torch.device("meta"):  # counted without allocating
        model = ConceptTalkerForConditionalGeneration(ConceptTalkerConfig())
    assert model.parameter_counts()["thinker"] < 50e6


def test_a_thinker_that_is_not_qwen2_is_refused_clearly():
    config = ConceptTalkerConfig().to_dict()
    config["thinker_config"] = {**config["thinker_config"], "model_type": "llama"}
    with pytest.raises(ValueError, match=r"model_type='llama'.*thinker is a Qwen2 model"):
        ConceptTalkerConfig(**{k: v for k, v in config.items() if k in ("thinker_config",)})


# ---- 2. synth --overwrite replaces only a dataset of ours -------------------------------------------------------------

def test_synth_overwrite_never_deletes_a_folder_that_is_not_our_dataset(tmp_path, capsys):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("months of work")
    code = main(["synth", "--out", str(out), "--overwrite", "--n", "3", "--validation-size", "1", "--test-size", "1"])
    assert code == 1
    assert "not a dataset made by concept-talker synth (chapter1.tex)" in capsys.readouterr().err
    assert (out / "chapter1.tex").read_text() == "months of work"


def test_what_counts_as_a_dataset_of_ours(tmp_path):
    from concept_talker.data.dataset import FORMAT, check_output_dir

    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "synth_info.json").write_text(json.dumps({"format": FORMAT}))
    (ours / "train").mkdir()
    check_output_dir(str(ours), overwrite=True)  # replaceable
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        check_output_dir(str(ours), overwrite=False)
    partial = tmp_path / "partial"  # what save_to_disk had written of a build of ours
    partial.mkdir()
    (partial / "dataset_dict.json").write_text("{}")
    check_output_dir(str(partial), overwrite=True)
    theirs = tmp_path / "theirs"  # a synth_info.json of another format is not ours
    theirs.mkdir()
    (theirs / "synth_info.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(FileExistsError, match="even with --overwrite"):
        check_output_dir(str(theirs), overwrite=True)
    (tmp_path / "empty").mkdir()
    check_output_dir(str(tmp_path / "empty"), overwrite=False)  # an empty folder holds nothing to lose


# ---- 4. recipes: every key and value checked before any work; --resume with changed unfinished stages ------------------

@pytest.mark.parametrize("override, message", [
    (["--model.overrides.talker_config.num_hiden_layers", "4"],
     r"Unknown model setting 'talker_config.num_hiden_layers'.*Did you mean 'num_hidden_layers'"),
    (["--model.overrides.lora_rank", "4"], r"Unknown model setting 'lora_rank'.*Did you mean 'lora_r'"),
    (["--stages.reply.adapter_learning_rate", "fast"], r"stages.reply.adapter_learning_rate must be a number > 0"),
    (["--stages.reply.max_train_examples", "some"], r"stages.reply.max_train_examples must be a whole number >= 1"),
    (["--stages.align.voice", "maybe"], r"stages.align.voice must be true or false, got 'maybe'"),
    (["--stages.align.lr_scheduler_type", "wavy"], r"stages.align: .*wavy is not a valid SchedulerType"),
    (["--data.synth.n", "forty"], r"data.synth.n must be a whole number >= 1, got 'forty'"),
    (["--data.synth.num_proc", "0"], r"data.synth.num_proc must be a whole number >= 1, got 0"),
    (["--eval.max_examples", "all"], r"eval.max_examples must be a whole number >= 1"),
])
def test_bad_recipe_values_fail_when_the_recipe_is_read(override, message):
    from concept_talker.training.recipes import RecipeError, load_recipe

    with pytest.raises(RecipeError, match=message):
        load_recipe(str(REPO / "configuration" / "tiny.yaml"), override)


def test_recipe_numbers_written_as_text_still_read(tmp_path):
    from concept_talker.training.recipes import load_recipe

    recipe = load_recipe(str(REPO / "configuration" / "tiny.yaml"),
                         ["--data.synth.n", "2e3", "--stages.reply.adapter_learning_rate", "1e-4"])
    assert recipe["data"]["synth"]["n"] == 2000 and recipe["stages"]["reply"]["adapter_learning_rate"] == 1e-4


def test_the_train_command_refuses_a_typo_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match="num_hiden_layers"):
        main(["train", "--recipe", "configuration/tiny.yaml", "--output_dir", str(out),
              "--model.overrides.talker_config.num_hiden_layers", "4"])
    assert not out.exists()


def test_resume_accepts_changes_to_unfinished_stages_only(tmp_path):
    from concept_talker.training.recipes import load_recipe
    from concept_talker.training.train import RUN_FILE, TrainingRun

    out = tmp_path / "run"
    path = str(REPO / "configuration" / "tiny.yaml")
    first = load_recipe(path, ["--stages.reply.adapter_learning_rate", "1e-4"])
    first["output_dir"] = str(out)
    TrainingRun(first, str(out))  # writes run.json
    for stage in ("text", "align"):  # these two finished
        (out / stage / "model").mkdir(parents=True)
        (out / stage / "model" / "config.json").write_text("{}")

    fixed = load_recipe(path, ["--stages.reply.adapter_learning_rate", "2e-4", "--eval.max_examples", "10"])
    fixed["output_dir"] = str(out)
    TrainingRun(fixed, str(out), resume=True)  # the reply stage has not run yet: its settings may change
    assert json.loads((out / RUN_FILE).read_text())["recipe"]["stages"]["reply"]["adapter_learning_rate"] == 2e-4

    changed = load_recipe(path, ["--stages.reply.adapter_learning_rate", "2e-4", "--eval.max_examples", "10",
                                 "--stages.align.max_steps", "7"])
    changed["output_dir"] = str(out)
    with pytest.raises(SystemExit, match=r"stages.align.max_steps changed; finished stages: text, align.*"
                                         r"only the settings of its unfinished stages \(stages.reply\)"):
        TrainingRun(changed, str(out), resume=True)
    # a stage before the finished ones (here the optional copy stage, which did not run) cannot be switched on
    late = load_recipe(path, ["--stages.reply.adapter_learning_rate", "2e-4", "--eval.max_examples", "10",
                              "--stages.copy.max_steps", "5"])
    late["output_dir"] = str(out)
    with pytest.raises(SystemExit, match=r"\(stages.copy.*changed; finished stages: text, align\)"):
        TrainingRun(late, str(out), resume=True)


# ---- 5. generation settings are range-checked ---------------------------------------------------------------------------

@pytest.mark.parametrize("settings, message", [
    ({"thinker_max_new_tokens": 0}, r"thinker_max_new_tokens must be a whole number >= 1, got 0"),
    ({"thinker_max_new_tokens": -3}, r"thinker_max_new_tokens must be a whole number >= 1"),
    ({"thinker_max_new_tokens": 2.5}, r"thinker_max_new_tokens must be a whole number >= 1, got 2.5"),
    ({"max_audio_seconds": 0}, r"max_audio_seconds must be > 0 \(seconds of reply audio\)"),
    ({"max_audio_seconds": -1.0}, r"max_audio_seconds must be > 0"),
    ({"max_audio_seconds": float("nan")}, r"max_audio_seconds must be > 0"),
    ({"talker_temperature": 0.0}, r"talker_temperature must be > 0 when talker_do_sample is on"),
    ({"thinker_do_sample": True, "thinker_temperature": -1.0}, r"thinker_temperature must be > 0"),
    ({"thinker_top_p": 0.0}, r"thinker_top_p must be in \(0, 1\]"),
    ({"thinker_top_p": 1.5}, r"thinker_top_p must be in \(0, 1\]"),
    ({"talker_top_k": -1}, r"talker_top_k must be a whole number >= 0"),
    ({"thinker_top_k": 1.5}, r"thinker_top_k must be a whole number >= 0"),
    ({"seed": -1}, r"seed must be a whole number >= 0"),
    ({"thinker_do_sample": "yes"}, r"thinker_do_sample must be True or False"),
    ({"thinker_dtype": "float16"}, r"thinker_dtype must be one of bfloat16, float32, int8 \(or None"),
])
def test_generation_settings_out_of_range_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        SpokenGenerationConfig.from_kwargs(settings)


def test_generate_refuses_a_bad_setting_before_any_work(tiny_model, tiny_processor):
    batch = tiny_processor(text=build_prompt(), audio=speech_like(1.0, 24000), sampling_rate=24000)
    with pytest.raises(ValueError, match="thinker_max_new_tokens must be a whole number >= 1, got 0"):
        tiny_model.generate(**batch, thinker_max_new_tokens=0)
    # greedy decoding leaves the temperature unused: any value is accepted there
    SpokenGenerationConfig.from_kwargs({"talker_do_sample": False, "talker_temperature": 0.0})


# ---- 6. the command line prints one line, not a traceback --------------------------------------------------------------

def test_chat_prints_one_line_and_exits_non_zero_on_bad_audio(tmp_path, capsys):
    damaged = tmp_path / "question.wav"
    damaged.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    code = main(["chat", "--audio", str(damaged), "--out", str(tmp_path / "r.wav")])
    assert code == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("concept-talker chat: error:")]
    assert len(lines) == 1 and "Could not read" in lines[0] and "question.wav" in lines[0]
    assert "Traceback" not in err
    with pytest.raises(ValueError, match="Could not read"):  # --debug: the exception itself, traceback and all
        main(["chat", "--audio", str(damaged), "--out", str(tmp_path / "r.wav"), "--debug"])


def test_chat_names_the_flag_of_a_bad_setting(assets, tmp_path):
    with pytest.raises(SystemExit, match=r"--max-new-tokens: thinker_max_new_tokens must be a whole number >= 1"):
        main(["chat", "--audio", question_file(assets), "--out", str(tmp_path / "r.wav"), "--max-new-tokens", "0"])
    with pytest.raises(SystemExit, match=r"--max-reply-seconds: max_audio_seconds must be > 0"):
        main(["chat", "--audio", question_file(assets), "--out", str(tmp_path / "r.wav"), "--max-reply-seconds", "0"])


# ---- 7. the smaller ones ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damaged", ["model.safetensors", "thinker/model.safetensors"])
def test_a_truncated_weight_file_is_named_and_called_damaged(tmp_path, damaged):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(EMBEDDED, checkpoint)
    with open(checkpoint / damaged, "r+b") as f:
        f.truncate(50_000)
    with pytest.raises(OSError, match=rf"{checkpoint / damaged} is damaged .*truncated or not a safetensors file"):
        ConceptTalkerForConditionalGeneration.from_pretrained(str(checkpoint))


def test_a_long_question_names_the_setting_that_limits_questions(tiny_processor):
    audio = np.full(int(16000 * 61), 0.1, np.float32)
    with pytest.raises(ValueError) as error:
        tiny_processor(text=build_prompt(), audio=audio, sampling_rate=16000)
    message = str(error.value)
    assert "61.0 s long" in message and "max_audio_seconds, in its config and processor" in message
    assert "ConceptTalkerProcessor.from_pretrained(path, max_audio_seconds=61)" in message
    assert "chat's --max-reply-seconds) limits the reply, not the question" in message


@pytest.mark.parametrize("spec, message", [
    ("runs/does-not-exist/final", r"--model 'runs/does-not-exist/final': no such folder \(relative to "),
    ("./my-model", r"--model './my-model': no such folder"),
    ("tests/nothing-here", r"--model 'tests/nothing-here': no such folder"),  # tests/ exists: a path, not ORG/NAME
    ("my-model", r"--model 'my-model' is not a folder here, nor a preset, nor a Hub id \(those are ORG/NAME\)"),
    ("README.md", r"--model 'README.md' is a file, not a checkpoint folder"),
])
def test_a_model_path_that_does_not_exist_is_not_looked_up_on_the_hub(spec, message, monkeypatch):
    from concept_talker.loading import load_model

    def no_hub(*args, **kwargs):
        raise AssertionError("looked up on the Hub")

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(ConceptTalkerConfig, "from_pretrained", no_hub)
    with pytest.raises(SystemExit, match=message):
        load_model(spec)


def test_a_hub_id_that_cannot_be_reached_says_so(monkeypatch):
    from concept_talker.loading import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit, match=r"'nobody/no-such-model' is neither a folder here nor a Hub repository that "
                                         r"could be reached"):
        load_model("nobody/no-such-model")


def test_samples_far_outside_plus_minus_one_are_scaled_with_a_warning(tiny_processor, tiny_model):
    """Documented in modeling_concept_talker/audio.py: a whole clip peaking above 2 is scaled to peak 1; a streamed
    piece is refused (its turn's other pieces could not be scaled alike)."""
    loud = speech_like(1.0) * 32767 / 0.5  # int16 values passed as floats
    with pytest.warns(UserWarning, match=r"far outside \[-1, 1\].*scaled to peak 1.0"):
        batch = tiny_processor(text=build_prompt(), audio=loud, sampling_rate=16000)
    assert 0.9 < float(batch["input_values"].abs().max()) <= 1.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a slight overshoot, as codecs and resamplers make, passes as it is
        tiny_processor(text=build_prompt(), audio=np.clip(speech_like(1.0) * 12, -1.2, 1.2), sampling_rate=16000)
    turn = SpokenTurn(tiny_model, tiny_processor, sampling_rate=16000, thinker_max_new_tokens=2)
    with pytest.raises(ValueError, match=r"far outside \[-1, 1\].*feed float samples in \[-1, 1\]"):
        turn.feed(loud)
    turn.close()


def test_a_silent_question_says_no_speech_was_heard(tiny_processor, tiny_model, tmp_path):
    with pytest.warns(UserWarning, match="audio clip 0 is silent.*no speech was heard"):
        tiny_processor(text=build_prompt(), audio=np.zeros(16000, np.float32), sampling_rate=16000)
    turn = SpokenTurn(tiny_model, tiny_processor, sampling_rate=16000, thinker_max_new_tokens=2,
                      max_audio_seconds=0.2)
    turn.feed(np.zeros(16000, np.float32))
    with pytest.warns(UserWarning, match="The turn is silent.*no speech was heard"):
        turn.reply()
    silent = tmp_path / "silent.wav"
    soundfile.write(str(silent), np.zeros(32000, np.float32), 16000)
    with pytest.raises(SystemExit, match="No speech was heard in the question"):
        main(["chat", "--audio", str(silent), "--out", str(tmp_path / "r.wav")])
    assert not (tmp_path / "r.wav").exists()


def test_an_instruction_the_model_was_never_trained_on_is_warned_of(tiny_model, tiny_processor):
    from modeling_concept_talker.processing_concept_talker import warn_if_unfamiliar_instruction

    tiny_model.config.trained_instructions = ["Speak slowly.", "Repeat after me. Speak quickly."]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_unfamiliar_instruction(tiny_model.config, "Repeat after me, slowly!") == []
    with pytest.warns(UserWarning, match=r"'Answer in French\.' has words no instruction in this model's training "
                                         r"data had \(answer, in, french\).*most likely ignore"):
        SpokenTurn(tiny_model, tiny_processor, sampling_rate=16000, instruction="Answer in French.").close()
    tiny_model.config.trained_instructions = None  # not recorded: nothing to check against
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SpokenTurn(tiny_model, tiny_processor, sampling_rate=16000, instruction="Answer in French.").close()


def test_the_embedded_checkpoint_records_its_training_instructions():
    instructions = json.loads((EMBEDDED / "config.json").read_text())["trained_instructions"]
    assert "Speak slowly." in instructions and "Repeat after me. Speak quickly." in instructions


def test_reply_wavs_get_the_users_umask(tmp_path):
    from modeling_concept_talker.audio import save_audio
    from modeling_concept_talker.generation import AudioChunk
    from concept_talker.app.chat import WavChunkWriter

    previous = os.umask(0o022)
    try:
        save_audio(str(tmp_path / "reply.wav"), np.zeros(1600, np.float32), 16000)
        writer = WavChunkWriter(str(tmp_path / "streamed.wav"), 16000)
        writer.put(AudioChunk(np.zeros(1600, np.float32), 16000, 0))
        writer.close(keep=True)
        os.umask(0o077)
        save_audio(str(tmp_path / "private.wav"), np.zeros(1600, np.float32), 16000)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "reply.wav").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "streamed.wav").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "private.wav").st_mode) == 0o600


# ---- 8. the embedded checkpoint loads as the README says, with clear errors where it cannot ------------------------------

def test_the_embedded_checkpoint_finds_the_lyra_models_and_tokenizer_by_itself(assets, monkeypatch):
    from modeling_concept_talker import ConceptTalkerProcessor

    monkeypatch.setenv("CONCEPT_TALKER_LYRA_DIR", str(assets / "lyra-soundstream"))
    monkeypatch.setenv("CONCEPT_TALKER_TOKENIZER", str(assets / "qwen2.5-tokenizer"))
    model = ConceptTalkerForConditionalGeneration.from_pretrained(str(EMBEDDED))
    assert model.config.codec_config.model_dir == str(assets / "lyra-soundstream")
    processor = ConceptTalkerProcessor.from_pretrained(str(EMBEDDED))
    assert processor.audio_token_id == model.config.audio_token_id and processor.sampling_rate == 16000


def test_without_the_lyra_models_or_a_tokenizer_the_errors_say_what_to_pass(tmp_path, monkeypatch):
    import modeling_concept_talker.lyra as lyra
    import modeling_concept_talker.processing_concept_talker as processing
    from modeling_concept_talker import ConceptTalkerProcessor

    monkeypatch.delenv("CONCEPT_TALKER_LYRA_DIR", raising=False)
    monkeypatch.setattr(lyra, "SHARED_LYRA_DIR", str(tmp_path / "no-lyra"))
    with pytest.raises(ValueError, match=r"pass it to from_pretrained\(path, codec_model_dir='/path/to/lyra-soundstream'\)"
                                         r" or set CONCEPT_TALKER_LYRA_DIR"):
        ConceptTalkerForConditionalGeneration.from_pretrained(str(EMBEDDED))
    monkeypatch.setenv("CONCEPT_TALKER_TOKENIZER", str(tmp_path / "no-tokenizer"))
    with pytest.raises(OSError, match=r"holds no tokenizer files.*Set CONCEPT_TALKER_TOKENIZER to a folder holding it"):
        ConceptTalkerProcessor.from_pretrained(str(EMBEDDED))
    assert processing.TOKENIZER_VARIABLE == "CONCEPT_TALKER_TOKENIZER"
