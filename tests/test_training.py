"""Training: recipes, collators, the stage trainers, a whole run, a killed run that resumes, bad recipes, DDP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from concept_talker.data.collators import TRANSCRIBE_TASK, SpokenTurnCollator, is_transcription_row
from concept_talker.training.recipes import RecipeError, load_recipe
from concept_talker.training.train import _changed_keys, _changes_only_unfinished_work
from modeling_concept_talker.talker import IGNORE_INDEX

REPO = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, "-m", "concept_talker.cli", "train"]


def micro_overrides(data: str, steps: int = 6) -> list[str]:
    """A whole run in seconds: the tiny recipe on a small dataset (and the random ear that made its frames) with a
    few steps per stage (the optional copy stage included)."""
    overrides = ["--data.path", data, "--model.ear", str(Path(data).parent / "ear"), "--eval.max_examples", "3",
                 "--eval.max_new_tokens", "8"]
    for stage in ("copy", "text", "align", "reply"):
        overrides += [f"--stages.{stage}.max_steps", str(steps), f"--stages.{stage}.save_steps", "2",
                      f"--stages.{stage}.logging_steps", "1", f"--stages.{stage}.per_device_train_batch_size", "4"]
    return overrides


@pytest.fixture(scope="session")
def micro_dataset(tmp_path_factory):
    """24 dialogue rows (and 4 general-English and 6 extra training questions, question only) made with the tiny
    preset's codec and a random ear of the tiny preset's shape, saved next to them, the questions' audio kept for the
    evaluation's listening ceiling (shared by the tests of this file)."""
    import torch
    from transformers import WhisperModel

    from configuration import load_preset
    from concept_talker.data.synth import SynthConfig, build_synthetic_dataset

    root = tmp_path_factory.mktemp("data")
    torch.manual_seed(0)
    WhisperModel(load_preset("tiny").ear_config).save_pretrained(root / "ear")
    out = root / "tutor"
    build_synthetic_dataset(SynthConfig(num_rows=24, validation_size=3, test_size=3, codec="tiny",
                                        audio_columns=("question",), ear=str(root / "ear"), transcribe_rows=4,
                                        question_rows=6, repeat_rows=3), str(out), num_proc=1)
    return str(out)


def test_the_evaluation_renders_a_rows_question_again_as_the_dataset_heard_it(micro_dataset):
    """Recipes keep no audio; the listening ceiling renders each test question again from its row (voice, rate,
    pitch, speed, noise), and gets the very samples synth stored."""
    import numpy as np
    from datasets import load_from_disk

    from concept_talker.evaluation.evaluate import question_waves

    dataset = load_from_disk(micro_dataset)
    perturbed = [row for row in dataset["train"] if row["question_snr_db"] > 0 or row["question_speed"] != 1.0]
    rows = [dataset["test"][i] for i in range(len(dataset["test"]))] + perturbed[:3]
    assert perturbed  # sped up or noisy questions render the same too
    stored = question_waves(dataset, rows, 16000)
    again = question_waves(dataset, [{k: v for k, v in row.items() if k != "question_audio"} for row in rows], 16000)
    for kept, rendered in zip(stored, again):
        assert kept.shape == rendered.shape and np.allclose(kept, rendered, atol=1e-6)


def run_train(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(TRAIN + args, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return result


def final_loss(run_dir: Path) -> float:
    history = json.loads((run_dir / "reply" / "log_history.json").read_text())
    return [h["loss"] for h in history if "loss" in h][-1]


# ---- recipes -------------------------------------------------------------------------------------------------------

def test_recipe_files_parse():
    for name in ("tiny", "tiny-lyra", "0.5b"):
        recipe = load_recipe(str(REPO / "configuration" / f"{name}.yaml"))
        assert set(recipe["stages"]) == {"copy", "text", "align", "reply"}


def test_a_nested_model_override_changes_only_its_field():
    from configuration import load_preset

    preset = load_preset("tiny-lyra")
    config = load_preset("tiny-lyra", talker_config={"progress_cap": 12}, codec_config={"model_dir": "/lyra"})
    assert config.talker_config.progress_cap == 12
    # the talker's other fields are still the preset's, not ConceptTalkerConfig's (0.5b-sized) defaults
    for field in ("hidden_size", "num_hidden_layers", "prompt_states", "voice_pitch", "phoneme_language"):
        assert getattr(config.talker_config, field) == getattr(preset.talker_config, field)
    assert (config.codec_type, config.codec_config.model_dir) == ("lyra_soundstream", "/lyra")
    # another codec type replaces the preset's codec settings instead of mixing two codecs' fields
    config = load_preset("tiny", codec_config={"model_type": "mimi", "num_hidden_layers": 1, "num_quantizers": 8},
                         adapter_config={"window_seconds": 0.8})
    assert config.codec_type == "mimi" and config.codec_config.num_hidden_layers == 1
    assert config.codec_config.upsampling_ratios != [8, 5, 4, 2]  # the tiny EnCodec's, not Mimi's


def test_recipe_overrides_and_their_errors(tmp_path):
    path = str(REPO / "configuration" / "tiny.yaml")
    recipe = load_recipe(path, ["--stages.reply.max_steps", "7", "--data.synth.n=50", "--model.overrides.lora_r", "2"])
    assert recipe["stages"]["reply"]["max_steps"] == 7 and recipe["data"]["synth"]["n"] == 50
    assert recipe["model"]["overrides"]["lora_r"] == 2
    with pytest.raises(RecipeError, match=r"Unknown recipe key 'data.synht'"):
        load_recipe(path, ["--data.synht.n", "5"])
    with pytest.raises(RecipeError, match=r"Unknown setting\(s\) \['max_stepz'\] in stages.align"):
        load_recipe(path, ["--stages.align.max_stepz", "5"])
    # a run started before a recipe section existed resumes: the section left empty is no change
    assert _changed_keys({"seed": 0}, {"seed": 0, "generation": {}}) == []
    assert _changed_keys({"seed": 0}, {"seed": 0, "generation": {"talker_top_k": 5}}) == ["generation.talker_top_k"]
    # how concepts are read may change while the align stage is still to run, not after
    readout = _changed_keys({"model": {"overrides": {}}}, {"model": {"overrides": {"adapter_config": {"readout": "sound"}}}})
    assert readout == ["model.overrides.adapter_config.readout"]
    assert _changes_only_unfinished_work(readout[0], ["align", "reply"])
    assert not _changes_only_unfinished_work(readout[0], ["reply"])
    assert not _changes_only_unfinished_work("model.overrides.adapter_config.hidden_size", ["align", "reply"])
    recipe = load_recipe(path, ["--generation.talker_temperature", "0.5"])
    assert recipe["generation"] == {"talker_temperature": 0.5}
    with pytest.raises(RecipeError, match=r"generation: Unknown generation setting\(s\) \['temperature'\]"):
        load_recipe(path, ["--generation.temperature", "0.5"])
    with pytest.raises(RecipeError, match="talker_runner must be"):
        load_recipe(path, ["--generation.talker_runner", "gpu"])
    with pytest.raises(RecipeError, match="has no value"):
        load_recipe(path, ["--stages.align.max_steps"])
    assert load_recipe(path, ["--stages.text.copy_turns", "0.5"])["stages"]["text"]["copy_turns"] == 0.5
    with pytest.raises(RecipeError, match=r"stages.text.copy_turns must be a share between 0 and 1, got 1.5"):
        load_recipe(path, ["--stages.text.copy_turns", "1.5"])
    assert load_recipe(path, ["--stages.reply.copy_turns", "0.2"])["stages"]["reply"]["copy_turns"] == 0.2
    with pytest.raises(RecipeError, match=r"stages.align.copy_turns: a share of copy turns is for the text and reply"):
        load_recipe(path, ["--stages.align.copy_turns", "0.5"])
    assert load_recipe(path, ["--stages.align.transcribe_rows", "1000"])["stages"]["align"]["transcribe_rows"] == 1000
    with pytest.raises(RecipeError, match=r"stages.reply.transcribe_rows: the general-English rows join the listening"):
        load_recipe(path, ["--stages.reply.transcribe_rows", "10"])
    assert load_recipe(path, ["--stages.text.question_rows", "50"])["stages"]["text"]["question_rows"] == 50
    with pytest.raises(RecipeError, match=r"stages.reply.question_rows: the extra questions join the listening"):
        load_recipe(path, ["--stages.reply.question_rows", "10"])
    assert load_recipe(path, ["--data.synth.question_rows", "4000"])["data"]["synth"]["question_rows"] == 4000
    assert load_recipe(path, ["--data.synth.repeat_rows", "4000"])["data"]["synth"]["repeat_rows"] == 4000
    assert load_recipe(path, ["--stages.reply.repeat_rows", "100"])["stages"]["reply"]["repeat_rows"] == 100
    with pytest.raises(RecipeError, match=r"data.synth.repeat_vocabulary must be"):
        load_recipe(path, ["--data.synth.repeat_vocabulary", "0"])
    with pytest.raises(RecipeError, match=r"stages.align.repeat_rows: the spoken repeat turns join the reply stage"):
        load_recipe(path, ["--stages.align.repeat_rows", "10"])
    assert load_recipe(path, ["--data.synth.transcribe_vocabulary", "5000"])["data"]["synth"]["transcribe_vocabulary"] == 5000
    with pytest.raises(RecipeError, match=r"data.synth.transcribe_vocabulary must be"):
        load_recipe(path, ["--data.synth.transcribe_vocabulary", "0"])
    assert load_recipe(path, ["--stages.reply.transcribe_turns", "0.25"])["stages"]["reply"]["transcribe_turns"] == 0.25
    with pytest.raises(RecipeError, match=r"stages.align.transcribe_turns: a share of transcription turns"):
        load_recipe(path, ["--stages.align.transcribe_turns", "0.25"])
    with pytest.raises(RecipeError, match=r"stages.reply.transcribe_turns must be a share between 0 and 1"):
        load_recipe(path, ["--stages.reply.transcribe_turns", "2"])
    with pytest.raises(RecipeError, match=r"stages.align.transcribe_rows must be"):
        load_recipe(path, ["--stages.align.transcribe_rows", "-1"])
    # the copy stage runs only where a recipe names it
    assert load_recipe(path)["stages"]["copy"] == {"enabled": False}
    assert load_recipe(path, ["--stages.copy.max_steps", "5"])["stages"]["copy"] == {"max_steps": 5}
    # YAML 1.1 reads 3e-3 as a string; on the command line and in files it must still be the number
    recipe = load_recipe(path, ["--stages.align.learning_rate", "3e-3", "--stages.reply.warmup_steps=1e1"])
    assert recipe["stages"]["align"]["learning_rate"] == 0.003 and recipe["stages"]["reply"]["warmup_steps"] == 10
    written = tmp_path / "written.yaml"
    written.write_text("stages:\n  align:\n    learning_rate: 3e-3\n")
    assert load_recipe(str(written))["stages"]["align"]["learning_rate"] == 0.003
    with pytest.raises(RecipeError, match=r"stages.align.learning_rate must be a number, got 'fast'"):
        load_recipe(path, ["--stages.align.learning_rate", "fast"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("stages: [1, 2\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(str(broken))


# ---- collators -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rows(micro_dataset):
    from datasets import load_from_disk

    from concept_talker.evaluation.evaluate import with_features

    train = with_features(load_from_disk(micro_dataset)["train"])
    return [train[i] for i in range(4)]


def test_reply_collator_masks_and_pads(rows, tiny_processor, tiny_config):
    batch = SpokenTurnCollator(tiny_processor, "reply", tiny_config)(rows)
    width = tiny_config.ear_config.d_model
    assert batch["input_features"].shape[0] == 4 and batch["input_features"].shape[2] == width
    assert batch["audio_labels"].shape[:2] == (4, 4)
    tokenizer = tiny_processor.tokenizer
    for i, row in enumerate(rows):
        labelled = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX]
        assert tokenizer.decode(labelled) == row["reply_text"] + "<|im_end|>"
        frames = len(row["reply_codes"][0])
        assert (batch["audio_labels"][i, :, :frames] >= 0).all() and (batch["audio_labels"][i, :, frames:] == IGNORE_INDEX).all()
        frames = len(row["question_features"])
        slots = int((batch["input_ids"][i] == tiny_processor.audio_token_id).sum())
        assert slots == -(-frames // tiny_config.window_frames) * tiny_config.adapter_config.concepts_per_window
        assert batch["input_features_mask"][i].sum() == frames
        # every slot is labelled: a token spoken in its stretch of time, or blank
        assert (batch["concept_labels"][i][:slots] != IGNORE_INDEX).all()
        spoken = [t for t in batch["concept_labels"][i][:slots].tolist() if t != tiny_config.concept_blank_token_id]
        assert tokenizer.decode(spoken).split() == row["question_text"].split()[: len(tokenizer.decode(spoken).split())]
        # the talker reads the reply's symbols, whose lengths add up to the reply's frames
        symbols = batch["reply_symbols"][i][batch["reply_symbols"][i] != IGNORE_INDEX]
        assert len(symbols) == len(row["reply_phonemes"]) and int(batch["reply_symbol_frames"][i].sum()) == frames_of(row)


def test_repeat_rows_are_spoken_repeat_turns_of_general_english(micro_dataset, tiny_processor, tiny_config):
    """The `repeats` split: a sentence of common words said in a training voice with a training phrasing of "repeat
    after me", said back by the house voice with the symbol timings the talker learns from; the reply stage (and the
    talker) learn from it, the listening stages do not."""
    from datasets import load_from_disk

    from concept_talker.data.dataset import load_synth_info
    from concept_talker.data.dialogue import REPEAT_INSTRUCTIONS, english_words
    from concept_talker.data.synth import SynthConfig
    from concept_talker.evaluation.evaluate import with_features
    from concept_talker.training.train import stage_train_rows

    dataset = load_from_disk(micro_dataset)
    repeats = with_features(dataset["repeats"])
    assert len(repeats) == 3
    words = set(english_words()[: SynthConfig(num_rows=1).repeat_vocabulary])  # the 3,000 most common by default
    phrasings = [text for _, text, held_out in REPEAT_INSTRUCTIONS if not held_out]
    voices = {split: set(info["voices"]) for split, info in load_synth_info(micro_dataset)["splits"].items()}
    rows = [repeats[i] for i in range(len(repeats))]
    for row in rows:
        assert row["skill"] == "repeat" and row["question_text"] == row["reply_text"]
        assert {w.strip(".").lower() for w in row["question_text"].split()} <= words
        assert any(row["instruction"].startswith(text) for text in phrasings)
        assert row["question_voice"] in voices["train"] - voices["test"] and row["question_features"].shape[0] > 0
    batch = SpokenTurnCollator(tiny_processor, "reply", tiny_config)(rows)
    for i, row in enumerate(rows):  # the talker learns to say it, symbol by symbol
        assert (batch["audio_labels"][i, :, : frames_of(row)] >= 0).all()
        assert int(batch["reply_symbol_frames"][i].sum()) == frames_of(row)
    ids = lambda stage, settings: set(stage_train_rows(dataset, stage, settings, seed=0)["id"])
    assert ids("reply", {}) == set(dataset["train"]["id"]) | set(repeats["id"])
    assert ids("reply", {"repeat_rows": 1}) == set(dataset["train"]["id"]) | {repeats["id"][0]}
    assert not ids("align", {}) & set(repeats["id"])


def frames_of(row) -> int:
    return len(row["reply_codes"][0])


def test_transcribe_and_text_collators(rows, tiny_processor, tiny_config):
    tokenizer = tiny_processor.tokenizer
    batch = SpokenTurnCollator(tiny_processor, "transcribe", tiny_config)(rows)
    prompt = tokenizer.decode(batch["input_ids"][0])
    assert TRANSCRIBE_TASK in prompt and "audio_labels" not in batch
    labelled = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == rows[0]["question_text"] + "<|im_end|>"
    text = SpokenTurnCollator(tiny_processor, "text", tiny_config)(rows)
    assert "input_features" not in text and not (text["input_ids"] == tiny_processor.audio_token_id).any()
    for i, row in enumerate(rows):
        answer = row["question_text"] if is_transcription_row(row["id"]) else row["reply_text"]
        labelled = text["labels"][i][text["labels"][i] != IGNORE_INDEX]
        assert tokenizer.decode(labelled) == answer + "<|im_end|>"
        assert row["question_text"] in tokenizer.decode(text["input_ids"][i])


def test_copy_turns_give_fresh_sentences_to_copy(rows, tiny_processor, tiny_config):
    from concept_talker.data.collators import CopyTurns, data_vocabulary
    from concept_talker.data.dialogue import REPEAT_INSTRUCTIONS

    tokenizer = tiny_processor.tokenizer
    turns = CopyTurns(1.0, seed=3)
    train_phrasings = [text for _, text, held_out in REPEAT_INSTRUCTIONS if not held_out]
    vocabulary = set(data_vocabulary(tokenizer, turns.vocabulary_texts(), tiny_config))
    collator = SpokenTurnCollator(tiny_processor, "text", tiny_config, copy_turns=turns)
    answers, tasks = set(), set()
    for _ in range(10):
        batch = collator(rows)
        for i in range(len(rows)):
            ids = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
            labelled = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX].tolist()
            answer = tokenizer.decode(labelled).removesuffix("<|im_end|>")
            prompt = tokenizer.decode(ids[: len(ids) - len(labelled)])
            # the sentence is given as its tokens where the concepts go, and the answer copies it
            assert f"<|audio_start|>{answer}<|audio_end|>" in prompt and answer not in [r["question_text"] for r in rows]
            task = next(t for t in [TRANSCRIBE_TASK, *train_phrasings] if t in prompt)
            tasks.add(task)
            answers.add(answer)
            assert set(labelled) <= vocabulary  # a thinker scored over the data's tokens can write every copy turn
    assert len(answers) == 10 * len(rows) and TRANSCRIBE_TASK in tasks and len(tasks) >= 3
    # share 0 keeps every row; copy turns are for the text and reply stages only; a share is in [0, 1]
    kept = SpokenTurnCollator(tiny_processor, "text", tiny_config, copy_turns=CopyTurns(0.0))(rows)
    assert (kept["input_ids"] == SpokenTurnCollator(tiny_processor, "text", tiny_config)(rows)["input_ids"]).all()
    with pytest.raises(ValueError, match="the 'transcribe' task .* cannot use them"):
        SpokenTurnCollator(tiny_processor, "transcribe", tiny_config, copy_turns=turns)
    with pytest.raises(ValueError, match=r"in \[0, 1\]; got 2"):
        CopyTurns(2)
    # the copy stage's turns leave out the system turn; the text stage's keep it
    bare = [CopyTurns(1.0, seed=seed, system_turn=False).draw()[0] for seed in range(4)]
    assert all(prompt.startswith("<|im_start|>user\n") for prompt in bare)
    assert CopyTurns(1.0).draw()[0].startswith("<|im_start|>system\n")


def test_reply_stage_transcription_turns_keep_listening_and_the_talker_skips_them(rows, tiny_model, tiny_processor,
                                                                                   tiny_config):
    """`transcribe_turns`: a share of reply-stage rows transcribe their question (the thinker's LoRA keeps reading
    the concepts); they have nothing to speak, so the talker's loss is that of the other rows alone."""
    tokenizer = tiny_processor.tokenizer
    every = SpokenTurnCollator(tiny_processor, "reply", tiny_config, transcribe_turns=1.0)(rows)
    for i, row in enumerate(rows):
        assert TRANSCRIBE_TASK in tokenizer.decode(every["input_ids"][i])
        labelled = every["labels"][i][every["labels"][i] != IGNORE_INDEX]
        assert tokenizer.decode(labelled) == row["question_text"] + "<|im_end|>"
    assert (every["audio_labels"] == IGNORE_INDEX).all() and (every["concept_labels"] != IGNORE_INDEX).any()

    collator = SpokenTurnCollator(tiny_processor, "reply", tiny_config, transcribe_turns=0.5, seed=1)
    batches = [collator(rows) for _ in range(6)]
    spoken = [(b["audio_labels"][:, 0] != IGNORE_INDEX).any(-1) for b in batches]
    mixed = next(i for i, s in enumerate(spoken) if 0 < int(s.sum()) < len(rows))
    assert 0 < int(torch.cat(spoken).sum()) < len(rows) * len(batches)  # both kinds are drawn
    tiny_model.eval()
    with torch.no_grad():
        out = tiny_model(**batches[mixed])
        replies = SpokenTurnCollator(tiny_processor, "reply", tiny_config)(
            [row for row, s in zip(rows, spoken[mixed].tolist()) if s])
        alone = tiny_model(**replies)
        assert torch.allclose(out.audio_loss, alone.audio_loss, atol=1e-5)
        assert torch.allclose(out.duration_loss, alone.duration_loss, atol=1e-5)
        assert out.audio_logits.shape[0] == int(spoken[mixed].sum())
        nothing_to_say = tiny_model(**every)  # the text and concept losses alone
        assert nothing_to_say.audio_loss is None and torch.isfinite(nothing_to_say.loss)
    with pytest.raises(ValueError, match="transcribe_turns mixes transcription turns among the replies"):
        SpokenTurnCollator(tiny_processor, "transcribe", tiny_config, transcribe_turns=0.3)
    with pytest.raises(ValueError, match=r"in \[0, 1\]; got 1.5"):
        SpokenTurnCollator(tiny_processor, "reply", tiny_config, transcribe_turns=1.5)


def test_reply_stage_copy_turns_keep_copying_and_the_talker_skips_them(rows, tiny_model, tiny_processor, tiny_config):
    """`copy_turns` in the reply stage: a share of the rows are text copy turns (the sentence's tokens where the
    concepts go, no audio), so the LoRA keeps copying; the spoken rows' clips, concepts and talker losses are those
    of the spoken rows alone."""
    from concept_talker.data.collators import CopyTurns

    audio_pad = tiny_config.audio_token_id
    collator = SpokenTurnCollator(tiny_processor, "reply", tiny_config, copy_turns=CopyTurns(0.5, seed=3))
    batches = [collator(rows) for _ in range(8)]
    heard = [(b["input_ids"] == audio_pad).any(-1) for b in batches]
    mixed = next(i for i, h in enumerate(heard) if 0 < int(h.sum()) < len(rows))
    batch, clips = batches[mixed], heard[mixed]
    spoken = (batch["audio_labels"][:, 0] != IGNORE_INDEX).any(-1)
    assert torch.equal(spoken, clips)  # a copy turn has nothing to speak and no clip
    assert batch["input_features"].shape[0] == batch["concept_labels"].shape[0] == int(clips.sum())
    for i in (~clips).nonzero().flatten().tolist():
        labelled = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX].tolist()
        answer = tiny_processor.tokenizer.decode(labelled).removesuffix("<|im_end|>")
        assert f"<|audio_start|>{answer}<|audio_end|>" in tiny_processor.tokenizer.decode(batch["input_ids"][i])
    tiny_model.eval()
    with torch.no_grad():
        out = tiny_model(**batch)
        alone = tiny_model(**SpokenTurnCollator(tiny_processor, "reply", tiny_config)(
            [row for row, c in zip(rows, clips.tolist()) if c]))
        assert torch.allclose(out.audio_loss, alone.audio_loss, atol=1e-5)
        assert torch.allclose(out.concept_loss, alone.concept_loss, atol=1e-5)
        every = SpokenTurnCollator(tiny_processor, "reply", tiny_config, copy_turns=CopyTurns(1.0))(rows)
        assert "input_features" not in every and torch.isfinite(tiny_model(**every).loss)  # all copy turns: text only


def test_collator_refuses_codes_of_another_codec(rows, tiny_processor, tiny_config):
    tiny_config.codec_num_codebooks = 8
    with pytest.raises(ValueError, match=r"\[8 codebooks\]\[frames\].*made with this model's codec"):
        SpokenTurnCollator(tiny_processor, "reply", tiny_config)(rows)


# ---- trainers ------------------------------------------------------------------------------------------------------

def test_stage_trainers_train_the_right_parts(tiny_model, tiny_processor, tiny_config, rows, tmp_path):
    from transformers import TrainingArguments

    from concept_talker.training.trainers import AlignmentTrainer, SpokenReplyTrainer, ThinkerTextTrainer

    cases = [(ThinkerTextTrainer, "text", lambda n: n.startswith("thinker.") and "lora_" not in n),
             (AlignmentTrainer, "transcribe", lambda n: n.startswith("concept_adapter.")),
             (SpokenReplyTrainer, "reply", lambda n: n.startswith(("talker.", "concept_adapter.")) or "lora_" in n)]
    for cls, task, should_train in cases:
        args = TrainingArguments(output_dir=str(tmp_path / task), max_steps=1, report_to="none",
                                 remove_unused_columns=False, per_device_train_batch_size=4)
        trainer = cls(model=tiny_model, args=args, train_dataset=rows,
                      data_collator=SpokenTurnCollator(tiny_processor, task, tiny_config))
        trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
        assert trainable and all(should_train(n) for n in trainable), cls.__name__
        assert not any(n.startswith(("codec.", "ear.")) for n in trainable)
        trainer.train()
        logged = trainer.state.log_history[0]
        assert "text_loss" in logged or "train_loss" in logged


def test_reply_trainer_logs_loss_parts_and_code_accuracy(tiny_model, tiny_processor, tiny_config, rows, tmp_path):
    from transformers import TrainingArguments

    from concept_talker.training.trainers import SpokenReplyTrainer

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, logging_steps=1, report_to="none",
                             remove_unused_columns=False, per_device_train_batch_size=2, per_device_eval_batch_size=2)
    trainer = SpokenReplyTrainer(model=tiny_model, args=args, train_dataset=rows, eval_dataset=rows,
                                 data_collator=SpokenTurnCollator(tiny_processor, "reply", tiny_config), adapter_learning_rate=1e-5)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h][0]
    assert {"text_loss", "audio_loss", "audio_loss_0", "audio_loss_3"} <= set(logged)
    groups = trainer.optimizer.param_groups
    assert any(g["lr"] == 1e-5 or g.get("initial_lr") == 1e-5 for g in groups)  # the adapter's own rate
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_code_accuracy"] <= 1.0 and "eval_code_accuracy_3" in metrics


# ---- whole runs ----------------------------------------------------------------------------------------------------

def test_each_stage_takes_the_extra_rows_it_is_given():
    from datasets import Dataset, DatasetDict

    from concept_talker.training.train import stage_train_rows

    dataset = DatasetDict({"train": Dataset.from_dict({"id": [f"d{i}" for i in range(4)]}),
                           "transcribe": Dataset.from_dict({"id": [f"t{i}" for i in range(6)]}),
                           "questions": Dataset.from_dict({"id": [f"q{i}" for i in range(3)]}),
                           "repeats": Dataset.from_dict({"id": [f"r{i}" for i in range(2)]})})
    ids = lambda stage, settings: sorted(stage_train_rows(dataset, stage, settings, seed=0)["id"])
    dialogue, general, questions = ([f"{k}{i}" for i in range(n)] for k, n in (("d", 4), ("t", 6), ("q", 3)))
    assert ids("align", {}) == sorted(dialogue + general + questions)
    assert ids("text", {"transcribe_rows": 2}) == sorted(dialogue + questions + ["t0", "t1"])
    assert ids("align", {"transcribe_rows": 0, "question_rows": 1}) == sorted(dialogue + ["q0"])
    # the reply stage speaks replies: dialogue rows and the spoken repeat turns
    assert ids("reply", {}) == sorted(dialogue + ["r0", "r1"])
    assert ids("reply", {"repeat_rows": 0}) == dialogue


def check_learning_curve(run: Path, data: str, assets: Path) -> None:
    """benchmarks.learning_curve reads the run's last align and reply checkpoints: listening figures for both, spoken
    WER (judged by the offline Whisper) for the reply stage, on one step axis, with the baselines."""
    from benchmarks.learning_curve import checkpoint_stage_and_step, main

    curve = run / "curve"
    main([str(run / "reply" / "checkpoint-6"), str(run / "align" / "checkpoint-6"), "--data", data, "--examples", "2",
          "--speech-examples", "1", "--judge", str(assets / "whisper-base"), "--max-new-tokens", "4",
          "--json", str(curve / "curve.json"), "--png", str(curve / "curve.png")])
    results = json.loads((curve / "curve.json").read_text())
    align, reply = results["checkpoints"]
    assert (align["stage"], align["run_step"], reply["stage"], reply["run_step"]) == ("align", 6, "reply", 12)
    assert "spoken_wer" not in align and 0 <= reply["spoken_wer"] and 0 <= reply["ceiling_wer"]
    assert 0 <= align["stage1_cer"] and 0 <= reply["concept_accuracy"] <= 1
    assert 0 < results["baselines"]["blank_concept_accuracy"] < 1 and results["baselines"]["prior_transcript_cer"] > 0
    assert (curve / "curve.png").stat().st_size > 1000
    assert checkpoint_stage_and_step(str(run / "align" / "checkpoint-6")) == ("align", 6)
    # a Trainer checkpoint holds the whole processor (its window and slot settings), not only the tokenizer
    from modeling_concept_talker import ConceptTalkerConfig, ConceptTalkerProcessor

    processor = ConceptTalkerProcessor.from_pretrained(run / "align" / "checkpoint-6")
    config = ConceptTalkerConfig.from_pretrained(run / "align" / "checkpoint-6")
    assert (processor.window_frames, processor.concepts_per_window) == (
        config.window_frames, config.adapter_config.concepts_per_window)
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        checkpoint_stage_and_step(str(run / "final"))


def test_word_recall_counts_each_spoken_word_once_in_its_training_bin():
    import collections

    from benchmarks.adapter_alone import word_recall

    heard = collections.Counter({"the": 500, "cat": 5, "sat": 20, "spell": 200, "mat": 1})
    recall = word_recall(["The cat sat on the mat.", "Spell engine."], ["the cat the mat", "spell eleven"], heard)
    assert recall == {"never": {"words": 2, "recall": 0.0}, "1-9": {"words": 2, "recall": 1.0},
                      "10-99": {"words": 1, "recall": 0.0}, "100+": {"words": 3, "recall": 1.0}}
    # A word said twice is found twice only if the reading says it twice.
    assert word_recall(["the the"], ["the"], heard)["100+"] == {"words": 2, "recall": 0.5}


def check_adapter_alone(run: Path, data: str) -> None:
    """benchmarks.adapter_alone trains a fresh adapter on the run's stored frames with each loss and reads the test
    questions; the run's own adapter is left as it was."""
    from safetensors.torch import load_file

    from benchmarks.adapter_alone import main

    before = {k: v.clone() for k, v in load_file(run / "final" / "model.safetensors").items() if "concept_adapter" in k}
    main(["--checkpoint", str(run / "final"), "--data", data, "--steps", "3", "--loss", "slots", "ctc",
          "--transcribe-rows", "-1", "0", "--examples", "2", "--json", str(run / "adapter_alone.json")])
    runs = json.loads((run / "adapter_alone.json").read_text())["runs"]
    assert [(r["loss"], r["steps"], r["train_rows"]) for r in runs] == [
        ("slots", 3, 18 + 4 + 6), ("slots", 3, 18 + 6), ("ctc", 3, 18 + 4 + 6), ("ctc", 3, 18 + 6)]
    assert all(r["test_cer"] >= 0 and r["train_cer"] >= 0 and r["curve"][-1]["step"] == 3 and r["test_examples"] == 2
               for r in runs)
    # Every word of the test questions is counted in one bin of how often training spoke it.
    recall = runs[0]["word_recall"]
    assert list(recall) == ["never", "1-9", "10-99", "100+"] and sum(b["words"] for b in recall.values()) > 0
    assert all(b["recall"] is None or 0 <= b["recall"] <= 1 for b in recall.values())
    main(["--checkpoint", str(run / "final"), "--data", data, "--steps", "1", "--dropout", "0.3", "--examples", "1",
          "--question-rows", "2", "--target", "phonemes", "random", "--adapter", "num_layers=1", "--json", str(run / "adapter_dropout.json")])
    # The fixed tables the slots may be read against instead of the thinker's embeddings, one run each.
    runs = json.loads((run / "adapter_dropout.json").read_text())["runs"]
    assert [(r["target"], r["dropout"], r["train_rows"]) for r in runs] == [
        ("phonemes", 0.3, 18 + 4 + 2), ("random", 0.3, 18 + 4 + 2)]
    assert all(0 <= r["test_cer"] and r["vocabulary"] > 0 and r["adapter_overrides"] == {"num_layers": 1} for r in runs)
    after = load_file(run / "final" / "model.safetensors")
    assert before and all(torch.equal(after[k], v) for k, v in before.items())


def check_copy_from_slots(run: Path, data: str) -> None:
    """benchmarks.copy_from_slots: the text stage's thinker, and a whole checkpoint's (LoRA as it is), transcribe and
    repeat questions whose slots hold their true tokens."""
    from benchmarks.copy_from_slots import main

    for thinker in (run / "text" / "thinker", run / "final"):
        out = run / "copy_from_slots.json"
        main(["--thinker", str(thinker), "--data", data, "--examples", "2", "--json", str(out)])
        results = json.loads(out.read_text())["results"]
        assert {(r["task"], r["split"]) for r in results} == {(t, s) for t in ("transcribe", "repeat")
                                                             for s in ("validation", "test")}
        assert all(r["examples"] == 2 and 0 <= r["exact"] <= 1 and r["cer"] >= 0 for r in results)


def check_eval_speech(run: Path, data: str, assets: Path) -> None:
    """`concept-talker eval-speech` judges a checkpoint's spoken replies on a dataset's test split, and says clearly
    when the split is not there."""
    out = run / "speech.json"
    command = [sys.executable, "-m", "concept_talker.cli", "eval-speech", "--model", str(run / "final"), "--data", data,
               "--max-examples", "1", "--judge", str(assets / "whisper-base"), "--json", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["examples_scored"] == 1 and results["split"] == "test" and "Whisper" in results["judge"]
    assert results["wer"] >= 0 and results["ceiling_wer"] >= 0 and results["garbage_wer"] >= 0
    missing = subprocess.run(command + ["--split", "nowhere"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "has no 'nowhere' split" in missing.stderr


def check_talker_alone(run: Path, data: str, assets: Path) -> None:
    """benchmarks.talker_alone trains a fresh talker (here one layer deep) behind the run's frozen thinker and
    measures it along the way: code accuracy beside its baselines, Whisper's hearing beside ceiling and garbage."""
    from datasets import load_from_disk

    from benchmarks.talker_alone import main

    out = run / "talker_alone.json"
    main(["--checkpoint", str(run / "final"), "--data", data, "--steps", "2", "--eval-every", "1", "--examples", "1",
          "--talker", "num_hidden_layers=1", "--judge", str(assets / "whisper-base"), "--json", str(out)])
    result = json.loads(out.read_text())["run"]
    assert [point["step"] for point in result["curve"]] == [1, 2] and result["talker_config"]["num_hidden_layers"] == 1
    dataset = load_from_disk(data)
    assert result["train_rows"] == len(dataset["train"]) + len(dataset["repeats"])  # the reply stage's rows
    for point in result["curve"]:
        assert 0 <= point["code_accuracy"] <= 1 and 0 <= point["copy_previous_accuracy"] <= 1
        assert point["wer"] >= 0 and point["ceiling_wer"] >= 0 and point["garbage_wer"] >= 0
    with pytest.raises(SystemExit, match="no \\['depth'\\]"):
        main(["--checkpoint", str(run / "final"), "--data", data, "--talker", "depth=2"])


def test_a_whole_run_and_a_killed_run_that_resumes(micro_dataset, tmp_path, assets):
    """The tiny recipe end to end; then the same run killed with SIGKILL mid-stage, resumed to the same final loss."""
    whole = tmp_path / "whole"
    # as tiny-lyra does: the copy stage scores its losses over the data's tokens, whose embeddings start larger
    thinker_init = ["--model.overrides.thinker_embedding_std", "0.1", "--stages.copy.text_vocabulary", "data"]
    # half the reply-stage rows transcribe their question instead (the talker skips them)
    # the evaluation judges one spoken reply and the listening ceiling with the offline Whisper
    judged = ["--eval.speech", "true", "--eval.speech_examples", "1", "--eval.judge", str(assets / "whisper-base")]
    result = run_train(["--recipe", "configuration/tiny.yaml", "--output_dir", str(whole), "--generation.talker_temperature",
                        "0.6", "--stages.reply.transcribe_turns", "0.5"] + thinker_init + micro_overrides(micro_dataset)
                       + judged)
    assert result.returncode == 0, result.stderr[-3000:]
    # the recipe's reply settings are the checkpoint's defaults
    assert json.loads((whole / "final" / "generation_config.json").read_text())["talker_temperature"] == 0.6
    from modeling_concept_talker import ConceptTalkerForConditionalGeneration
    from modeling_concept_talker.generation import SpokenGenerationConfig

    trained = ConceptTalkerForConditionalGeneration.from_pretrained(whole / "final")  # a trainable-only checkpoint
    assert SpokenGenerationConfig.for_model(trained, {}).talker_temperature == 0.6
    results = json.loads((whole / "eval_results.json").read_text())
    for key in ("stage1_cer", "stage2_reply_accuracy", "audio_code_accuracy", "stage2_reply_accuracy_by_skill"):
        assert key in results
    assert results["speech_examples_scored"] == 1 and results["wer"] >= 0 and "Whisper" in results["judge"]
    # the judge read the test questions' own audio: random-ear speech, but espeak-ng's clean voices
    assert 0 <= results["judge_question_cer"] < 0.5 and results["stage1_cer_judge_normalised"] >= 0
    assert (whole / "loss_curves.png").stat().st_size > 1000
    assert (whole / "copy" / "model" / "config.json").exists()  # the copy stage ran, before the text stage
    # the thinker's embeddings of the data's tokens were drawn at thinker_embedding_std, the rest left small
    from safetensors.torch import load_file

    thinker = load_file(whole / "final" / "thinker" / "model.safetensors")
    embeddings = next(tensor for name, tensor in thinker.items() if "embed_tokens" in name).float()
    norms = embeddings.norm(dim=-1)  # 128 wide: about 0.23 at std 0.02, 1.1 at 0.1
    assert norms.median().item() < 0.3 and norms.max().item() > 0.8
    copy_done = (whole / "copy" / "model" / "config.json").stat().st_mtime
    assert copy_done < (whole / "text" / "model" / "config.json").stat().st_mtime
    final = whole / "final"
    assert (final / "model.safetensors").exists() and (final / "thinker" / "config.json").exists()
    assert json.loads((final / "config.json").read_text())["thinker_name_or_path"] == "thinker"
    # the instructions the thinker read, so that an unfamiliar one is warned of at inference
    instructions = json.loads((final / "config.json").read_text())["trained_instructions"]
    assert instructions and all(isinstance(text, str) and text for text in instructions)
    check_learning_curve(whole, micro_dataset, assets)
    check_adapter_alone(whole, micro_dataset)
    check_talker_alone(whole, micro_dataset, assets)
    check_eval_speech(whole, micro_dataset, assets)
    check_copy_from_slots(whole, micro_dataset)

    killed = tmp_path / "killed"
    args = (["--recipe", "configuration/tiny.yaml", "--output_dir", str(killed), "--stages.reply.transcribe_turns", "0.5"]
            + thinker_init + micro_overrides(micro_dataset))
    process = subprocess.Popen(TRAIN + args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "align" / "checkpoint-2").is_dir():
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "final").exists() and not (killed / "align" / "model").exists()
    for checkpoint in (killed / "align").glob("checkpoint-*"):
        assert (checkpoint / "trainer_state.json").exists()  # every checkpoint there is complete

    again = run_train(args)
    assert again.returncode != 0 and "already holds a run: pass --resume" in again.stderr
    resumed = run_train(args + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    assert final_loss(killed) == pytest.approx(final_loss(whole), abs=1e-6)


def test_a_run_reads_by_sound_from_its_align_stage_on(micro_dataset, tmp_path):
    """A run stopped after its text stage is resumed to read concepts by sound: the align and reply stages train the
    adapter against the table of the data's tokens, which the final checkpoint holds."""
    from datasets import load_from_disk

    from modeling_concept_talker import ConceptTalkerForConditionalGeneration, ConceptTalkerProcessor
    from concept_talker.data.collators import dataset_vocabulary

    out = tmp_path / "run"
    common = ["--recipe", "configuration/tiny.yaml", "--output_dir", str(out), "--stages.text.text_vocabulary", "data",
              "--stages.copy.enabled", "false"] + micro_overrides(micro_dataset, steps=4)
    first = run_train(common + ["--stages.align.enabled", "false", "--stages.reply.enabled", "false"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((out / "final" / "config.json").read_text())["adapter_config"]["readout"] == "thinker"
    by_sound = run_train(common + ["--model.overrides.adapter_config.readout", "sound", "--resume"])
    assert by_sound.returncode == 0, by_sound.stderr[-3000:]
    assert "Concepts are read by sound" in by_sound.stderr
    model = ConceptTalkerForConditionalGeneration.from_pretrained(out / "final")
    processor = ConceptTalkerProcessor.from_pretrained(out / "final")
    tokens = set(dataset_vocabulary(processor.tokenizer, load_from_disk(micro_dataset), model.config, copy_turns=False))
    assert model.config.adapter_config.readout == "sound"
    assert set(model.concept_adapter.sound_tokens.tolist()) == tokens | {model.config.concept_blank_token_id}
    aligned = ConceptTalkerForConditionalGeneration.from_pretrained(out / "align" / "model")
    assert not torch.equal(aligned.concept_adapter.projection[0].weight,
                           ConceptTalkerForConditionalGeneration.from_pretrained(
                               out / "text" / "model").concept_adapter.projection[0].weight)  # align trained it


def test_bad_recipes_fail_at_start(micro_dataset, tmp_path, assets):
    result = run_train(["--recipe", "configuration/tiny.yaml", "--output_dir", str(tmp_path / "a"), "--stages.reply.lr", "1"])
    assert result.returncode != 0 and "Unknown setting(s) ['lr'] in stages.reply" in result.stderr

    # A dataset of recordings has no replies: the reply stage cannot run, and that is known before any training.
    from concept_talker.data.ljspeech import build_ljspeech_dataset

    recordings = tmp_path / "recordings"
    build_ljspeech_dataset(str(assets / "speech" / "ljspeech-dev"), str(recordings), codec="tiny", audio_columns=())
    result = run_train(["--recipe", "configuration/tiny.yaml", "--output_dir", str(tmp_path / "b")]
                       + micro_overrides(str(recordings)))
    assert result.returncode != 0 and "lacks the column(s)" in result.stderr
    assert not (tmp_path / "b" / "text").exists()  # failed before the first stage

    # Codes made with another codec (2 codebooks for a model of 4).
    result = run_train(["--recipe", "configuration/tiny.yaml", "--output_dir", str(tmp_path / "c"),
                        "--model.overrides.codec_num_codebooks", "2"] + micro_overrides(micro_dataset))
    assert result.returncode != 0 and "holds codes of 4 codebooks, not 2" in result.stderr


@pytest.mark.skipif(shutil.which("accelerate") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "accelerate")),
                    reason="accelerate's launcher is not installed")
def test_two_processes_with_accelerate_launch(micro_dataset, tmp_path):
    """DDP over gloo on CPU: `accelerate launch --num_processes 2` runs the same recipe."""
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    out = tmp_path / "ddp"
    command = [launcher, "launch", "--config_file", "configuration/accelerate/ddp-cpu.yaml", "-m", "concept_talker.cli", "train",
               "--recipe", "configuration/tiny.yaml", "--output_dir", str(out)] + micro_overrides(micro_dataset, steps=4)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("text", "align", "reply"):
        assert json.loads((out / stage / "train_result.json").read_text())["world_size"] == 2
    assert (out / "eval_results.json").exists() and (out / "final" / "model.safetensors").exists()


def test_a_run_on_a_pretrained_thinker_hears_through_the_recipes_ear(tmp_path, tiny_config):
    """With `model.thinker` (the 0.5b recipe's route), the model is built from pretrained parts around the ear the
    recipe names, not a default Whisper from the Hub."""
    import torch
    from transformers import EncodecModel, Qwen2ForCausalLM, WhisperModel

    from concept_talker.training.train import TrainingRun

    torch.manual_seed(0)
    Qwen2ForCausalLM(tiny_config.thinker_config).save_pretrained(tmp_path / "thinker")
    EncodecModel(tiny_config.codec_config).save_pretrained(tmp_path / "codec")
    whisper = WhisperModel(tiny_config.ear_config)
    whisper.save_pretrained(tmp_path / "whisper")
    recipe = load_recipe(str(REPO / "configuration" / "tiny.yaml"),
                         ["--model.thinker", str(tmp_path / "thinker"), "--model.codec", str(tmp_path / "codec"),
                          "--model.ear", str(tmp_path / "whisper")])
    run = TrainingRun(recipe, str(tmp_path / "run"))
    model = run.new_model(run.config())
    assert model.config.ear_name_or_path == str(tmp_path / "whisper")
    for name, weight in whisper.encoder.state_dict().items():
        assert torch.equal(model.ear.encoder.state_dict()[name], weight), name
