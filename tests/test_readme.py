"""The README's Python example runs as written on the embedded checkpoint (checkpoints/tiny-lyra)."""

from __future__ import annotations

import re
from pathlib import Path

import soundfile

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    """The README's first Python block: the one that loads the embedded checkpoint."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.DOTALL)
    example = next(block for block in blocks if 'from_pretrained("checkpoints/tiny-lyra")' in block)
    return example


def test_the_readme_example_runs_on_the_embedded_checkpoint(assets, tmp_path, monkeypatch, capsys):
    """Run from a folder that holds `checkpoints/` and a `question.wav`, as a user in a checkout would. Nothing tells
    the example where the Lyra models or the tokenizer are: it finds them as `chat` does."""
    from modeling_concept_talker.lyra import SHARED_LYRA_DIR
    from modeling_concept_talker.processing_concept_talker import SHARED_TOKENIZER_DIR

    (tmp_path / "checkpoints").symlink_to(REPO / "checkpoints")
    wave, rate = soundfile.read(str(assets / "speech" / "ljspeech-dev" / "wavs" / "LJ001-0002.flac"), dtype="float32")
    soundfile.write(str(tmp_path / "question.wav"), wave, rate)
    for variable, default, asset in (("CONCEPT_TALKER_LYRA_DIR", SHARED_LYRA_DIR, "lyra-soundstream"),
                                     ("CONCEPT_TALKER_TOKENIZER", SHARED_TOKENIZER_DIR, "qwen2.5-tokenizer")):
        monkeypatch.delenv(variable, raising=False)
        if Path(default).resolve() != (assets / asset).resolve():  # assets kept elsewhere (CONCEPT_TALKER_ASSETS)
            monkeypatch.setenv(variable, str(assets / asset))
    monkeypatch.chdir(tmp_path)

    exec(compile(readme_example(), "README.md", "exec"), {"__name__": "readme_example"})

    printed = capsys.readouterr().out
    assert "first_audio_s" in printed  # the reply's text and timings
    assert re.search(r"\d\.\d\d s of reply audio at 16000 Hz", printed)  # streamed chunks
    info = soundfile.info(str(tmp_path / "reply.wav"))
    assert info.samplerate == 16000 and info.duration > 0
