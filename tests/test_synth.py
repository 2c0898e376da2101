"""The synthetic dataset: schema, held-out splits, codes that match the audio, codec records, resumption after a
kill, the LJSpeech loader, and the codec resolver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_concept_talker.pitch import median_f0
from concept_talker.data.codecs import check_codec_matches, codec_fingerprint, describe_codec, resolve_codec
from concept_talker.data.dataset import check_dataset_codec, dataset_features, load_synth_info
from concept_talker.data.synth import STYLE_RATES, SynthConfig, build_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def tiny_codec():
    return resolve_codec("tiny")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small dataset, built in 3-row shards, with every audio column kept."""
    out = tmp_path_factory.mktemp("synth") / "tutor"
    config = SynthConfig(num_rows=14, validation_size=3, test_size=3, seed=1,
                         audio_columns=("question", "reply", "reference"))
    dataset = build_synthetic_dataset(config, str(out), shard_size=3, batch_size=4)
    return out, dataset


def test_splits_columns_and_types(built):
    out, dataset = built
    assert {split: len(ds) for split, ds in dataset.items()} == {"train": 8, "validation": 3, "test": 3}
    assert dataset["train"].features == dataset_features(("question", "reply", "reference"))
    for name in ("id", "skill", "instruction", "style", "question_text", "reply_text", "question_voice",
                 "question_rate", "question_pitch", "reply_voice", "reply_rate", "reply_pitch", "reference_codes"):
        assert name in dataset["train"].column_names
    assert dataset["train"].features["question_codes"].feature.feature.dtype == "int16"
    assert dataset["train"].features["reply_audio"].feature.dtype == "float32"
    ids = [row_id for split in dataset.values() for row_id in split["id"]]
    assert len(set(ids)) == len(ids)
    assert not os.path.exists(f"{out}.partial")  # the work folder goes once the dataset is saved


def test_codes_are_the_codec_codes_of_the_stored_audio(built, tiny_codec):
    _, dataset = built
    row = dataset["train"][0]
    for kind in ("question", "reply", "reference"):
        audio = torch.tensor(row[f"{kind}_audio"])
        codes = torch.tensor(row[f"{kind}_codes"])
        assert codes.shape == (tiny_codec.num_codebooks, tiny_codec.num_frames(len(audio)))
        assert len(audio) == pytest.approx(row[f"{kind}_seconds"] * 24000, abs=1)
        assert torch.equal(codes.long(), tiny_codec.encode(audio[None])[0])
        tiny_codec.check_codes(codes[None].long())


def test_rows_follow_the_tutor_controls(built):
    _, dataset = built
    for split in dataset.values():
        for row in split:
            low, high = STYLE_RATES[row["style"]]
            assert low <= row["reply_rate"] <= high
            if row["skill"] == "repeat":
                assert row["reply_text"] == row["question_text"]
            if row["reference_text"] is None:  # replies in the house voice without a reference clip
                assert row["reference_codes"] is None and not row["voice_given"]
                continue
            assert row["reference_text"] != row["reply_text"]
            assert 1.0 <= row["reference_seconds"] <= 5.0
            # The reference voice's pitch, as the talker reads it: measured on the clip itself.
            assert row["reference_f0"] == pytest.approx(median_f0(row["reference_audio"], 24000) or 0.0, rel=1e-5)
            assert 60 < row["reference_f0"] < 400
            assert row["question_seconds"] > 0.3 and row["reply_seconds"] > 0.3
    # A slow reply is slower, in words per second, than a fast one.
    def words_per_second(row):
        return len(row["reply_text"].split()) / row["reply_seconds"]

    rows = [r for split in dataset.values() for r in split]
    slow = [words_per_second(r) for r in rows if r["style"] == "slow"]
    fast = [words_per_second(r) for r in rows if r["style"] == "fast"]
    if slow and fast:
        assert np.mean(fast) > 1.4 * np.mean(slow)


def test_evaluation_splits_hold_out_voices_and_items(built):
    _, dataset = built
    train_items = set(dataset["train"]["item"])
    info = load_synth_info(dataset)
    train_voices = set(dataset["train"]["question_voice"])
    for split in ("validation", "test"):
        voices = set(dataset[split]["question_voice"])  # the questions' voices; every reply is the house voice's
        assert not voices & set(info["splits"]["train"]["voices"])
        assert not voices & train_voices
        assert set(dataset[split]["reply_voice"]) == {"joe"}
        assert not set(dataset[split]["item"]) & train_items


def test_dataset_info_records_the_codec(built, tiny_codec):
    out, dataset = built
    info = load_synth_info(str(out))
    assert info == load_synth_info(dataset["test"])
    codec = info["codec"]
    assert codec["type"] == "encodec" and codec["source"] == "tiny" and codec["random_weights"]
    assert (codec["sampling_rate"], codec["frame_rate"], codec["num_codebooks"], codec["codebook_size"]) == (
        24000, 75.0, 4, 1024)
    assert codec["fingerprint"] == codec_fingerprint(tiny_codec)
    assert info["tts"]["questions"]["backend"] == "espeak-ng" and info["tts"]["replies"]["backend"] == "piper"
    check_dataset_codec(str(out), tiny_codec)
    with pytest.raises(ValueError, match="num_codebooks"):
        check_dataset_codec(dataset, resolve_codec("tiny", num_codebooks=2))
    other = resolve_codec("tiny")
    with torch.no_grad():
        other.model.quantizer.layers[0].codebook.embed.add_(1.0)
    with pytest.raises(ValueError, match="weights differ"):
        check_dataset_codec(dataset, other)
    # The dataset folder names its own codec.
    assert codec_fingerprint(resolve_codec(str(out))) == codec["fingerprint"]


def test_existing_output_is_never_overwritten_silently(built):
    out, _ = built
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_synthetic_dataset(SynthConfig(num_rows=5, validation_size=1, test_size=1), str(out))


def test_audio_columns_are_optional(tmp_path):
    config = SynthConfig(num_rows=3, validation_size=1, test_size=1, skills=["arithmetic"], audio_columns=())
    dataset = build_synthetic_dataset(config, str(tmp_path / "codes-only"))
    assert not any(name.endswith("_audio") for name in dataset["train"].column_names)
    assert len(dataset["train"][0]["reply_codes"]) == 4


def test_a_changed_setting_does_not_resume_someone_elses_shards(tmp_path):
    out = tmp_path / "data"
    work = tmp_path / "work"
    (work / "shards").mkdir(parents=True)
    config = SynthConfig(num_rows=3, validation_size=1, test_size=1, skills=["arithmetic"], audio_columns=())
    (work / "plan.json").write_text(json.dumps({"settings": {"config": {"seed": 99}}, "rows": {}}))
    with pytest.raises(ValueError, match="other settings"):
        build_synthetic_dataset(config, str(out), work_dir=str(work))
    assert not out.exists()


def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "concept_talker.cli", "synth", "--out", str(out), "--n", "12", "--validation-size", "1",
            "--test-size", "1", "--skills", "arithmetic", "--shard-size", "2", "--batch-size", "2", "--audio",
            "--keep-work-dir", *extra]


def _shard_files(work: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(work)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in (work / "shards").rglob("*") if p.is_file()}


def test_killed_build_resumes_without_redoing_finished_shards(tmp_path, tiny_codec):
    out, work = tmp_path / "data", tmp_path / "data.partial"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(_cli(out), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and process.poll() is None:
            shards = [p for p in (work / "shards").glob("*") if not p.name.startswith(".")] if work.exists() else []
            if len(shards) >= 2:
                break
            time.sleep(0.02)
        assert process.poll() is None, f"the build ended before it could be killed: {process.stderr.read()[-2000:]!r}"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    finished = sorted(p.name for p in (work / "shards").glob("*") if not p.name.startswith("."))
    assert 2 <= len(finished) < 7  # 5 train shards + validation + test
    assert not out.exists()  # never a half-written dataset where the finished one goes
    before = _shard_files(work)

    result = subprocess.run(_cli(out), cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{len(finished)} of 7 shards already finished" in result.stderr
    after = _shard_files(work)
    for name, stamp in before.items():
        if name.split(os.sep)[1].startswith(tuple(finished)):
            assert after[name] == stamp, f"{name} was rewritten"
    assert not list(tmp_path.glob("data.tmp-*"))

    from datasets import load_from_disk

    dataset = load_from_disk(str(out))
    assert [len(dataset[s]) for s in ("train", "validation", "test")] == [10, 1, 1]
    assert dataset["train"]["id"] == [f"train-{i:06d}" for i in range(10)]
    with open(work / "plan.json") as f:
        plan = json.load(f)["rows"]
    assert dataset["train"]["question_text"] == [row["question_text"] for row in plan["train"]]
    # Rows from a shard made before the kill and from one made after it both hold the right codes.
    from concept_talker.data.tts import load_tts, render

    house = load_tts("piper")
    for index in (0, 9):
        row = dataset["train"][index]
        wave = render(house, row["reply_text"], 24000, None, row["reply_rate"], row["reply_pitch"])
        expected = tiny_codec.encode(torch.from_numpy(wave)[None])[0]
        assert torch.equal(torch.tensor(row["reply_codes"]).long(), expected)


def test_a_crash_while_saving_leaves_no_dataset_and_the_rerun_reuses_every_shard(tmp_path, monkeypatch, caplog):
    import datasets

    out = tmp_path / "data"
    config = SynthConfig(num_rows=4, validation_size=1, test_size=1, skills=["arithmetic"], audio_columns=())
    real_save = datasets.DatasetDict.save_to_disk

    def save_then_die(self, path, **kwargs):
        real_save(self, path, **kwargs)
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_synthetic_dataset(config, str(out), shard_size=1)
    assert not out.exists() and not list(tmp_path.glob("data.tmp-*"))  # an interrupted save removes its copy
    (tmp_path / "data.tmp-99999").mkdir()  # what a save killed outright leaves: the rerun clears it
    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", real_save)
    with caplog.at_level("INFO", logger="concept_talker.synth"):
        dataset = build_synthetic_dataset(config, str(out), shard_size=1)
    assert "4 of 4 shards already finished" in caplog.text and "Finished shard" not in caplog.text
    assert not list(tmp_path.glob("data.tmp-*")) and not (tmp_path / "data.partial").exists()
    assert [len(dataset[s]) for s in ("train", "validation", "test")] == [2, 1, 1]


def test_question_only_splits_for_the_listening_stages(tmp_path):
    """--transcribe-rows and --question-rows add question-only splits: general English, and more renditions of
    training questions (training items only, training voices, word timings, no reply)."""
    from datasets import load_from_disk

    from benchmarks.adapter_alone import words_of
    from concept_talker.data.dialogue import english_words, item_split

    out = tmp_path / "data"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(_cli(out, "--transcribe-rows", "2", "--transcribe-vocabulary", "40", "--question-rows", "3",
                                 "--skills", "vocabulary", "spelling"),
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    dataset = load_from_disk(str(out))
    assert {name: len(rows) for name, rows in dataset.items()} == {
        "train": 10, "validation": 1, "test": 1, "transcribe": 2, "questions": 3}
    info = load_synth_info(str(out))
    questions, train = dataset["questions"], dataset["train"]
    assert questions["id"] == [f"questions-{i:06d}" for i in range(3)]
    assert set(questions["question_voice"]) <= set(info["splits"]["train"]["voices"])
    assert info["splits"]["questions"]["voices"] == info["splits"]["train"]["voices"]
    for row in questions:
        assert row["skill"] in ("vocabulary", "spelling") and item_split(row["item"]) == "train"
        assert row["reply_text"] is None and row["reply_codes"] is None and row["question_codes"]
        assert len(row["question_word_seconds"]) == len(row["question_text"].split())
    # Other turns than the train split's (the generator's next draws), not copies of them.
    train_turns = set(zip(train["question_text"], train["instruction"]))
    assert not set(zip(questions["question_text"], questions["instruction"])) <= train_turns
    assert all(row["skill"] == "words" for row in dataset["transcribe"])
    common = set(english_words()[:40])  # --transcribe-vocabulary 40: the 40 commonest words only
    assert all(set(words_of(text)) <= common for text in dataset["transcribe"]["question_text"])
    with pytest.raises(ValueError, match="transcribe_vocabulary must be at least 1 word"):
        SynthConfig(num_rows=5, transcribe_vocabulary=0).split_sizes()


def test_cli_without_espeak_says_how_to_install(monkeypatch, tmp_path, capsys):
    from concept_talker import cli
    from concept_talker.data import tts

    def missing():
        raise tts.TTSUnavailableError(f"espeak-ng is not installed. {tts.INSTALL_HINT}")

    monkeypatch.setattr(tts, "_BACKENDS", {})
    monkeypatch.setattr(tts._EspeakEngine, "_instance", None)
    monkeypatch.setattr(tts, "find_espeak_library", missing)
    assert cli.main(["synth", "--out", str(tmp_path / "x"), "--n", "5"]) == 1
    error = capsys.readouterr().err
    assert 'pip install "concept-talker[tts]"' in error and "apt-get install espeak-ng" in error
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------------------------
# LJSpeech folders
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def small_ljspeech(assets, tmp_path):
    """The first four utterances of the shared LJSpeech sample, as their own LJSpeech folder."""
    source = assets / "speech" / "ljspeech-dev"
    folder = tmp_path / "lj"
    (folder / "wavs").mkdir(parents=True)
    lines = (source / "metadata.csv").read_text(encoding="utf-8").splitlines()
    short = sorted(lines, key=lambda line: (source / "wavs" / f"{line.split('|')[0]}.flac").stat().st_size)[:4]
    (folder / "metadata.csv").write_text("\n".join(short) + "\n", encoding="utf-8")
    for line in short:
        name = f"{line.split('|')[0]}.flac"
        os.symlink(source / "wavs" / name, folder / "wavs" / name)
    return folder, [line.split("|") for line in short]


def test_ljspeech_folder_loads_into_the_same_schema(small_ljspeech, tiny_codec):
    import soundfile

    from concept_talker.data.ljspeech import load_ljspeech

    folder, lines = small_ljspeech
    dataset = load_ljspeech(str(folder), codec="tiny", validation_size=0.0, test_size=0.0)
    train = dataset["train"]
    assert train.features == dataset_features()
    assert len(train) == 4 and len(dataset["validation"]) == 0
    for row in train:
        fields = next(line for line in lines if line[0] == row["id"])
        assert row["question_text"] == fields[2]
        assert row["skill"] == "transcription" and row["reply_codes"] is None and row["reply_text"] is None
        info = soundfile.info(str(folder / "wavs" / f"{row['id']}.flac"))
        assert len(row["question_audio"]) == pytest.approx(info.duration * 24000, abs=2)
        codes = torch.tensor(row["question_codes"]).long()
        assert torch.equal(codes, tiny_codec.encode(torch.tensor(row["question_audio"])[None])[0])
    assert load_synth_info(dataset)["source"].startswith("ljspeech:")


def test_ljspeech_errors_name_the_missing_file(tmp_path):
    from concept_talker.data.ljspeech import load_ljspeech

    with pytest.raises(FileNotFoundError, match="metadata.csv"):
        load_ljspeech(str(tmp_path))
    (tmp_path / "metadata.csv").write_text("LJ999-0001|Some text.|Some text.\n")
    with pytest.raises(FileNotFoundError, match="LJ999-0001"):
        load_ljspeech(str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------
# Codecs
# ---------------------------------------------------------------------------------------------------------------


def test_a_preset_codec_is_the_same_in_every_process(tiny_codec):
    again = resolve_codec("tiny")
    assert again is not tiny_codec and codec_fingerprint(again) == codec_fingerprint(tiny_codec)
    fewer = resolve_codec("tiny", num_codebooks=2)
    assert fewer.num_codebooks == 2 and codec_fingerprint(fewer) != codec_fingerprint(tiny_codec)
    audio = torch.randn(1, 4800) * 0.1
    assert torch.equal(fewer.encode(audio), tiny_codec.encode(audio)[:, :2])


def test_codec_of_a_checkpoint_and_of_an_encodec_folder(tmp_path, tiny_config, tiny_codec):
    from transformers import EncodecModel

    from modeling_concept_talker import ConceptTalkerForConditionalGeneration

    torch.manual_seed(5)
    model = ConceptTalkerForConditionalGeneration(tiny_config)
    model.save_pretrained(tmp_path / "checkpoint")
    codec = resolve_codec(str(tmp_path / "checkpoint"))
    assert codec_fingerprint(codec) == codec_fingerprint(model.codec) != codec_fingerprint(tiny_codec)
    with pytest.raises(ValueError, match="made by another codec"):
        check_codec_matches(describe_codec(tiny_codec, "tiny"), codec)
    with pytest.raises(ValueError, match="uses 4 codebooks"):
        resolve_codec(str(tmp_path / "checkpoint"), num_codebooks=2)

    # A trainable-only checkpoint that refers to its codec by a folder relative to itself.
    model.codec.model.save_pretrained(tmp_path / "slim" / "codec")
    model.config.thinker_name_or_path, model.config.codec_name_or_path = "thinker", "codec"
    model.save_pretrained(tmp_path / "slim", trainable_only=True)
    assert codec_fingerprint(resolve_codec(str(tmp_path / "slim"))) == codec_fingerprint(model.codec)

    model.codec.model.save_pretrained(tmp_path / "encodec")
    encodec = resolve_codec(str(tmp_path / "encodec"), num_codebooks=3)
    assert isinstance(encodec.model, EncodecModel) and encodec.num_codebooks == 3
    audio = torch.randn(1, 2400) * 0.1
    assert torch.equal(encodec.encode(audio), model.codec.encode(audio)[:, :3])
    info = describe_codec(encodec, str(tmp_path / "encodec"))
    assert info["source"] == str(tmp_path / "encodec") and not info["random_weights"]


def test_lyra_codec_from_its_folder_makes_a_dataset(assets, tmp_path):
    pytest.importorskip("ai_edge_litert")
    folder = str(assets / "lyra-soundstream")
    codec = resolve_codec(folder)
    assert (codec.num_codebooks, codec.sampling_rate, codec.codebook_size) == (8, 16000, 16)
    info = describe_codec(codec, folder)
    assert info["type"] == "lyra_soundstream" and not info["random_weights"] and info["frame_rate"] == 50.0
    assert info["fingerprint"] == codec_fingerprint(resolve_codec(folder), folder)
    assert info["fingerprint"] != codec_fingerprint(resolve_codec(folder, num_codebooks=16), folder)
    config = SynthConfig(num_rows=3, validation_size=1, test_size=1, skills=["arithmetic"], codec=folder,
                         audio_columns=("reply",))
    dataset = build_synthetic_dataset(config, str(tmp_path / "lyra"))
    row = dataset["train"][0]
    codes = torch.tensor(row["reply_codes"]).long()
    assert len(row["reply_audio"]) == pytest.approx(row["reply_seconds"] * 16000, abs=1)
    assert codes.shape == (8, codec.num_frames(len(row["reply_audio"])))
    assert torch.equal(codes, codec.encode(torch.tensor(row["reply_audio"])[None])[0])
    check_dataset_codec(dataset, codec)
    with pytest.raises(ValueError, match="another codec"):
        check_dataset_codec(dataset, resolve_codec("tiny", num_codebooks=8))
    with pytest.raises(ValueError, match="pass the folder"):
        resolve_codec("tiny-lyra")


def test_unknown_codec_specs_say_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match="holds no codec"):
        resolve_codec(str(tmp_path))
    with pytest.raises(ValueError, match="not a preset"):
        resolve_codec("no-such-org/no-such-codec")
    with pytest.raises(ValueError, match="from 1 to 32"):
        resolve_codec("tiny", num_codebooks=99)
