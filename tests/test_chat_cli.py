"""`concept-talker chat` answers a spoken question on the tiny preset, streaming or not, and prints its timings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import soundfile

from concept_talker.cli import main


def question_file(assets) -> str:
    return str(assets / "speech" / "ljspeech-dev" / "wavs" / "LJ001-0002.flac")


def test_chat_writes_the_reply_and_its_timings(assets, tmp_path, capsys):
    """The default is the embedded trained tiny-lyra checkpoint, speaking through the real Lyra codec (16 kHz)."""
    out, report = tmp_path / "reply.wav", tmp_path / "reply.json"
    code = main(["chat", "--audio", question_file(assets), "--out", str(out), "--max-new-tokens", "6",
                 "--max-audio-seconds", "1", "--json", str(report)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "the embedded default" in printed and "Lyra" in printed  # says plainly what the default model is
    assert "Reply text:" in printed and "first audio" in printed and "real-time factor" in printed
    info = soundfile.info(str(out))
    assert info.samplerate == 16000 and info.channels == 1 and 0 < info.duration <= 1.0 + 1e-6
    timings = json.loads(report.read_text())
    assert timings["first_audio_s"] <= timings["total_s"] and timings["audio_s"] > 0


def test_without_a_real_codec_the_default_says_it_is_random(tmp_path, assets, capsys, monkeypatch):
    import concept_talker.loading

    monkeypatch.delenv("CONCEPT_TALKER_LYRA_DIR", raising=False)
    monkeypatch.setattr(concept_talker.loading, "OFFLINE_LYRA", tmp_path / "no-lyra-here")
    code = main(["chat", "--audio", question_file(assets), "--out", str(tmp_path / "r.wav"), "--max-new-tokens", "4",
                 "--max-audio-seconds", "0.5"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Lyra codec, whose model files were not found" in printed
    assert "RANDOM weights" in printed and "codec is random too" in printed
    assert soundfile.info(str(tmp_path / "r.wav")).samplerate == 24000


def test_a_checkpoint_finds_the_lyra_models_given_on_the_command_line(tmp_path, assets, capsys, monkeypatch):
    """The embedded checkpoint stores no machine-specific Lyra folder; --lyra-dir (or the default) supplies it."""
    import concept_talker.loading

    monkeypatch.setattr(concept_talker.loading, "OFFLINE_LYRA", tmp_path / "no-lyra-here")
    code = main(["chat", "--model", str(concept_talker.loading.EMBEDDED_MODEL), "--lyra-dir",
                 str(assets / "lyra-soundstream"), "--audio", question_file(assets), "--out", str(tmp_path / "r.wav"),
                 "--max-new-tokens", "4", "--max-audio-seconds", "0.5"])
    assert code == 0 and "the embedded default" in capsys.readouterr().out


def test_chat_streams_in_and_out(assets, tmp_path, capsys):
    out = tmp_path / "streamed.wav"
    code = main(["chat", "--audio", question_file(assets), "--out", str(out), "--stream", "--max-new-tokens", "6",
                 "--max-audio-seconds", "1", "--instruction", "Speak slowly."])
    assert code == 0
    assert "after the end of speech" in capsys.readouterr().out
    assert soundfile.info(str(out)).duration > 0
    assert not [p for p in tmp_path.iterdir() if p.name != "streamed.wav"]  # no temporary file left behind


def test_chat_refuses_a_missing_file(tmp_path):
    try:
        main(["chat", "--audio", str(tmp_path / "nope.wav"), "--out", str(tmp_path / "r.wav")])
    except SystemExit as exit:
        assert "No such audio file" in str(exit)
    else:
        raise AssertionError("expected SystemExit")


def test_chat_refuses_a_bad_setting_before_any_work(assets, tmp_path):
    with pytest.raises(SystemExit, match=r"thinker_repetition_penalty must be > 0 \(1.0 is off"):
        main(["chat", "--audio", question_file(assets), "--out", str(tmp_path / "r.wav"), "--repetition-penalty", "0"])
    assert not list(tmp_path.iterdir())  # no reply file written


def test_the_installed_command_runs(assets, tmp_path):
    command = shutil.which("concept-talker") or sys.executable
    args = [command] if command.endswith("concept-talker") else [command, "-m", "concept_talker.cli"]
    result = subprocess.run(
        args + ["chat", "--audio", question_file(assets), "--out", str(tmp_path / "r.wav"), "--max-new-tokens", "4",
                "--max-audio-seconds", "0.5"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Timings:" in result.stdout


def test_refreshing_the_embedded_model_keeps_its_replies(tmp_path, assets):
    """`python -m concept_talker.hub.embedded FINAL` writes a checkpoint that answers exactly as its source does."""
    import torch

    from modeling_concept_talker import build_prompt
    from concept_talker.hub.embedded import export_embedded
    from concept_talker.loading import EMBEDDED_MODEL, load_model

    out = export_embedded(str(EMBEDDED_MODEL), str(tmp_path / "tiny-lyra"))
    assert not [p for p in tmp_path.iterdir() if p.name != "tiny-lyra"]  # no staging folder left behind
    assert not list((tmp_path / "tiny-lyra").glob("*.py")) and (tmp_path / "tiny-lyra" / "thinker").is_dir()
    audio, rate = soundfile.read(question_file(assets), dtype="float32")
    replies = []
    for spec in (str(EMBEDDED_MODEL), out):
        loaded = load_model(spec, lyra_dir=str(assets / "lyra-soundstream"))
        batch = loaded.processor(text=build_prompt(), audio=audio, sampling_rate=rate)
        with torch.no_grad():
            replies.append(loaded.model.generate(**batch, thinker_max_new_tokens=6, max_audio_seconds=0.4,
                                                 seed=0).audio_codes[0])
    assert torch.equal(replies[0], replies[1])
